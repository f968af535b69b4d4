"""The ``supervised`` regime: one task per run, on Lightning.

Subtype: cross-entropy (rare set excluded upstream); survival: discrete-time NLL over 4 bins with
SurvPath's ``alpha`` weighting. Each epoch ends with a validation pass; the checkpoint with the best
validation metric (balanced accuracy / C-index) is kept by Lightning's ``ModelCheckpoint`` and the
test metrics come from it.
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader

from bench import metrics as M
from bench.config import Profile
from bench.data.dataset import PatientDataset, SiteData, collate
from bench.predictions import Predictions
from models import tasks
from models.base import BenchModel

log = logging.getLogger(__name__)


class SupervisedModule(L.LightningModule):
    """Wraps any registry model with its task loss, validation metric and optimiser."""

    def __init__(self, model: BenchModel, task: str, profile: Profile, steps_per_epoch: int):
        super().__init__()
        self.model = model
        self.task = task
        self.profile = profile
        self.steps_per_epoch = steps_per_epoch
        self._val_outputs: list[tuple[torch.Tensor, dict[str, torch.Tensor]]] = []
        self.val_history: list[float] = []

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        terms = loss_terms(self.model.compute_loss(batch, self.task, alpha_surv=self.profile.alpha_surv))
        for name, value in terms.items():
            self.log(f"train_{name}", value.detach(), on_step=False, on_epoch=True, batch_size=len(batch["label"]))
        return terms["loss"]

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._val_outputs.append((self.model(batch).float().cpu(), _targets(batch)))

    def on_validation_epoch_end(self) -> None:
        logits = torch.cat([o[0] for o in self._val_outputs])
        targets = {k: torch.cat([o[1][k] for o in self._val_outputs]) for k in self._val_outputs[0][1]}
        self._val_outputs.clear()
        value = evaluate_logits(logits, targets, self.task)[M.PRIMARY[self.task]]
        value = value if math.isfinite(value) else 0.0
        self.val_history.append(value)
        self.log("val_metric", value, prog_bar=True)

    def configure_optimizers(self):
        optimizer = torch.optim.AdamW(self.model.parameters(), lr=self.profile.lr, weight_decay=self.profile.weight_decay)
        total = self.profile.epochs * self.steps_per_epoch
        warmup = self.profile.warmup_epochs * self.steps_per_epoch

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            progress = (step - warmup) / max(1, total - warmup)
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def loss_terms(out: torch.Tensor | dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A model's ``compute_loss`` result as named terms: ``{"loss": total, <term>: value, ...}``."""
    if isinstance(out, dict):
        if "loss" not in out:
            raise ValueError(f"compute_loss returned terms {sorted(out)} without the total under 'loss'")
        return out
    return {"loss": out}


def _targets(batch: dict[str, Any]) -> dict[str, torch.Tensor]:
    return {k: batch[k].cpu() for k in ("label", "survival_bin", "event", "survival_months")}


def evaluate_logits(logits: torch.Tensor, targets: dict[str, torch.Tensor], task: str,
                    train_survival: tuple[np.ndarray, np.ndarray] | None = None) -> dict[str, float]:
    """Task metrics of stacked logits ``[n, K]`` against the stacked targets."""
    prediction = tasks.task_prediction(logits, task).numpy()
    if task == "subtype":
        return M.subtype_metrics(targets["label"].numpy(), prediction)
    train_event, train_time = train_survival if train_survival else (None, None)
    return M.survival_metrics(targets["event"].numpy(), targets["survival_months"].numpy(), prediction,
                              train_event, train_time)


@torch.no_grad()
def predict_logits(model: BenchModel, loader: DataLoader, device: torch.device) -> tuple[torch.Tensor, dict]:
    """Eval-mode logits of every batch of ``loader`` and the stacked targets."""
    model.eval()
    outs, targets = [], []
    for batch in loader:
        moved = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
        outs.append(model(moved).float().cpu())
        targets.append(_targets(batch))
    return torch.cat(outs), {k: torch.cat([t[k] for t in targets]) for k in targets[0]}


@dataclass
class TrainOutcome:
    metrics: dict[str, float]
    best_epoch: int
    val_history: list[float]
    predictions: Predictions | None = None  # the selected checkpoint's test predictions


def train_supervised(model: BenchModel, data: SiteData, profile: Profile, *, run_dir: Path,
                     loggers: list, progress: bool = False, precision: str | None = None,
                     callbacks: list[L.Callback] | None = None) -> TrainOutcome:
    """Train ``model`` on ``data`` for the profile's epochs, select by validation, test the selected weights;
    ``callbacks``: more Lightning callbacks, after the checkpoint (a tuning trial's pruning)."""
    train_ds, val_ds, test_ds = data.splits["train"], data.splits["val"], data.splits["test"]
    bs = profile.batch_size
    generator = torch.Generator().manual_seed(torch.initial_seed() % 2**63)
    train_loader = DataLoader(train_ds, batch_size=bs, shuffle=True, collate_fn=collate, generator=generator,
                              drop_last=len(train_ds) > bs and len(train_ds) % bs == 1)
    val_loader = DataLoader(val_ds, batch_size=bs, collate_fn=collate)
    test_loader = DataLoader(test_ds, batch_size=bs, collate_fn=collate)
    module = SupervisedModule(model, data.task, profile, steps_per_epoch=len(train_loader))
    with tempfile.TemporaryDirectory(prefix="ckpt-", dir=run_dir) as ckpt_dir:
        checkpoint = L.pytorch.callbacks.ModelCheckpoint(dirpath=ckpt_dir, monitor="val_metric", mode="max",
                                                         save_top_k=1, save_weights_only=True, filename="best")
        trainer = L.Trainer(
            accelerator="auto", devices=1, max_epochs=profile.epochs, logger=loggers,
            callbacks=[checkpoint, *(callbacks or [])],
            enable_progress_bar=progress, enable_model_summary=False, num_sanity_val_steps=0,
            deterministic=True, log_every_n_steps=max(1, len(train_loader)), default_root_dir=str(run_dir),
            precision=precision or ("bf16-mixed" if torch.cuda.is_available() and not profile.narrowed else "32-true"),
        )
        trainer.fit(module, train_loader, val_loader)
        best = checkpoint.best_model_path
        state = torch.load(best, map_location="cpu", weights_only=True)["state_dict"]
        module.load_state_dict(state)
    device = module.device
    best_epoch = int(np.argmax(module.val_history)) if module.val_history else 0
    val_logits, val_t = predict_logits(model, val_loader, device)
    test_logits, test_t = predict_logits(model, test_loader, device)
    metrics = {f"val_{k}": v for k, v in evaluate_logits(val_logits, val_t, data.task, data.train_survival).items()}
    metrics.update({f"test_{k}": v for k, v in evaluate_logits(test_logits, test_t, data.task, data.train_survival).items()})
    return TrainOutcome(metrics=metrics, best_epoch=best_epoch, val_history=module.val_history,
                        predictions=predictions_of_logits(test_ds, test_logits, data.task))


def predictions_of_logits(dataset: PatientDataset, logits: torch.Tensor, task: str) -> Predictions:
    """The test predictions behind the test metrics: class probabilities or risk of ``logits``
    (``[n, K]``, the rows of ``dataset`` in order, as an unshuffled loader yields them)."""
    prediction = tasks.task_prediction(logits, task).numpy()
    if task == "subtype":
        return Predictions.of(dataset, probs=prediction)
    return Predictions.of(dataset, risk=prediction)


def configure_determinism() -> None:
    """Settings needed for bitwise-repeatable runs on CUDA (harmless on CPU)."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
