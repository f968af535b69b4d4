"""The contract every registered model honours (foundation models, baselines, ablations).

A model receives one *batch dict* built from the per-patient samples of ``bench.data`` and answers
three verbs (the torchmil contract) on top of a timm-style split between the patient embedding and
the task head:

``forward_features(batch) -> [B, E]``
    the patient embedding, reused by fusion heads, linear probes and the text-distillation objective;
``forward_head(embedding) -> [B, K]``
    the task head (``K`` = number of subtype classes, or 4 survival bins);
``forward(batch) -> [B, K]``
    ``forward_head(forward_features(batch))``;
``compute_loss(batch, task, alpha_surv=0.0)`` / ``predict(batch, task)``
    the task loss and the task prediction, from :mod:`models.tasks`. The harness trains through
    ``compute_loss``: a model with auxiliary objectives returns a dict holding the total under
    ``"loss"`` and each named term beside it (every term is logged as ``train_<name>``).

Batch keys (a model reads only those of its modalities):

============ ================== ==============================================================
key          shape              meaning
============ ================== ==============================================================
features     float [B, N, D]    patch features of all the patient's slides (WSI bag)
mask         bool  [B, N]       True for real patches, False for padding; absent = all real
coords       float [B, N, 2]    level-0 pixel coordinates of each patch
rna          float [B, G]       normalised expression in the cohort's gene order
clinical     float [B, C]       numeric clinical covariates
text         float [B, 4, E_t]  text embeddings (general, diagnosis, stage, survival)
label        long  [B]          subtype class, -1 for the rare set
survival_bin long  [B]          discrete survival bin 0..3
event        long  [B]          1 = died, 0 = censored
survival_months float [B]       follow-up time
============ ================== ==============================================================

Every model honours ``mask``: a padded and masked bag gives the same output as the unpadded bag.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from models import tasks




@dataclass(frozen=True)
class ModelContext:
    """What a builder needs to know about the cohort and task to size a model.

    ``pathways`` is the cohort's gene x pathway membership ``bool [G, P]`` (``pathways.csv``);
    ``families`` holds, per MCAT gene family (6 of them), the indices of its genes in the cohort's
    gene order. ``profile`` is ``tiny``, ``small`` or ``paper``: ``paper`` always builds the
    reference configuration; the others may narrow widths (the builder documents how).
    """

    n_outputs: int = 4
    feature_dim: int = 1536
    n_genes: int = 4987
    pathways: torch.Tensor | None = None
    families: tuple[tuple[int, ...], ...] | None = None
    clinical_dim: int = 4
    text_dim: int = 512
    profile: str = "paper"
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def n_pathways(self) -> int:
        if self.pathways is None:
            raise ValueError("this model tokenises RNA by pathway but the context has no pathways")
        return int(self.pathways.shape[1])


class BenchModel(nn.Module, ABC):
    """Base class: subclasses implement ``forward_features`` and set ``self.head``."""

    modalities: ClassVar[tuple[str, ...]] = ()
    head: nn.Module

    @abstractmethod
    def forward_features(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The patient embedding ``[B, E]``."""

    def forward_head(self, embedding: torch.Tensor) -> torch.Tensor:
        return self.head(embedding)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.forward_head(self.forward_features(batch))

    def compute_loss(self, batch: dict[str, torch.Tensor], task: str,
                     alpha_surv: float = 0.0) -> torch.Tensor | dict[str, torch.Tensor]:
        """The training loss of ``task`` (``alpha_surv``: SurvPath's weight of the uncensored term)."""
        return tasks.task_loss(self(batch), batch, task, alpha=alpha_surv)

    @torch.no_grad()
    def predict(self, batch: dict[str, torch.Tensor], task: str) -> torch.Tensor:
        return tasks.task_prediction(self(batch), task)


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    """Number of scalar parameters (optionally only those with ``requires_grad``)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def bag_mask(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """``bool [B, N]`` mask of real patches (all True when the batch carries none)."""
    feats = batch["features"]
    mask = batch.get("mask")
    if mask is None:
        return torch.ones(feats.shape[:2], dtype=torch.bool, device=feats.device)
    return mask.bool()
