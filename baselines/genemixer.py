"""The ``genemixer`` baseline: ModalTune's transcriptomics encoder used alone with a task head.

The "Gene Mixer" row of the paper's Table 2 (ModalTune, ICCV 2025, Sec. 4.2: "We also test
ModalTune's transcriptomics encoder, integrating an MLP-mixer with S-MLP"); the encoder is
:class:`models.genemixer.GeneMixer` (martellab-sri/ModalTune ``GeneEncoder_Group`` with its
``final_norm`` and ``classifier``).
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import nn

from models.base import BenchModel, ModelContext
from models.genemixer import GeneMixer, GeneMixerConfig
from models.paper.omics import PAPER_N_GENES, paper_pathways
from models.registry import register_model


def paper_gene_mixer_pathways() -> torch.Tensor:
    """ModalTune's pathway membership ``bool [4987, 331]`` (gene_pathway_processed_v2.csv counts)."""
    return paper_pathways(PAPER_N_GENES)


#: ModelContext overrides of the paper configuration of every model built on the Gene Mixer:
#: ModalTune's 4,987 genes in 331 pathways (9,731 memberships), not SurvPath's 4,999.
GENE_MIXER_PAPER_CONTEXT = {"n_genes": PAPER_N_GENES, "pathways": paper_gene_mixer_pathways}


def gene_mixer_for(ctx: ModelContext, **overrides: object) -> GeneMixer:
    """The Gene Mixer of ``ctx``: its pathways, the configuration of its profile (``overrides`` on top)."""
    if ctx.pathways is None:
        raise ValueError("the Gene Mixer tokenises RNA by pathway but the context has no pathways")
    return GeneMixer(ctx.pathways, replace(GeneMixerConfig.for_profile(ctx.profile), **overrides))


class GeneMixerModel(BenchModel):
    """Gene Mixer + linear head: ``forward_features(batch) -> [B, out_dim]`` from ``batch["rna"] [B, G]``.

    The embedding is the mean of the compressed pathway tokens after LayerNorm; the head is
    ``nn.Linear(out_dim, n_outputs)`` (ModalTune's ``classifier``).
    """

    modalities = ("rna",)

    def __init__(self, encoder: GeneMixer, n_outputs: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.embed_dim = self.encoder.embed_dim
        self.head = nn.Linear(self.embed_dim, n_outputs)

    def forward_features(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.encoder(batch["rna"])


@register_model(
    "genemixer",
    label="Gene Mixer",
    modalities=("rna",),
    paper_context=GENE_MIXER_PAPER_CONTEXT,
)
def genemixer(ctx: ModelContext) -> GeneMixerModel:
    """Gene Mixer: ModalTune's pathway S-MLP + MLP-Mixer transcriptomics encoder with a linear head.

    ``paper``: latent and output width 256, 3 mixer blocks, 64 compressed tokens, expansions 0.5,
    dropout 0.25 (24,972,126 parameters with 4 outputs on ModalTune's 331 pathways / 4,987 genes).
    ``small`` narrows widths to 64 and tokens to 16; ``tiny`` to 16 and 8 (same class and depth).
    """
    return GeneMixerModel(gene_mixer_for(ctx), ctx.n_outputs)
