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
the embeddings of the best epoch are probed for the test metrics of both tasks (logistic regression
for subtype, Cox PH for survival), as every other linear-probe row.

Unlike the release, every epoch sees every training patient (its loop stops after 5 iterations),
the default schedule is the paper's (its script defaults to 1 epoch) and evaluation reads whole bags
(it subsamples tiles at random).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import ConcatDataset, DataLoader

from bench.config import DistillSettings
from bench.data.dataset import SiteData, collate
from bench.train.probe import embed, probe_subtype, probe_survival

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


class DistillModule(L.LightningModule):
    """ModalTune (or any model with ``forward_tasks`` and ``text_rows``) trained against projected text."""

    def __init__(self, model: torch.nn.Module, projector: torch.nn.Module, settings: DistillSettings):
        super().__init__()
        self.model = model
        self.projector = projector
        self.settings = settings
        self.text_rows = list(model.text_rows)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        z = self.model.forward_tasks(batch)
        with torch.set_grad_enabled(self.projector_trains):
            y = self.projector(batch["text"][:, self.text_rows].to(z.dtype))
        kl = distillation_loss(z, y)
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
    """After each epoch: embed the training and validation patients, score a subtype probe on validation,
    keep the best epoch's weights (its test embeddings are computed once, after training)."""

    def __init__(self, sites: dict[str, SiteData]):
        self.sites = sites
        self.best_score = -math.inf
        self.best_epoch = -1
        self.history: list[float] = []
        self.best_state: dict[str, torch.Tensor] = {}

    def on_train_epoch_end(self, trainer: L.Trainer, module: DistillModule) -> None:
        embeddings = {site: {split: embed(module.model, data.splits[split], module.device) for split in ("train", "val")}
                      for site, data in self.sites.items()}
        scores = [probe_subtype(embeddings[site], data, splits=("val",))["val_balanced_accuracy"]
                  for site, data in self.sites.items()]
        score = float(np.nanmean(scores))
        self.history.append(score)
        module.log("val_metric", score)
        if score > self.best_score:
            self.best_score, self.best_epoch = score, trainer.current_epoch
            self.best_state = {k: v.detach().clone() for k, v in module.model.state_dict().items()}
        module.model.train()


@dataclass
class DistillOutcome:
    metrics: dict[str, dict[str, dict[str, float]]]  # site -> task -> metrics
    best_epoch: int
    val_history: list[float]


def train_distill(model: torch.nn.Module, projector: torch.nn.Module, sites: dict[str, SiteData],
                  settings: DistillSettings, *, run_dir: Path, loggers: list, progress: bool = False,
                  precision: str | None = None, deploy: dict[str, SiteData] | None = None) -> DistillOutcome:
    """Train on the training patients of every site in ``sites`` together; probe per site.

    ``deploy``: out-of-distribution sites (Table 3) never seen in training; the best epoch's model
    embeds their patients and the probes are fit on their own training split.
    """
    train = ConcatDataset([data.splits["train"] for data in sites.values()])
    generator = torch.Generator().manual_seed(torch.initial_seed() % 2**63)
    bs = settings.batch_size
    loader = DataLoader(train, batch_size=bs, shuffle=True, collate_fn=collate, generator=generator,
                        drop_last=len(train) > bs and len(train) % bs == 1)
    selection = ProbeSelection(sites)
    module = DistillModule(model, projector, settings)
    trainer = L.Trainer(
        accelerator="auto", devices=1, max_epochs=settings.epochs, logger=loggers, callbacks=[selection],
        enable_checkpointing=False, enable_progress_bar=progress, enable_model_summary=False,
        num_sanity_val_steps=0, limit_val_batches=0, deterministic=True, log_every_n_steps=max(1, len(loader)),
        default_root_dir=str(run_dir),
        precision=precision or ("bf16-mixed" if torch.cuda.is_available() else "32-true"),
    )
    trainer.fit(module, loader)
    model.load_state_dict(selection.best_state)
    metrics = deploy_and_probe(model, {**sites, **(deploy or {})})
    return DistillOutcome(metrics=metrics, best_epoch=selection.best_epoch, val_history=selection.history)


def deploy_and_probe(model: torch.nn.Module, sites: dict[str, SiteData]) -> dict[str, dict[str, dict[str, float]]]:
    """Embed every patient of ``sites`` with a trained model (``forward_features``) and probe both tasks."""
    device = next(model.parameters()).device
    out = {}
    for site, data in sites.items():
        x = {split: embed(model, ds, device) for split, ds in data.splits.items()}
        out[site] = {"subtype": probe_subtype(x, data), "survival": probe_survival(x, data)}
    return out
