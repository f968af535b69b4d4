"""SNN baseline: a self-normalising network on bulk RNA.

Klambauer et al., "Self-normalizing neural networks" (NeurIPS 2017), as implemented for omics in
``mahmoodlab/SurvPath`` ``models/model_SNNOmics.py`` (``model_size_omic='small'``) with blocks from
``models/model_utils.py::SNN_Block``; compared against in the ModalTune paper (ICCV 2025, Table 2).
"""

from __future__ import annotations

import math

from torch import nn

from baselines.mlp import RnaOnlyModel
from models.base import ModelContext
from models.registry import register_model
from models.search import TRAINING_SPACE, choice, uniform


def snn_block(in_dim: int, out_dim: int, dropout: float = 0.25) -> nn.Sequential:
    """``Linear -> ELU -> AlphaDropout``: SurvPath's SNN block (ELU, as the reference, not SELU)."""
    return nn.Sequential(nn.Linear(in_dim, out_dim), nn.ELU(), nn.AlphaDropout(dropout))


class SNNOmics(RnaOnlyModel):
    """Stacked SNN blocks on the full expression vector.

    ``[B, G] -> snn_block(G, w_1) -> ... -> snn_block(w_{k-1}, w_k) -> [B, w_k]``, then the head
    ``Linear(w_k, K)``. SurvPath's ``small`` size is ``widths=(256, 256)``, AlphaDropout 0.25 in every
    block. Initialisation as the reference's ``init_max_weights``: every Linear (head included) gets
    weights ``N(0, 1/fan_in)`` and zero bias, the LeCun-normal scheme self-normalising nets need.
    """

    def __init__(
        self, n_genes: int, n_outputs: int, widths: tuple[int, ...] = (256, 256), dropout: float = 0.25
    ) -> None:
        dims = (n_genes, *widths)
        encoder = nn.Sequential(*(snn_block(a, b, dropout) for a, b in zip(dims[:-1], dims[1:])))
        super().__init__(n_genes, encoder, widths[-1], n_outputs)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, std=1.0 / math.sqrt(module.in_features))
                nn.init.zeros_(module.bias)


@register_model("snn", label="SNN", modalities=("rna",), paper_context={"n_genes": 4987},
                search_space=(*TRAINING_SPACE, uniform("dropout", 0.0, 0.5), choice("width", (128, 256, 512))))
def snn(ctx: ModelContext, *, dropout: float = 0.25, width: int = 256) -> SNNOmics:
    """Self-normalising network on bulk RNA (SurvPath SNNOmics 'small': 2 SNN blocks of 256).

    Paper configuration: the paper's 4,987 genes (ModalTune Sec. 4), 1,343,748 parameters with 4
    survival outputs (1,346,820 at SurvPath's 4,999 genes). Every profile builds the same widths
    (1.3 M parameters train quickly on a CPU); only the cohort's gene count changes the input layer.
    ``dropout`` and ``width`` (of both blocks) are overrides for tuning (the defaults are the reference's).
    """
    return SNNOmics(ctx.n_genes, ctx.n_outputs, widths=(width, width), dropout=dropout)
