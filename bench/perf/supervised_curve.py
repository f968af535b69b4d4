"""Supervised budget curve: ``python -m bench.perf.supervised_curve --models abmil_cat abmil_kp --epochs 4 8``.

Trains supervised models as the harness does (the run's plan and regime; nothing is stored) once per (model, site, seed, epoch budget), each budget a full run with its own cosine schedule, and
reports for every run the validation score of each epoch, the selected epoch and the test metrics of the
selected checkpoint. It writes ``<out>/curve.csv`` (one row per run) and ``<out>/curve.json`` (settings,
rows and, per model and budget, the mean test score over sites and seeds).

The profiles' supervised epoch budgets (:data:`bench.config.PROFILES`) were chosen from this curve
(README, "Profiles"): the Kronecker (KP) fusion rows need more optimiser steps than the concatenation rows
to leave their low-spread start. Test metrics are shown to read the curve, never to select anything: the
harness selects on validation only.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np

log = logging.getLogger(__name__)

COLUMNS = ("model", "site", "task", "seed", "epochs", "best_epoch", "val_history", "test_score",
           "test_auc", "seconds")


class ValidationRecorder(L.Callback):
    """The supervised module's validation score of every epoch, copied when training ends."""

    def __init__(self) -> None:
        self.history: list[float] = []

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.history = [float(v) for v in pl_module.val_history]


def one_run(model: str, site: str, task: str, seed: int, epochs: int, profile: str, run_dir: Path) -> dict[str, Any]:
    """Train one run with ``epochs`` replacing the profile's budget, exactly as the harness trains it
    (its plan, regime, threads and determinism); its curve row."""
    import torch

    from bench.regimes import regime_for
    from bench.regimes.base import RunEnv
    from bench.runner import RunRequest, plan_run
    from bench.train.supervised import configure_determinism

    plan = plan_run(RunRequest(model=model, site=site, task=task, seed=seed, profile=profile,
                               training={"epochs": epochs}), results_store=False)
    regime = regime_for(plan.entry)
    if plan.profile.threads:
        torch.set_num_threads(plan.profile.threads)
    configure_determinism()
    recorder = ValidationRecorder()
    run_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    data = regime.prepare(plan)
    fitted = regime.fit(plan, data, RunEnv(run_dir=run_dir, loggers=[], callbacks=[recorder]))
    seconds = time.perf_counter() - start
    metrics = fitted.extra["metrics"]
    score = "test_balanced_accuracy" if task == "subtype" else "test_c_index"
    return {
        "model": model, "site": site, "task": task, "seed": seed, "epochs": epochs,
        "best_epoch": int(fitted.best_epoch), "val_history": recorder.history,
        "test_score": float(metrics[score]), "test_auc": float(metrics.get("test_auc", np.nan)),
        "seconds": seconds,
    }


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (model, epochs): mean test score over sites and seeds, and each site's mean."""
    out: list[dict[str, Any]] = []
    keys = sorted({(r["model"], r["epochs"]) for r in rows}, key=lambda k: (k[0], k[1]))
    for model, epochs in keys:
        mine = [r for r in rows if r["model"] == model and r["epochs"] == epochs]
        sites = sorted({r["site"] for r in mine})
        per_site = {s: float(np.mean([r["test_score"] for r in mine if r["site"] == s])) for s in sites}
        out.append({"model": model, "epochs": epochs, "mean": float(np.mean(list(per_site.values()))),
                    "sites": per_site, "seconds": float(np.sum([r["seconds"] for r in mine]))})
    return out


def markdown(summary: list[dict[str, Any]]) -> str:
    from tabulate import tabulate

    sites = sorted({s for row in summary for s in row["sites"]})
    table = [[row["model"], row["epochs"], *[f"{row['sites'].get(s, np.nan):.3f}" for s in sites],
              f"{row['mean']:.3f}", f"{row['seconds']:.0f}"] for row in summary]
    return tabulate(table, headers=["model", "epochs", *[s.upper() for s in sites], "mean", "train s"],
                    tablefmt="github")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.perf.supervised_curve", description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", required=True)
    p.add_argument("--sites", nargs="+", default=["brca", "gbmlgg", "nsclc", "rcc"])
    p.add_argument("--task", default="subtype", choices=["subtype", "survival"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--epochs", nargs="+", type=int, required=True, help="budgets to compare")
    p.add_argument("--profile", default="small")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)

    args.out.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for model in args.models:
            for site in args.sites:
                for seed in args.seeds:
                    for epochs in args.epochs:
                        row = one_run(model, site, args.task, seed, epochs, args.profile, Path(tmp) / "run")
                        rows.append(row)
                        print(f"{model} {site} seed {seed} epochs {epochs}: best epoch {row['best_epoch']}, "
                              f"test {row['test_score']:.3f} (val {[round(v, 3) for v in row['val_history']]}, "
                              f"{row['seconds']:.0f} s)", flush=True)
    summary = summarise(rows)
    with open(args.out / "curve.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow({**row, "val_history": json.dumps(row["val_history"])})
    (args.out / "curve.json").write_text(json.dumps(
        {"settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
         "rows": rows, "summary": summary}, indent=1))
    print(markdown(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
