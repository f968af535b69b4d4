"""A ModalTune learning curve: ``python -m bench.perf.distill_curve --site brca --profile small``.

Trains one text_distill model (``modaltune`` or any of its variants) with the profile's optimisation,
optionally changed (``--epochs``, ``--batch-size``, ``--lr``, ``--warmup-epochs``), and measures it
before training and after every epoch: the linear probes of the general embedding on validation AND
test patients for both tasks, with ``raw`` and ``standardized`` features, the training loss, and the
collapse diagnostics (:class:`bench.train.distill.CollapseDiagnostics`). It writes
``<out>/curve.csv`` (one row per epoch; row 0 is the untrained model) and ``<out>/curve.json``
(settings, rows, and the epoch the run's selection rule would pick). The profiles' text_distill
budgets (:data:`bench.config.PROFILES`) were chosen from such curves (README, "ModalTune's budget").

Test metrics appear here to show the curve, never to select anything: the harness selects on
validation only. On a 2-core CPU a small-profile BRCA curve of 12 epochs takes a few minutes.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import math
import sys
import tempfile
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch

from bench.data.dataset import SiteData
from bench.train.distill import CollapseDiagnostics, DistillModule
from models.run_options import PROBE_PREPROCESSING

log = logging.getLogger(__name__)

COLUMNS = ("epoch", "steps", "lr", "train_kl")


class CurveRecorder(L.Callback):
    """Before training and after every epoch: probe every site's general embeddings (val and test, both
    tasks, each preprocessing) and copy the training loss and the collapse diagnostics into a row."""

    def __init__(self, sites: dict[str, SiteData]):
        self.sites = sites
        self.rows: list[dict[str, Any]] = []
        self.epoch_lr = math.nan

    def _probe(self, module: DistillModule) -> dict[str, float]:
        from bench.train.probe import embed, probe_subtype, probe_survival

        values: dict[str, list[float]] = {}
        for data in self.sites.values():
            x = {split: embed(module.model, ds, module.device) for split, ds in data.splits.items()}
            survival = probe_survival(x, data)  # lifelines standardises covariates itself: one Cox fit serves both
            for prep in PROBE_PREPROCESSING:
                metrics = {**probe_subtype(x, data, preprocessing=prep), **survival}
                for split in ("val", "test"):
                    for name in ("balanced_accuracy", "c_index"):
                        values.setdefault(f"{prep}_{split}_{name}", []).append(metrics[f"{split}_{name}"])
        module.model.train()
        return {k: float(np.nanmean(v)) for k, v in values.items()}

    def _diagnostics(self, trainer: L.Trainer, initial: bool) -> dict[str, float]:
        diag = next(c for c in trainer.callbacks if isinstance(c, CollapseDiagnostics))
        values = diag.initial if initial else diag.history[-1]
        return {f"diag_{k}": v for k, v in values.items()}

    def on_train_start(self, trainer: L.Trainer, module: DistillModule) -> None:
        self.rows.append({"epoch": 0, "steps": 0, "lr": math.nan, "train_kl": math.nan,
                          **self._probe(module), **self._diagnostics(trainer, initial=True)})

    def on_train_epoch_start(self, trainer: L.Trainer, module: DistillModule) -> None:
        self.epoch_lr = float(trainer.optimizers[0].param_groups[0]["lr"])

    def on_train_epoch_end(self, trainer: L.Trainer, module: DistillModule) -> None:
        train_kl = trainer.callback_metrics.get("train_kl")
        self.rows.append({"epoch": trainer.current_epoch + 1, "steps": trainer.global_step,
                          "lr": self.epoch_lr,
                          "train_kl": float(train_kl) if train_kl is not None else math.nan,
                          **self._probe(module), **self._diagnostics(trainer, initial=False)})
        log.info("epoch %d: %s", trainer.current_epoch + 1,
                 {k: round(v, 4) for k, v in self.rows[-1].items() if k.endswith(("val_balanced_accuracy",
                                                                                   "val_c_index", "train_kl"))})


def learning_curve(*, model: str = "modaltune", site: str = "brca", profile: str = "small", seed: int = 0,
                   cohort: str | None = None, settings: dict[str, Any] | None = None,
                   run_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train ``model`` on ``site`` and record its curve; returns ``{settings, run_options, rows, selected_epoch}``.

    ``settings`` replace fields of the profile's :class:`~bench.config.DistillSettings`; ``run_options``
    are added to the model's (:mod:`models.run_options`). The selected epoch follows the harness's rule
    (the last epoch with the best validation balanced accuracy, with the run's probe preprocessing).
    """
    from bench.regimes import regime_for
    from bench.regimes.text_distill import build_for_text
    from bench.runner import RunRequest, plan_run
    from bench.train.distill import DistillLoss, train_distill
    from models.modaltune.projection import build_text_projector

    from bench.errors import BenchError
    from bench.registry import get_model

    if get_model(model).regime != "text_distill":
        raise BenchError(f"model {model} is not a text_distill model; the curve trains ModalTune and its variants")
    plan = plan_run(RunRequest(model=model, site=site, task="multitask", seed=seed, profile=profile, cohort=cohort,
                               store=Path(tempfile.gettempdir()) / "distill-curve.sqlite",
                               run_options=dict(run_options or {})))
    distill = type(plan.profile.distill)(**{**plan.profile.distill.model_dump(), **(settings or {})})
    options = plan.options()
    if plan.profile.threads:
        torch.set_num_threads(plan.profile.threads)
    data = regime_for(plan.entry).prepare(plan)
    text_dim = int(next(iter(data.values())).splits["train"].text.shape[-1])
    L.seed_everything(plan.seed, workers=True, verbose=False)
    built = build_for_text(plan, text_dim)
    projector = build_text_projector(built.config, text_dim, built.embed_dim, plan.seed)
    recorder = CurveRecorder(data)
    with tempfile.TemporaryDirectory(prefix="distill-curve-") as tmp:
        outcome = train_distill(built, projector, data, distill, run_dir=Path(tmp), loggers=[],
                                loss=DistillLoss(options["distill_temperature"], options["distill_center"]),
                                preprocessing=options["probe"], callbacks=[recorder])
    return {"model": plan.entry.name, "site": plan.site, "profile": plan.profile.name, "seed": seed,
            "settings": distill.model_dump(mode="json"), "run_options": options, "rows": recorder.rows,
            "selected_epoch": outcome.best_epoch + 1, "collapsed": outcome.diagnostics["collapsed"]}


def to_csv(rows: list[dict[str, Any]]) -> str:
    """The curve's rows as CSV (fixed leading columns, then the rest sorted)."""
    keys = list(COLUMNS) + sorted({k for r in rows for k in r} - set(COLUMNS))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=keys, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    return buf.getvalue()


def write_curve(curve: dict[str, Any], out: Path) -> None:
    """``out/curve.json`` and ``out/curve.csv``, each written atomically."""
    from bench.cli import _clean
    from bench.data.format import write_atomic, write_json

    write_json(out / "curve.json", _clean(curve))
    text = to_csv(curve["rows"])
    write_atomic(out / "curve.csv", lambda p: p.write_text(text))


def main(argv: list[str] | None = None) -> int:
    """``python -m bench.perf.distill_curve``: parse, train, write the curve; exit 2 on bad input."""
    from bench.cli import _output_dir, _positive, _seed
    from bench.errors import BenchError
    from bench.logs import quiet_libraries

    p = argparse.ArgumentParser(prog="python -m bench.perf.distill_curve", description=__doc__.splitlines()[0])
    p.add_argument("--model", default="modaltune")
    p.add_argument("--site", default="brca")
    p.add_argument("--profile", default="small")
    p.add_argument("--seed", type=_seed, default=0)
    p.add_argument("--cohort")
    p.add_argument("--epochs", type=_positive)
    p.add_argument("--batch-size", type=_positive)
    p.add_argument("--lr", type=float)
    p.add_argument("--warmup-epochs", type=int)
    p.add_argument("--probe", choices=PROBE_PREPROCESSING, help="selection's probe preprocessing (run option)")
    p.add_argument("--center", action="store_true", help="centred text targets (run option distill_center)")
    p.add_argument("--temperature", type=float, help="distillation temperature (run option distill_temperature)")
    p.add_argument("--out", type=_output_dir, required=True, help="directory for curve.csv and curve.json")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    quiet_libraries()
    settings = {k: v for k, v in (("epochs", args.epochs), ("batch_size", args.batch_size), ("lr", args.lr),
                                  ("warmup_epochs", args.warmup_epochs)) if v is not None}
    options = {k: v for k, v in (("probe", args.probe), ("distill_temperature", args.temperature)) if v is not None}
    if args.center:
        options["distill_center"] = True
    try:
        curve = learning_curve(model=args.model, site=args.site, profile=args.profile, seed=args.seed,
                               cohort=args.cohort, settings=settings, run_options=options)
        write_curve(curve, Path(args.out))
    except BenchError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    except ValueError as err:  # a settings value DistillSettings refuses
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps({"out": str(args.out), "selected_epoch": curve["selected_epoch"],
                      "collapsed": curve["collapsed"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
