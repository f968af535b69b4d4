"""ABMIL: gated attention-based multiple-instance learning over a patient's patch bag.

Architecture (Ilse et al., ICML 2018, "Attention-based deep multiple instance learning", in the
configuration of SurvPath's unimodal port, mahmoodlab/SurvPath ``models/model_ABMIL.py`` with
``size_arg="small"`` and ``Attn_Net_Gated`` from ``models/model_utils.py``; ModalTune, ICCV 2025,
compares against it as "ABMIL")::

    features [B, N, D]
      -> Linear(D, 256) + ReLU + Dropout(0.25)                      h      [B, N, 256]
      -> gated attention: Linear(256, 256) + Tanh + Dropout(0.25)
                        * Linear(256, 256) + Sigmoid + Dropout(0.25)
                        -> Linear(256, 1)                           scores [B, N]
      -> softmax over the bag's real patches (padding gets -inf)    a      [B, N]
      -> sum_n a_n h_n                                              pooled [B, 256]
      -> rho: Linear(256, 256) + ReLU + Dropout(0.25)               embedding [B, 256]
      -> head Linear(256, K)                                        logits [B, K]

At ``D = 1536`` and ``K = 4`` that is 592,133 parameters (591,619 with a two-class head), the count
the SurvPath layer definitions give.

Memory is linear in ``N``: every patch is scored independently and the pooling is one weighted sum.
Masking: padded patches are excluded from the softmax, so a padded and masked bag gives exactly the
unpadded bag's embedding (up to floating-point summation order).
"""

from __future__ import annotations

import torch
from torch import nn

from models.base import BenchModel, ModelContext, bag_mask
from models.registry import register_model
from models.search import TRAINING_SPACE, choice, uniform

__all__ = ["ABMIL", "GatedAttention", "abmil"]


class GatedAttention(nn.Module):
    """Gated attention scorer (Ilse et al. 2018, eq. 9): ``w^T (tanh(V h) * sigmoid(U h))``.

    Maps patch embeddings ``h [B, N, L]`` to one raw attention score per patch ``[B, N]``.
    Dropout follows each branch as in SurvPath's ``Attn_Net_Gated(dropout=True)``.
    """

    def __init__(self, in_dim: int, hidden_dim: int, dropout: float) -> None:
        super().__init__()
        self.tanh_branch = nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.Tanh(), nn.Dropout(dropout))
        self.gate_branch = nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.Sigmoid(), nn.Dropout(dropout))
        self.score = nn.Linear(hidden_dim, 1)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.score(self.tanh_branch(h) * self.gate_branch(h)).squeeze(-1)


class ABMIL(BenchModel):
    """Gated-attention MIL over a bag of patch features; embedding after SurvPath's ``rho`` layer.

    ``forward_features(batch) -> [B, embed_dim]`` reads ``features [B, N, D]`` and optional
    ``mask [B, N]`` (True = real patch); ``attention(batch) -> [B, N]`` returns the softmax weights
    (zero on padding) for interpretation. ``embed_dim`` is ``attn_dim`` (256 in the reference).
    """

    modalities = ("wsi",)

    def __init__(
        self,
        feature_dim: int,
        n_outputs: int,
        hidden_dim: int = 256,
        attn_dim: int = 256,
        dropout: float = 0.25,
    ) -> None:
        super().__init__()
        self.embed_dim = attn_dim
        self.fc = nn.Sequential(nn.Linear(feature_dim, hidden_dim), nn.ReLU(), nn.Dropout(dropout))
        self.attention_net = GatedAttention(hidden_dim, attn_dim, dropout)
        self.rho = nn.Sequential(nn.Linear(hidden_dim, attn_dim), nn.ReLU(), nn.Dropout(dropout))
        self.head = nn.Linear(attn_dim, n_outputs)

    def _encode(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Patch embeddings ``h [B, N, hidden]`` and masked softmax attention ``a [B, N]``."""
        mask = bag_mask(batch)
        if not bool(mask.any(dim=1).all()):
            raise ValueError("ABMIL received a bag with no real patch (mask all False)")
        # Zero the padding first so that non-finite filler cannot leak through a zero weight.
        h = self.fc(batch["features"].float().masked_fill(~mask[..., None], 0.0))
        scores = self.attention_net(h).masked_fill(~mask, float("-inf"))
        return h, torch.softmax(scores, dim=1)

    def attention(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Attention weights ``[B, N]`` over each bag's patches (sum to 1, exactly 0 on padding)."""
        return self._encode(batch)[1]

    def forward_features(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        h, weights = self._encode(batch)
        pooled = torch.einsum("bn,bnh->bh", weights, h)
        return self.rho(pooled)


@register_model(
    "abmil",
    label="ABMIL",
    modalities=("wsi",),
    paper_context={"feature_dim": 1536},
    # SurvPath's scripts sweep lr and weight decay; its ABMIL exposes the dropout and the hidden width.
    search_space=(*TRAINING_SPACE, uniform("dropout", 0.0, 0.5), choice("hidden_dim", (128, 256, 512))),
)
def abmil(ctx: ModelContext, *, dropout: float = 0.25, hidden_dim: int = 256) -> ABMIL:
    """ABMIL (gated attention MIL, SurvPath configuration): patches -> 256 -> gated attention -> rho -> head.

    Every profile (``tiny``, ``small``, ``paper``) builds the reference widths (256 hidden, 256
    attention, dropout 0.25): the model is cheap, and its cost is dominated by the ``D -> 256``
    projection, which follows the cohort's feature dimension ``ctx.feature_dim``. ``dropout`` and
    ``hidden_dim`` are overrides for tuning (the defaults are the reference's).
    """
    return ABMIL(feature_dim=ctx.feature_dim, n_outputs=ctx.n_outputs, hidden_dim=hidden_dim, dropout=dropout)
