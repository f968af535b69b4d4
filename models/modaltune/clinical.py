"""The clinical token of "ModalTune w/ Clinical" (the paper's Table 10).

A 2-layer MLP turns a patient's encoded clinical vector (:mod:`models.clinical`: age, TNM staging,
treatment type and receptor status, with missing indicators) into one token of the adapter width,
which joins the transcriptomics tokens (and the task prompt) as an adapter token. The architecture
is the release's ``clinical_mlp`` (martellab-sri/ModalTune ``models/aggregators/longvit_adapter.py``,
``LongNetGeneSimpleClinicalAdapter``): ``Linear(C, D/2) -> ReLU -> Linear(D/2, D) -> LayerNorm(D)``,
one token per patient, initialised like the release's other linear layers (``trunc_normal(std 0.02)``,
zero bias; unit LayerNorm).

Parameters: ``C (D/2) + D/2 + (D/2) D + D + 2 D``; with the 44-wide clinical vector and D = 768,
314,496 (plus one more row of adapter-token positions, 768, in the model).
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["ClinicalTokens", "clinical_token_parameters"]


def clinical_token_parameters(in_dim: int, dim: int) -> int:
    """Parameters of :class:`ClinicalTokens` (``in_dim`` inputs, width ``dim``)."""
    hidden = dim // 2
    return in_dim * hidden + hidden + hidden * dim + dim + 2 * dim


class ClinicalTokens(nn.Module):
    """``forward(clinical [B, in_dim]) -> [B, 1, dim]``: the release's 2-layer clinical MLP (module docstring)."""

    def __init__(self, in_dim: int, dim: int) -> None:
        super().__init__()
        if in_dim < 1 or dim < 2:
            raise ValueError(f"the clinical MLP needs in_dim >= 1 and dim >= 2, got {in_dim} and {dim}")
        self.in_dim = in_dim
        self.mlp = nn.Sequential(nn.Linear(in_dim, dim // 2), nn.ReLU(), nn.Linear(dim // 2, dim), nn.LayerNorm(dim))

    def forward(self, clinical: torch.Tensor) -> torch.Tensor:
        if clinical.dim() != 2 or clinical.shape[1] != self.in_dim:
            raise ValueError(f"the clinical token reads encoded clinical vectors [B, {self.in_dim}] "
                             f"(models.clinical), got {tuple(clinical.shape)}")
        return self.mlp(clinical.to(self.mlp[0].weight.dtype)).unsqueeze(1)
