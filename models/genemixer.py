"""Gene Mixer: ModalTune's transcriptomics encoder (pathway S-MLP + MLP-Mixer + token compression).

ModalTune (ICCV 2025, Sec. 3.2 and Table 6; martellab-sri/ModalTune, class ``GeneEncoder_Group`` in
``models/genomic_utils/gene_encoder.py`` configured by ``model_configs/other_configs.py``) turns the
bulk transcriptome ``rna [B, G]`` into a short sequence of pathway tokens in three stages:

1. **Pathway S-MLP** (:class:`PathwaySNN`): the genes of each of the ``P`` pathways go through their
   own two self-normalising blocks (SNN, Klambauer et al.; Linear -> ELU -> AlphaDropout), the first
   ``g_p -> latent`` and the second ``latent -> latent``, giving one token per pathway
   ``[B, P, latent]``. A gene in several pathways feeds each of them.
2. **MLP-Mixer** (Tolstikhin et al.): ``depth`` pre-norm residual blocks alternating a token-mixing
   MLP across the ``P`` pathway tokens (hidden ``int(P * token_expansion)``) and a channel-mixing
   MLP (hidden ``int(latent * channel_expansion)``), GELU and dropout, then LayerNorm and a
   ``latent -> out_dim`` projection.
3. **Pathway compression**: a linear map over the token axis ``P -> n_tokens`` (64 in the paper).

:meth:`GeneMixer.forward_tokens` returns these compressed tokens ``[B, n_tokens, out_dim]`` (what
ModalTune's Modal Adapter attends to); :meth:`GeneMixer.forward` returns their mean, LayerNorm-ed
when ``pool_norm`` (the ``final_norm`` of the standalone baseline), as the patient embedding.

The paper configuration is :data:`PAPER_GENE_MIXER`. With ModalTune's 331 pathways over 4,987 genes
(9,731 gene-pathway memberships) the encoder plus a 4-way head holds 24,972,126 parameters.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from models.names import check_profile


@dataclass(frozen=True)
class GeneMixerConfig:
    """Widths and regularisation of a :class:`GeneMixer` (the number of pathways comes from data).

    ``latent_dim``: pathway-token width inside the S-MLP and the mixer; ``out_dim``: token width
    after the final projection; ``n_tokens``: pathways after compression; ``token_expansion`` /
    ``channel_expansion``: hidden-width ratios of the token- and channel-mixing MLPs; ``pool_norm``:
    LayerNorm the pooled embedding (the standalone model's ``final_norm``; ModalTune, which consumes
    the tokens, builds the encoder without it).
    """

    latent_dim: int = 256
    out_dim: int = 256
    depth: int = 3
    n_tokens: int = 64
    token_expansion: float = 0.5
    channel_expansion: float = 0.5
    dropout: float = 0.25
    pool_norm: bool = True

    @classmethod
    def for_profile(cls, profile: str) -> GeneMixerConfig:
        """The paper configuration, or a narrower one for ``small`` (64 wide, 16 tokens) / ``tiny``
        (16 wide, 8 tokens); depth, expansions and dropout are the paper's in every profile."""
        if check_profile(profile) == "small":
            return replace(PAPER_GENE_MIXER, latent_dim=64, out_dim=64, n_tokens=16)
        if profile == "tiny":
            return replace(PAPER_GENE_MIXER, latent_dim=16, out_dim=16, n_tokens=8)
        return PAPER_GENE_MIXER


#: ModalTune's release: ``set_genomic_config`` (latent 256, depth 3, expansions 0.5, dropout 0.25,
#: 64 final groups) with ``output_dim`` 256 for the standalone Gene Mixer baseline (Table 6).
PAPER_GENE_MIXER = GeneMixerConfig()


class PathwaySNN(nn.Module):
    """Per-pathway two-block SNN over a gene x pathway membership, computed for all pathways at once.

    ``pathways``: ``bool [G, P]``. ``forward(rna [B, G]) -> [B, P, dim]``. Block 1 is a sparse
    linear map holding one ``dim``-vector per gene-pathway membership (``[M, dim]``, exactly the
    weights of ModalTune's per-pathway ``nn.Linear(g_p, dim)``) plus a bias per pathway, evaluated as
    a weighted ``embedding_bag`` sum (no ``[B, M, dim]`` intermediate); block 2 is a batched
    per-pathway ``dim x dim`` linear map. Initialisation follows ``nn.Linear``'s default
    (uniform with bound ``1/sqrt(fan_in)``, ``fan_in = g_p`` for block 1).
    """

    def __init__(self, pathways: torch.Tensor, dim: int, dropout: float) -> None:
        super().__init__()
        # Structure is computed on the CPU, also under a ``torch.device("meta")`` context.
        membership = torch.as_tensor(pathways, device="cpu").bool()
        if membership.ndim != 2:
            raise ValueError(f"pathways must be a bool [G, P] membership, got shape {tuple(membership.shape)}")
        self.n_genes, self.n_pathways = (int(s) for s in membership.shape)
        pathway_index, gene_index = membership.T.nonzero(as_tuple=True)  # sorted by pathway
        sizes = torch.bincount(pathway_index, minlength=self.n_pathways)
        self.register_buffer("gene_index", gene_index, persistent=False)
        self.register_buffer("bag_offsets", torch.cumsum(sizes, 0) - sizes, persistent=False)
        self.register_buffer("pathway_sizes", sizes, persistent=False)

        n_members = int(gene_index.numel())
        self.weight1 = nn.Parameter(torch.empty(n_members, dim))
        self.bias1 = nn.Parameter(torch.empty(self.n_pathways, dim))
        self.weight2 = nn.Parameter(torch.empty(self.n_pathways, dim, dim))
        self.bias2 = nn.Parameter(torch.empty(self.n_pathways, dim))
        self.act = nn.ELU()
        self.drop1 = nn.AlphaDropout(dropout)
        self.drop2 = nn.AlphaDropout(dropout)
        self.reset_parameters(pathway_index)

    @torch.no_grad()
    def reset_parameters(self, pathway_index: torch.Tensor) -> None:
        bound1 = self.pathway_sizes.clamp_min(1).double().rsqrt().float()  # [P]
        self.weight1.uniform_(-1.0, 1.0).mul_(bound1[pathway_index, None])
        self.bias1.uniform_(-1.0, 1.0).mul_(bound1[:, None])
        bound2 = 1.0 / math.sqrt(self.weight2.shape[1])
        self.weight2.uniform_(-bound2, bound2)
        self.bias2.uniform_(-bound2, bound2)

    def forward(self, rna: torch.Tensor) -> torch.Tensor:
        if rna.ndim != 2 or rna.shape[1] != self.n_genes:
            raise ValueError(f"rna must be [B, {self.n_genes}], got {tuple(rna.shape)}")
        batch, n_members = rna.shape[0], self.weight1.shape[0]
        values = rna[:, self.gene_index].to(self.weight1.dtype)  # [B, M]
        members = torch.arange(n_members, device=rna.device).repeat(batch)  # [B * M]
        offsets = (self.bag_offsets[None, :] + n_members * torch.arange(batch, device=rna.device)[:, None])
        h = F.embedding_bag(
            members, self.weight1, offsets.reshape(-1), mode="sum", per_sample_weights=values.reshape(-1)
        ).view(batch, self.n_pathways, -1)
        h = self.drop1(self.act(h + self.bias1))
        h = torch.einsum("bpi,pio->bpo", h, self.weight2) + self.bias2
        return self.drop2(self.act(h))


def _mlp(dim: int, hidden: int, dropout: float) -> nn.Sequential:
    """MLP-Mixer feed-forward ``dim -> hidden -> dim`` with GELU and dropout after each linear."""
    return nn.Sequential(
        nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, dim), nn.Dropout(dropout)
    )


class MixerBlock(nn.Module):
    """One MLP-Mixer block on ``[B, T, D]``: pre-norm residual token mixing, then channel mixing.

    The token-mixing MLP acts on the token axis (ModalTune writes it as a kernel-1 ``Conv1d`` over
    the ``T`` channels; a ``Linear`` on the transposed tensor is the same map and parameter count).
    """

    def __init__(self, n_tokens: int, dim: int, token_expansion: float, channel_expansion: float, dropout: float):
        super().__init__()
        self.token_norm = nn.LayerNorm(dim)
        self.token_mlp = _mlp(n_tokens, int(n_tokens * token_expansion), dropout)
        self.channel_norm = nn.LayerNorm(dim)
        self.channel_mlp = _mlp(dim, int(dim * channel_expansion), dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.token_mlp(self.token_norm(x).transpose(1, 2)).transpose(1, 2)
        return x + self.channel_mlp(self.channel_norm(x))


class GeneMixer(nn.Module):
    """ModalTune's Gene Mixer over the pathways of ``pathways`` (``bool [G, P]``).

    ``forward_tokens(rna [B, G]) -> [B, n_tokens, out_dim]`` (compressed pathway tokens);
    ``forward(rna [B, G]) -> [B, out_dim]`` (their mean, LayerNorm-ed when ``config.pool_norm``).
    ``embed_dim = out_dim``. Reference: ModalTune paper Sec. 3.2 / Table 6, martellab-sri/ModalTune
    ``GeneEncoder_Group``.
    """

    def __init__(self, pathways: torch.Tensor, config: GeneMixerConfig = PAPER_GENE_MIXER) -> None:
        super().__init__()
        self.config = config
        self.pathway_encoder = PathwaySNN(pathways, config.latent_dim, config.dropout)
        n_pathways = self.pathway_encoder.n_pathways
        self.mixer = nn.Sequential(
            *(
                MixerBlock(n_pathways, config.latent_dim, config.token_expansion, config.channel_expansion, config.dropout)
                for _ in range(config.depth)
            )
        )
        self.mixer_norm = nn.LayerNorm(config.latent_dim)
        self.project = nn.Linear(config.latent_dim, config.out_dim)
        self.compress = nn.Linear(n_pathways, config.n_tokens)
        self.pool_norm = nn.LayerNorm(config.out_dim) if config.pool_norm else nn.Identity()
        self.embed_dim = config.out_dim
        self.n_tokens = config.n_tokens

    @property
    def n_genes(self) -> int:
        return self.pathway_encoder.n_genes

    def forward_tokens(self, rna: torch.Tensor) -> torch.Tensor:
        """Compressed pathway tokens ``[B, n_tokens, out_dim]`` from ``rna [B, G]``."""
        tokens = self.mixer(self.pathway_encoder(rna))  # [B, P, latent]
        tokens = self.project(self.mixer_norm(tokens))  # [B, P, out]
        return self.compress(tokens.transpose(1, 2)).transpose(1, 2)

    def pool(self, tokens: torch.Tensor) -> torch.Tensor:
        """Patient embedding ``[B, out_dim]`` from tokens ``[B, T, out_dim]`` (mean, then norm)."""
        return self.pool_norm(tokens.mean(dim=1))

    def forward(self, rna: torch.Tensor) -> torch.Tensor:
        return self.pool(self.forward_tokens(rna))
