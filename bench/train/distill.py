"""The ``text_distill`` regime (ModalTune): multitask training by distilling text embeddings, then
linear probes of the general-task embedding.

Training (ModalTune, Sec. 3.3 and its release): every task embedding ``z_t`` ``[B, T, 256]`` and the
projected text embedding ``y_t`` of the same task (the release's frozen random projector; the model's
configuration may choose another, :mod:`models.modaltune.projection`) are L2-normalised, and the loss is
``10 * T^2 * KL(softmax(y_t / T) || softmax(z_t / T))`` summed over tasks and the 256 features
(temperature ``T`` = 1), averaged over the patients of the batch (the release trains with batch size
1). AdamW; the learning rate rises linearly from lr/20 to lr over the warm-up epochs, then follows a
cosine to zero.

Selection and evaluation: after every epoch the general-task embedding of every patient (whole
bags, eval mode — deterministic) is computed; a logistic-regression probe fit on the training
patients scores the validation patients (balanced accuracy, mean over sites for a pan-cancer run);
the best epoch is the LAST epoch with the highest score (the release's ``>=``: a flat validation
curve selects the trained model, not the first epoch); its embeddings are probed for the test
metrics of both tasks (logistic regression for subtype, Cox PH for survival), after the run's probe
preprocessing (``raw`` as the release, or ``standardized``), as every other linear-probe row.

Collapse diagnostics (:class:`CollapseDiagnostics`; not in the release): before training and after
every epoch, on the validation patients, the spread of the general embedding across patients, the
cosine of the student's and the teacher's patient-specific parts, and the validation loss against
the loss of predicting the mean training target for everyone are logged and stored; a run that ends
collapsed (:func:`bench.train.collapse.is_collapsed`) is flagged ``collapsed: 1.0`` in its rows.

Loss options beyond the paper (run options, :mod:`models.run_options`): ``distill_center`` subtracts
the training patients' mean target per task before the KL divergence; ``distill_temperature``
replaces the release's temperature 1 (:class:`DistillLoss`).

Unlike the release, every epoch sees every training patient (its loop stops after 5 iterations),
the default schedule is the paper's (its script defaults to 1 epoch) and evaluation reads whole bags
(it subsamples tiles at random).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import ConcatDataset, DataLoader

from bench.config import DistillSettings
from bench.data.dataset import SiteData, collate
from bench.train.collapse import COLLAPSE_RULE, is_collapsed
from bench.predictions import Predictions
from bench.train.probe import EMBED_BATCH, ProbeResult, embed, fit_subtype_probe, fit_survival_probe, probe_subtype

log = logging.getLogger(__name__)

KL_FACTOR = 10.0
TEMPERATURE = 1.0


def distillation_loss(task_embeddings: torch.Tensor, text_targets: torch.Tensor,
                      temperature: float = TEMPERATURE) -> torch.Tensor:
    """KL(text || model) over features, summed over tasks and features, mean over the batch.

    ``task_embeddings [B, T, D]`` (model) and ``text_targets [B, T, D]`` (projected text); both are
    L2-normalised here.
    """
    z = F.normalize(task_embeddings.float(), dim=-1)
    y = F.normalize(text_targets.float(), dim=-1)
    log_p = F.log_softmax(z / temperature, dim=-1)
    q = F.softmax(y / temperature, dim=-1)
    kl = F.kl_div(log_p, q, reduction="sum") / z.shape[0]
    return kl * temperature**2 * KL_FACTOR


class DistillLoss:
    """The distillation loss of a run: :func:`distillation_loss` at ``temperature``, and with ``center``
    the targets minus ``target_mean`` (``[T, D]``, the training patients' mean L2-normalised target per
    task, set by :class:`TargetCentring` each epoch) — so that only what differs between patients is
    distilled. Defaults: the release (temperature 1, no centring)."""

    def __init__(self, temperature: float = TEMPERATURE, center: bool = False):
        self.temperature = float(temperature)
        self.center = bool(center)
        self.target_mean: torch.Tensor | None = None

    def targets(self, text_targets: torch.Tensor) -> torch.Tensor:
        """The targets the KL divergence compares with: L2-normalised; when ``center``, minus the mean
        target and L2-normalised again (the patient-specific part, at the scale of a whole target)."""
        y = F.normalize(text_targets.float(), dim=-1)
        if not self.center:
            return y
        if self.target_mean is None:
            raise RuntimeError("centred distillation needs the training targets' mean (TargetCentring)")
        return F.normalize(y - self.target_mean.to(y.device), dim=-1)

    def __call__(self, task_embeddings: torch.Tensor, text_targets: torch.Tensor) -> torch.Tensor:
        return distillation_loss(task_embeddings, self.targets(text_targets), self.temperature)

    def floor(self, text_targets: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
        """The loss of predicting one distribution for everyone — the mean over the ``reference`` patients'
        target distributions ``softmax(y / T)`` (the best constant prediction) — against ``text_targets``
        ``[B, T, D]``, on the scale of :meth:`__call__` (mean over patients)."""
        q = F.softmax(self.targets(text_targets) / self.temperature, dim=-1)
        q_mean = F.softmax(self.targets(reference) / self.temperature, dim=-1).mean(dim=0, keepdim=True)
        kl = (q * (q.clamp_min(1e-30).log() - q_mean.log())).sum() / q.shape[0]
        return kl * self.temperature**2 * KL_FACTOR


class DistillModule(L.LightningModule):
    """ModalTune (or any model with ``forward_tasks`` and ``text_rows``) trained against projected text."""

    def __init__(self, model: torch.nn.Module, projector: torch.nn.Module, settings: DistillSettings,
                 loss: DistillLoss | None = None):
        super().__init__()
        self.model = model
        self.projector = projector
        self.settings = settings
        self.text_rows = list(model.text_rows)
        self.loss = loss or DistillLoss()

    def text_targets(self, text: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The projected text targets ``[B, T, D]`` of a batch's text embeddings ``[B, 4, E]`` (the rows of
        the model's tasks)."""
        return self.projector(text[:, self.text_rows].to(dtype))

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        z = self.model.forward_tasks(batch)
        with torch.set_grad_enabled(self.projector_trains):
            y = self.text_targets(batch["text"], z.dtype)
        kl = self.loss(z, y)
        self.log("train_loss", kl.detach(), on_step=False, on_epoch=True, batch_size=len(batch["label"]))
        self.log("train_kl", kl.detach(), on_step=False, on_epoch=True, batch_size=len(batch["label"]))
        return kl

    @property
    def projector_trains(self) -> bool:
        """True when the text projector has trainable parameters (the Trainable Projector ablation)."""
        return any(p.requires_grad for p in self.projector.parameters())

    def configure_optimizers(self):
        s = self.settings
        params = [p for p in self.parameters() if p.requires_grad]  # the model's and a trainable projector's
        optimizer = torch.optim.AdamW(params, lr=s.lr, weight_decay=s.weight_decay)

        def factor(epoch: int) -> float:
            if epoch < s.warmup_epochs:
                return (1.0 + (s.warmup_factor - 1.0) * epoch / s.warmup_epochs) / s.warmup_factor
            span = max(1, s.epochs - s.warmup_epochs)
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (epoch - s.warmup_epochs) / span)))

        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": torch.optim.lr_scheduler.LambdaLR(optimizer, factor),
                                                         "interval": "epoch"}}


class ProbeSelection(L.Callback):
    """After each epoch: embed the training and validation patients, score a subtype probe (with the
    run's ``preprocessing``) on validation, keep the best epoch's weights (its test embeddings are
    computed once, after training). Ties go to the later epoch, as the release's ``>=``. The untrained
    model is scored too (``init_score``, stored for comparison, never selected: the release selects
    among trained epochs only)."""

    def __init__(self, sites: dict[str, SiteData], preprocessing: str = "raw"):
        self.sites = sites
        self.preprocessing = preprocessing
        self.best_score = -math.inf
        self.best_epoch = -1
        self.init_score = math.nan
        self.history: list[float] = []
        self.best_state: dict[str, torch.Tensor] = {}

    def score(self, module: DistillModule) -> float:
        """Validation balanced accuracy of a subtype probe on the general embedding (mean over sites)."""
        embeddings = {site: {split: embed(module.model, data.splits[split], module.device) for split in ("train", "val")}
                      for site, data in self.sites.items()}
        scores = [probe_subtype(embeddings[site], data, splits=("val",),
                                preprocessing=self.preprocessing)["val_balanced_accuracy"]
                  for site, data in self.sites.items()]
        module.model.train()
        return float(np.nanmean(scores))

    def on_train_start(self, trainer: L.Trainer, module: DistillModule) -> None:
        self.init_score = self.score(module)
        for logger in trainer.loggers:
            logger.log_metrics({"init/val_metric": self.init_score}, step=0)

    def on_train_epoch_end(self, trainer: L.Trainer, module: DistillModule) -> None:
        score = self.score(module)
        self.history.append(score)
        module.log("val_metric", score)
        if score >= self.best_score:
            self.best_score, self.best_epoch = score, trainer.current_epoch
            self.best_state = {k: v.detach().clone() for k, v in module.model.state_dict().items()}


class TargetCentring(L.Callback):
    """Sets a centring :class:`DistillLoss`'s ``target_mean`` from the training patients' text ``[N, 4, E]``
    before training and at every epoch start (a trainable projector moves the targets); no-op otherwise."""

    def __init__(self, train_text: torch.Tensor):
        self.train_text = train_text

    @torch.no_grad()
    def _update(self, module: DistillModule) -> None:
        if module.loss.center:
            y = F.normalize(module.text_targets(self.train_text.to(module.device)).float(), dim=-1)
            module.loss.target_mean = y.mean(dim=0)

    def on_train_start(self, trainer: L.Trainer, module: DistillModule) -> None:
        self._update(module)

    def on_train_epoch_start(self, trainer: L.Trainer, module: DistillModule) -> None:
        self._update(module)


@torch.no_grad()
def task_outputs(model: torch.nn.Module, datasets: list[torch.utils.data.Dataset],
                 device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor]:
    """Every patient's task embeddings ``[N, T, D]`` (``forward_tasks``, eval mode, whole bags) and text
    embeddings ``[N, 4, E]``, over ``datasets`` in order."""
    model.eval()
    z, text = [], []
    for dataset in datasets:
        for batch in DataLoader(dataset, batch_size=EMBED_BATCH, collate_fn=collate):
            moved = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
            z.append(model.forward_tasks(moved).float().cpu())
            text.append(batch["text"].float())
    return torch.cat(z), torch.cat(text)


class CollapseDiagnostics(L.Callback):
    """Before training and after every epoch, on the validation patients of every site: is the student
    collapsing onto the shared part of the targets?

    ``general_std``: the L2-normalised general embedding's standard deviation across patients, mean
    over features (falls towards 0 when every patient gets the same embedding). ``centered_cosine``:
    mean cosine between a patient's student and teacher vectors after subtracting each one's mean over
    the patients (per task; L2-normalised vectors) — the agreement of the patient-specific parts, ~0 at
    initialisation. ``val_kl``: the run's loss on these patients; ``val_kl_floor``: the loss of
    predicting the training patients' mean target distribution for everyone; ``kl_floor_ratio`` =
    ``val_kl / val_kl_floor`` (>= 1: no better than that constant). Logged per epoch (``diag_*``; the
    values before training under ``init/``) and summarised by :meth:`summary`.
    """

    def __init__(self, sites: dict[str, SiteData], train_text: torch.Tensor):
        self.datasets = [data.splits["val"] for data in sites.values()]
        self.train_text = train_text
        self.initial: dict[str, float] = {}
        self.history: list[dict[str, float]] = []

    @torch.no_grad()
    def measure(self, module: DistillModule) -> dict[str, float]:
        """The diagnostics of ``module``'s current weights."""
        model = module.model
        z, text = task_outputs(model, self.datasets, module.device)
        model.train()
        y = module.text_targets(text.to(module.device)).float().cpu()
        reference = module.text_targets(self.train_text.to(module.device)).float().cpu()
        zn, yn = F.normalize(z, dim=-1), F.normalize(y, dim=-1)
        general = zn[:, getattr(model, "general_index", 0)]
        zc, yc = zn - zn.mean(dim=0), yn - yn.mean(dim=0)
        kl, floor = float(module.loss(z, y)), float(module.loss.floor(y, reference))
        return {"general_std": float(general.std(dim=0, unbiased=False).mean()),
                "centered_cosine": float(F.cosine_similarity(zc, yc, dim=-1).mean()),
                "val_kl": kl, "val_kl_floor": floor, "kl_floor_ratio": kl / floor if floor > 0 else math.nan}

    def on_train_start(self, trainer: L.Trainer, module: DistillModule) -> None:
        self.initial = self.measure(module)
        for logger in trainer.loggers:
            logger.log_metrics({f"init/diag_{k}": v for k, v in self.initial.items()}, step=0)

    def on_train_epoch_end(self, trainer: L.Trainer, module: DistillModule) -> None:
        current = self.measure(module)
        self.history.append(current)
        module.log_dict({f"diag_{k}": v for k, v in current.items()})

    def summary(self) -> dict[str, float]:
        """The last epoch's diagnostics (``diag_*``), their values before training (``diag_*_init``), the
        spread's ratio ``diag_std_ratio`` and the :func:`~bench.train.collapse.is_collapsed` flag
        ``collapsed`` (1.0 / 0.0) of the last epoch's centred cosine and loss-to-floor ratio."""
        final = self.history[-1] if self.history else self.initial
        out = {f"diag_{k}": v for k, v in final.items()}
        out.update({f"diag_{k}_init": v for k, v in self.initial.items()})
        init_std = self.initial.get("general_std", math.nan)
        out["diag_std_ratio"] = final["general_std"] / init_std if init_std > 0 else math.nan
        out["collapsed"] = float(is_collapsed(final["centered_cosine"], final["kl_floor_ratio"]))
        return out


@dataclass
class DistillOutcome:
    metrics: dict[str, dict[str, dict[str, float]]]  # site -> task -> metrics
    best_epoch: int
    val_history: list[float]
    diagnostics: dict[str, float]  # CollapseDiagnostics.summary(): stored in every row of the run
    predictions: dict[str, dict[str, Predictions]] = field(default_factory=dict)  # site -> task -> test predictions
    embeddings: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)  # site -> split -> [n, E] (probed)


def train_distill(model: torch.nn.Module, projector: torch.nn.Module, sites: dict[str, SiteData],
                  settings: DistillSettings, *, run_dir: Path, loggers: list, progress: bool = False,
                  precision: str | None = None, deploy: dict[str, SiteData] | None = None,
                  loss: DistillLoss | None = None, preprocessing: str = "raw",
                  callbacks: list[L.Callback] | None = None) -> DistillOutcome:
    """Train on the training patients of every site in ``sites`` together; probe per site.

    ``deploy``: out-of-distribution sites (Table 3) never seen in training; the best epoch's model
    embeds their patients and the probes are fit on their own training split. ``loss``: the
    distillation loss (default: the release's); ``preprocessing``: the probes' (``raw`` or
    ``standardized``), for selection and evaluation alike; ``callbacks``: more Lightning callbacks
    (e.g. a learning-curve recorder), run after selection and diagnostics.
    """
    train = ConcatDataset([data.splits["train"] for data in sites.values()])
    generator = torch.Generator().manual_seed(torch.initial_seed() % 2**63)
    bs = settings.batch_size
    loader = DataLoader(train, batch_size=bs, shuffle=True, collate_fn=collate, generator=generator,
                        drop_last=len(train) > bs and len(train) % bs == 1)
    loss = loss or DistillLoss()
    train_text = torch.cat([data.splits["train"].text for data in sites.values()])
    selection = ProbeSelection(sites, preprocessing)
    diagnostics = CollapseDiagnostics(sites, train_text)
    initial = initial_test_metrics(model, sites, preprocessing)
    module = DistillModule(model, projector, settings, loss)
    trainer = L.Trainer(
        accelerator="auto", devices=1, max_epochs=settings.epochs, logger=loggers,
        callbacks=[TargetCentring(train_text), selection, diagnostics, *(callbacks or [])],
        enable_checkpointing=False, enable_progress_bar=progress, enable_model_summary=False,
        num_sanity_val_steps=0, limit_val_batches=0, deterministic=True, log_every_n_steps=max(1, len(loader)),
        default_root_dir=str(run_dir),
        precision=precision or ("bf16-mixed" if torch.cuda.is_available() else "32-true"),
    )
    trainer.fit(module, loader)
    model.load_state_dict(selection.best_state)
    embeddings: dict[str, dict[str, np.ndarray]] = {}
    probed = probe_sites(model, {**sites, **(deploy or {})}, preprocessing, embeddings=embeddings)
    metrics = {site: {task: {**p.metrics, **initial.get(site, {}).get(task, {})} for task, p in tasks.items()}
               for site, tasks in probed.items()}
    summary = {**diagnostics.summary(), "init_val_balanced_accuracy": selection.init_score}
    if summary["collapsed"]:
        log.warning("the %s distillation ended collapsed (%s): the patient-specific parts of student and teacher "
                    "have cosine %.3g and the validation loss is %.3g x the loss of predicting the mean target for "
                    "everyone (the general embedding's spread across patients: %.3g x its value before training)",
                    "+".join(sites), COLLAPSE_RULE, summary["diag_centered_cosine"], summary["diag_kl_floor_ratio"],
                    summary["diag_std_ratio"])
    return DistillOutcome(metrics=metrics, best_epoch=selection.best_epoch, val_history=selection.history,
                          diagnostics=summary,
                          predictions={site: {task: p.predictions for task, p in tasks.items()}
                                       for site, tasks in probed.items()}, embeddings=embeddings)


def initial_test_metrics(model: torch.nn.Module, sites: dict[str, SiteData],
                         preprocessing: str = "raw") -> dict[str, dict[str, dict[str, float]]]:
    """The untrained model probed exactly as the selected one will be (site -> task -> ``init_test_*``),
    so that a table can say whether training moved a row above its own initialisation. The random number
    generators are restored afterwards (the training split's bags are sampled while embedding): training
    draws exactly what it would have drawn without this measurement."""
    with torch.random.fork_rng(devices=[]):
        probed = probe_sites(model, sites, preprocessing)
    return {site: {task: {f"init_{k}": v for k, v in p.metrics.items() if k.startswith("test_")}
                   for task, p in tasks.items()} for site, tasks in probed.items()}


def probe_sites(model: torch.nn.Module, sites: dict[str, SiteData], preprocessing: str = "raw",
                embeddings: dict[str, dict[str, np.ndarray]] | None = None) -> dict[str, dict[str, ProbeResult]]:
    """Embed every patient of ``sites`` with a trained model (``forward_features``) and probe both tasks
    (after ``preprocessing``: ``raw`` or ``standardized``): site -> task -> :class:`ProbeResult` (the
    metrics and the test patients' predictions). ``embeddings``, if given, receives the probed embeddings
    (site -> split -> ``[n, E]``), so that they can be kept without embedding anyone twice."""
    device = next(model.parameters()).device
    out = {}
    for site, data in sites.items():
        x = {split: embed(model, ds, device) for split, ds in data.splits.items()}
        if embeddings is not None:
            embeddings[site] = x
        out[site] = {"subtype": fit_subtype_probe(x, data, preprocessing=preprocessing),
                     "survival": fit_survival_probe(x, data, preprocessing=preprocessing)}
    return out
