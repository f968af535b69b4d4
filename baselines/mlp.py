"""RNA-only baselines' common base, and the MLP baseline on bulk transcriptomics.

The ModalTune paper (ICCV 2025, Sec. 4, "Genomics" baselines) compares MLP, SNN and S-MLP trained
on bulk RNA alone; all three follow their implementations in ``mahmoodlab/SurvPath``
(``models/model_MLPOmics.py``, ``model_SNNOmics.py``, ``model_MaskedOmics.py``) as configured by
``utils/core_utils.py::_init_model``. Here each is an encoder ``rna [B, G] -> [B, E]`` (the patient
embedding) followed by one linear task head ``E -> K``; the reference's last linear layer is that
head, so nothing is added or removed.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from models.base import BenchModel, ModelContext
from models.registry import register_model
from models.search import TRAINING_SPACE, choice, uniform


class RnaOnlyModel(BenchModel):
    """A model that reads only ``batch["rna"]`` (float ``[B, G]``) and ignores every other key.

    ``encoder`` maps ``[B, G] -> [B, embed_dim]``; ``head`` is ``Linear(embed_dim, n_outputs)``.
    There is no bag, so there is nothing to mask: each row of the batch is encoded independently.
    """

    modalities: ClassVar[tuple[str, ...]] = ("rna",)

    def __init__(self, n_genes: int, encoder: nn.Module, embed_dim: int, n_outputs: int) -> None:
        super().__init__()
        self.n_genes = n_genes
        self.embed_dim = embed_dim
        self.encoder = encoder
        self.head = nn.Linear(embed_dim, n_outputs)

    def forward_features(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        rna = batch["rna"]
        if rna.ndim != 2 or rna.shape[1] != self.n_genes:
            raise ValueError(f"{type(self).__name__} expects rna [B, {self.n_genes}], got {tuple(rna.shape)}")
        return self.encoder(rna.to(self.head.weight.dtype))


class MLPOmics(RnaOnlyModel):
    """Two-layer ReLU MLP on the full expression vector (SurvPath ``MLPOmics``).

    ``[B, G] -> Linear(G, h) -> ReLU -> Dropout -> Linear(h, h) -> ReLU -> Dropout -> [B, h]``, then
    the head ``Linear(h, K)``. SurvPath builds it with ``projection_dim=64`` (``h = 64 // 2 = 32``) and
    ``dropout=args.encoder_dropout`` (default 0.25); PyTorch's default Linear initialisation.
    """

    def __init__(self, n_genes: int, n_outputs: int, hidden: int = 32, dropout: float = 0.25) -> None:
        encoder = nn.Sequential(
            nn.Linear(n_genes, hidden), nn.ReLU(), nn.Dropout(dropout),
            nn.Linear(hidden, hidden), nn.ReLU(), nn.Dropout(dropout),
        )
        super().__init__(n_genes, encoder, hidden, n_outputs)


@register_model("mlp", label="MLP", modalities=("rna",), paper_context={"n_genes": 4999},
                search_space=(*TRAINING_SPACE, uniform("dropout", 0.0, 0.5), choice("hidden", (16, 32, 64))))
def mlp(ctx: ModelContext, *, dropout: float = 0.25, hidden: int = 32) -> MLPOmics:
    """MLP on bulk RNA (SurvPath MLPOmics: 2 x [Linear 32, ReLU, Dropout 0.25] + linear head).

    Paper configuration: SurvPath's 4,999 genes (combine_comps.csv), 161,188 parameters with 4
    survival outputs. Every profile builds the same widths (the model is already tiny); only the
    cohort's gene count changes the input layer. ``dropout`` and ``hidden`` are overrides for tuning
    (the defaults are the reference's).
    """
    return MLPOmics(ctx.n_genes, ctx.n_outputs, hidden=hidden, dropout=dropout)
