"""S-MLP baseline: a pathway-masked sparse MLP on bulk RNA.

Elmarakeby et al., "Biologically informed deep neural network for prostate cancer discovery"
(Nature 2021), in the form of ``mahmoodlab/SurvPath`` ``models/model_MaskedOmics.py`` (modality
``mlp_per_path``), compared against in the ModalTune paper (ICCV 2025, Table 2, "S-MLP"). Genes
feed only the units of the pathways they belong to; each pathway's units feed only that pathway's
next units. The layers hold *dense* weights multiplied by a fixed 0/1 mask, as the reference does,
so the parameter count has two readings: all parameters ("dense") and those the mask lets act
("unmasked").
"""

from __future__ import annotations

from functools import partial

import torch
from torch import nn

from baselines.mlp import RnaOnlyModel
from models.base import ModelContext, count_parameters
from models.paper.omics import SURVPATH_N_GENES, paper_pathways
from models.registry import register_model


class MaskedLinear(nn.Module):
    """``y = x @ (W * M) + b`` with a dense weight ``W [in, out]`` and a fixed bool mask ``M [in, out]``.

    The mask is a buffer (saved with the weights, never trained). Masked-out entries of ``W`` get a
    zero gradient and never influence the output. Initialisation as the reference: Xavier-normal
    ``W``, bias uniform in ``[0, 1)``.
    """

    def __init__(self, mask: torch.Tensor) -> None:
        super().__init__()
        if mask.ndim != 2:
            raise ValueError(f"mask must be [in, out], got {tuple(mask.shape)}")
        self.register_buffer("mask", mask.bool().clone())
        self.weight = nn.Parameter(nn.init.xavier_normal_(torch.empty(mask.shape)))
        self.bias = nn.Parameter(torch.rand(mask.shape[1]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x [B, in] -> [B, out]``."""
        return torch.addmm(self.bias, x, self.weight * self.mask)

    def n_masked_out(self) -> int:
        """Weight entries the mask zeroes (parameters that exist but never act)."""
        return int((~self.mask).sum())


class SparseMLPOmics(RnaOnlyModel):
    """Pathway-masked MLP (SurvPath ``MaskedOmics``).

    With membership ``pathways bool [G, P]`` and ``d1``/``d2`` units per pathway:

    * ``fc1``: ``[B, G] -> [B, d1 * P]``; gene ``g`` reaches the ``d1`` units of pathway ``p`` iff
      ``pathways[g, p]`` (mask = membership repeated ``d1`` times along pathways);
    * ``fc2``: ``[B, d1 * P] -> [B, d2 * P]``, block-diagonal: pathway ``p``'s ``d1`` units feed only
      its ``d2`` units;
    * ``Linear(d2 * P, d2 * P // 4) -> ReLU -> Dropout`` gives the embedding ``[B, d2 * P // 4]``;
    * head ``Linear(d2 * P // 4, K)``.

    As in the reference there is no non-linearity between ``fc1``, ``fc2`` and the first dense
    layer. SurvPath's defaults: ``d1 = 8``, ``d2 = 16``, dropout 0.25 (``--encoder_dropout``).
    """

    def __init__(
        self, pathways: torch.Tensor, n_outputs: int, dim_per_path_1: int = 8, dim_per_path_2: int = 16,
        dropout: float = 0.25,
    ) -> None:
        if pathways.ndim != 2:
            raise ValueError(f"pathways must be a [genes, pathways] membership, got {tuple(pathways.shape)}")
        n_genes, n_pathways = pathways.shape
        gene_mask = pathways.bool().repeat_interleave(dim_per_path_1, dim=1)
        block_mask = torch.kron(
            torch.eye(n_pathways, dtype=torch.bool), torch.ones(dim_per_path_1, dim_per_path_2, dtype=torch.bool)
        )
        width = n_pathways * dim_per_path_2
        embed_dim = width // 4
        encoder = nn.Sequential(
            MaskedLinear(gene_mask),
            MaskedLinear(block_mask),
            nn.Linear(width, embed_dim), nn.ReLU(), nn.Dropout(dropout),
        )
        super().__init__(n_genes, encoder, embed_dim, n_outputs)
        self.n_pathways = n_pathways

    def unmasked_parameter_count(self) -> int:
        """Parameters that can act: all of them minus the weight entries the masks zero out."""
        masked_out = sum(m.n_masked_out() for m in self.modules() if isinstance(m, MaskedLinear))
        return count_parameters(self) - masked_out


@register_model(
    "smlp",
    label="S-MLP",
    modalities=("rna",),
    paper_context={"n_genes": SURVPATH_N_GENES, "pathways": partial(paper_pathways, SURVPATH_N_GENES)},
)
def smlp(ctx: ModelContext) -> SparseMLPOmics:
    """Pathway-masked sparse MLP on bulk RNA (SurvPath MaskedOmics: 8 then 16 units per pathway).

    Paper configuration: SurvPath's 4,999 genes x 331 pathways (combine_comps.csv counts, via
    :func:`models.paper.omics.paper_pathways`): 34,287,632 parameters dense, 7,146,800 unmasked, with
    4 survival outputs. Every profile builds the same per-pathway widths; the cohort's
    ``pathways.csv`` (``ctx.pathways``) sets the gene and pathway counts.
    """
    pathways = ctx.pathways
    if pathways is None:
        raise ValueError("smlp needs the cohort's gene x pathway membership (ctx.pathways)")
    if pathways.shape[0] != ctx.n_genes:
        raise ValueError(f"ctx.pathways covers {pathways.shape[0]} genes but ctx.n_genes is {ctx.n_genes}")
    return SparseMLPOmics(pathways, ctx.n_outputs)
