"""MCAT: genomic-guided co-attention between gene-family tokens and WSI patch tokens.

Reference: Chen et al., "Multimodal Co-Attention Transformer for Survival Prediction in Gigapixel
Whole Slide Images", ICCV 2021 — mahmoodlab/MCAT ``models/model_coattn.py`` (``MCAT_Surv``) and its
port in mahmoodlab/SurvPath ``models/model_MCATPathways.py`` (same layers; SurvPath's data code
builds the six family tokens from MCAT's ``signatures.csv`` intersected with the cohort's RNA genes).

Architecture (``dim`` = 256 in the reference, ``K`` gene families, 6 in the paper)::

    rna [B, G] --GeneGroupSNN--> gene tokens [B, K, dim]
    features [B, N, D] --Linear+ReLU+Dropout--> patch tokens [B, N, dim]
    co-attention: gene tokens query the patch tokens (1 head)   -> [B, K, dim]
    2-layer Transformer + gated attention pooling + rho, per modality -> [B, dim] each
    concat fusion (Linear 2dim->dim, ReLU, Linear dim->dim, ReLU) -> embedding [B, dim]
    head: Linear dim -> n_outputs

The co-attention costs O(K x N) memory, so bags of any size are fine; padded patches are excluded
from it through the bag mask, which is the only place patches meet each other.

:class:`GeneGroupSNN` (one two-layer self-normalising network per gene group, vectorised over the
groups) is shared with SurvPath, which tokenises RNA by pathway instead of by family.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from models.base import BenchModel, ModelContext, bag_mask
from models.paper.omics import SURVPATH_N_GENES, paper_families
from models.registry import register_model

PAPER_FEATURE_DIM = 1536
PROFILE_DIMS = {"paper": 256, "small": 128, "tiny": 32}


def profile_dim(profile: str) -> int:
    """Token width of the co-attention baselines for a profile (256 = the reference's width)."""
    try:
        return PROFILE_DIMS[profile]
    except KeyError:
        raise ValueError(f"unknown profile {profile!r}; valid: {sorted(PROFILE_DIMS)}") from None


def real_patch_mask(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """:func:`models.base.bag_mask`, rejecting bags without any real patch (their attention is undefined)."""
    mask = bag_mask(batch)
    if not bool(mask.any(dim=1).all()):
        raise ValueError("a bag has no real patch (its mask row is all False)")
    return mask


class GeneGroupSNN(nn.Module):
    """One two-layer SNN per gene group, all groups computed at once: ``rna [B, G] -> [B, P, H]``.

    Each group ``p`` (an MCAT gene family or a SurvPath pathway) owns the reference's
    ``SNN_Block(n_p, H)`` then ``SNN_Block(H, H)`` (Linear, ELU, AlphaDropout 0.25; mahmoodlab/SurvPath
    ``models/model_utils.py``), so the parameter count is exactly the reference's
    ``sum_p (n_p * H + H) + P * (H * H + H)``, with no padding weights.

    Layout: the groups' memberships are concatenated (``S = sum_p n_p`` rows; a gene may belong to
    several groups). ``weight1 [S, H]`` holds, for membership ``s`` of group ``p``, the column of
    group ``p``'s first Linear that multiplies that gene. The first layer is one
    ``embedding_bag`` over the ``B x P`` bags with the gene values as per-sample weights, so no
    ``[B, S, H]`` product is materialised; the second is a batched matmul with ``weight2 [P, H, H]``.
    Initialisation matches ``nn.Linear`` per group (uniform in ``+-1/sqrt(fan_in)``).
    """

    def __init__(
        self,
        gene_index: torch.Tensor,
        group_sizes: torch.Tensor,
        n_genes: int,
        hidden: int,
        dropout: float = 0.25,
    ) -> None:
        super().__init__()
        # Structure is computed on the CPU, also under a ``torch.device("meta")`` context.
        gene_index = torch.as_tensor(gene_index, dtype=torch.long, device="cpu").flatten()
        group_sizes = torch.as_tensor(group_sizes, dtype=torch.long, device="cpu").flatten()
        if group_sizes.numel() == 0:
            raise ValueError("GeneGroupSNN needs at least one gene group")
        if int(group_sizes.sum()) != gene_index.numel():
            raise ValueError("group sizes must add up to the number of memberships")
        if gene_index.numel() and (gene_index.min() < 0 or gene_index.max() >= n_genes):
            raise ValueError(f"gene indices must lie in [0, {n_genes})")
        self.n_genes = int(n_genes)
        self.hidden = int(hidden)
        self.register_buffer("gene_index", gene_index)
        self.register_buffer("group_sizes", group_sizes)
        self.register_buffer("group_offsets", torch.cumsum(group_sizes, 0) - group_sizes)
        n_groups = group_sizes.numel()
        self.weight1 = nn.Parameter(torch.empty(gene_index.numel(), hidden))
        self.bias1 = nn.Parameter(torch.empty(n_groups, hidden))
        self.weight2 = nn.Parameter(torch.empty(n_groups, hidden, hidden))
        self.bias2 = nn.Parameter(torch.empty(n_groups, hidden))
        self.dropout = nn.AlphaDropout(dropout)
        self.reset_parameters()

    @classmethod
    def from_groups(
        cls, groups: Sequence[Sequence[int]], n_genes: int, hidden: int, dropout: float = 0.25
    ) -> GeneGroupSNN:
        """Build from one gene-index sequence per group (``ModelContext.families``)."""
        sizes = torch.tensor([len(g) for g in groups], dtype=torch.long, device="cpu")
        index = torch.tensor([int(i) for g in groups for i in g], dtype=torch.long, device="cpu")
        return cls(index, sizes, n_genes, hidden, dropout)

    @classmethod
    def from_membership(cls, membership: torch.Tensor, hidden: int, dropout: float = 0.25) -> GeneGroupSNN:
        """Build from a gene x group membership ``bool [G, P]`` (``ModelContext.pathways``)."""
        membership = torch.as_tensor(membership, device="cpu").bool()
        if membership.dim() != 2:
            raise ValueError(f"membership must be [G, P], got shape {tuple(membership.shape)}")
        group, gene = membership.t().nonzero(as_tuple=True)  # sorted by group, then gene
        return cls(gene, membership.sum(0), membership.shape[0], hidden, dropout)

    @property
    def n_groups(self) -> int:
        return int(self.group_sizes.numel())

    @torch.no_grad()
    def reset_parameters(self) -> None:
        sizes = self.group_sizes.cpu()
        bound1 = torch.where(sizes > 0, sizes.clamp_min(1).float().rsqrt(), torch.zeros_like(sizes, dtype=torch.float))
        row_bound = torch.repeat_interleave(bound1, sizes)
        self.weight1.uniform_(-1.0, 1.0).mul_(row_bound.to(self.weight1)[:, None])
        self.bias1.uniform_(-1.0, 1.0).mul_(bound1.to(self.bias1)[:, None])
        bound2 = 1.0 / math.sqrt(self.hidden)
        self.weight2.uniform_(-bound2, bound2)
        self.bias2.uniform_(-bound2, bound2)

    def forward(self, rna: torch.Tensor) -> torch.Tensor:
        """``rna [B, G]`` -> group tokens ``[B, P, H]``."""
        if rna.dim() != 2 or rna.shape[1] != self.n_genes:
            raise ValueError(f"expected rna [B, {self.n_genes}], got {tuple(rna.shape)}")
        batch, n_members = rna.shape[0], self.gene_index.numel()
        values = rna[:, self.gene_index].to(self.weight1.dtype)  # [B, S]
        member = torch.arange(n_members, device=rna.device).repeat(batch)  # [B * S]
        starts = self.group_offsets[None, :] + n_members * torch.arange(batch, device=rna.device)[:, None]
        first = F.embedding_bag(
            member, self.weight1, starts.flatten(), mode="sum", per_sample_weights=values.flatten()
        )
        hidden = self.dropout(F.elu(first.view(batch, self.n_groups, self.hidden) + self.bias1))
        second = torch.einsum("bpi,poi->bpo", hidden, self.weight2) + self.bias2
        return self.dropout(F.elu(second))


class GenomicCoAttention(nn.Module):
    """MCAT's genomic-guided co-attention: gene tokens ``[B, K, E]`` query patches ``[B, N, E]``.

    ``nn.MultiheadAttention(E, num_heads=1)`` semantics (the reference's ``self.coattn``): packed
    input projection ``in_proj [3E, E]`` (Xavier-uniform, zero bias), scaled dot-product attention,
    output projection (zero bias); attention dropout 0. Written with
    ``scaled_dot_product_attention`` and a boolean key mask so padded patches get no weight.
    Memory is ``O(K x N)``.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim
        self.in_proj = nn.Linear(dim, 3 * dim)
        self.out_proj = nn.Linear(dim, dim)
        nn.init.xavier_uniform_(self.in_proj.weight)
        nn.init.zeros_(self.in_proj.bias)
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, genes: torch.Tensor, patches: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``genes [B, K, E]``, ``patches [B, N, E]``, ``mask bool [B, N]`` -> ``[B, K, E]``."""
        w_q, w_kv = self.in_proj.weight.split([self.dim, 2 * self.dim])
        b_q, b_kv = self.in_proj.bias.split([self.dim, 2 * self.dim])
        query = F.linear(genes, w_q, b_q).unsqueeze(1)  # [B, 1, K, E]
        key, value = F.linear(patches, w_kv, b_kv).unsqueeze(1).chunk(2, dim=-1)  # [B, 1, N, E]
        attended = F.scaled_dot_product_attention(query, key, value, attn_mask=mask[:, None, None, :])
        return self.out_proj(attended.squeeze(1))


class GatedAttentionPool(nn.Module):
    """Gated attention pooling of tokens ``[B, K, E] -> [B, E]``, followed by ``rho``.

    The reference's ``Attn_Net_Gated(L=E, D=E, dropout=0.25, n_classes=1)`` (tanh branch times
    sigmoid branch, then a linear score; Ilse et al. 2018), a softmax over the ``K`` tokens, the
    weighted sum, and ``path_rho`` / ``omic_rho`` (Linear, ReLU, Dropout) of mahmoodlab/MCAT.
    """

    def __init__(self, dim: int, dropout: float) -> None:
        super().__init__()
        self.attention_a = nn.Sequential(nn.Linear(dim, dim), nn.Tanh(), nn.Dropout(dropout))
        self.attention_b = nn.Sequential(nn.Linear(dim, dim), nn.Sigmoid(), nn.Dropout(dropout))
        self.attention_c = nn.Linear(dim, 1)
        self.rho = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Dropout(dropout))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        scores = self.attention_c(self.attention_a(tokens) * self.attention_b(tokens))  # [B, K, 1]
        pooled = (torch.softmax(scores, dim=1) * tokens).sum(dim=1)
        return self.rho(pooled)


def _token_transformer(dim: int, heads: int, layers: int, dropout: float) -> nn.TransformerEncoder:
    """MCAT's per-modality encoder: post-norm layers, ``dim_feedforward = 2 * dim``, ReLU."""
    layer = nn.TransformerEncoderLayer(
        d_model=dim, nhead=heads, dim_feedforward=2 * dim, dropout=dropout, activation="relu", batch_first=True
    )
    return nn.TransformerEncoder(layer, num_layers=layers, enable_nested_tensor=False)


class MCAT(BenchModel):
    """MCAT (Chen et al., ICCV 2021; mahmoodlab/MCAT ``MCAT_Surv``) with concat fusion.

    ``forward_features`` returns the fused patient embedding ``[B, dim]`` (the reference's ``mm``
    output); ``head`` is the reference's ``classifier``. ``families`` lists, per gene family, the
    indices of its genes in the cohort's gene order.
    """

    modalities = ("wsi", "rna")

    def __init__(
        self,
        feature_dim: int,
        families: Sequence[Sequence[int]],
        n_genes: int,
        n_outputs: int,
        dim: int = 256,
        heads: int = 8,
        layers: int = 2,
        dropout: float = 0.25,
    ) -> None:
        super().__init__()
        self.embed_dim = dim
        self.wsi_net = nn.Sequential(nn.Linear(feature_dim, dim), nn.ReLU(), nn.Dropout(0.25))
        self.gene_tokens = GeneGroupSNN.from_groups(families, n_genes, dim, dropout=0.25)
        self.coattn = GenomicCoAttention(dim)
        self.path_transformer = _token_transformer(dim, heads, layers, dropout)
        self.path_pool = GatedAttentionPool(dim, dropout)
        self.omic_transformer = _token_transformer(dim, heads, layers, dropout)
        self.omic_pool = GatedAttentionPool(dim, dropout)
        self.fusion = nn.Sequential(nn.Linear(2 * dim, dim), nn.ReLU(), nn.Linear(dim, dim), nn.ReLU())
        self.head = nn.Linear(dim, n_outputs)

    def forward_features(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """``features [B, N, D]`` (+ ``mask [B, N]``), ``rna [B, G]`` -> embedding ``[B, dim]``."""
        patches = self.wsi_net(batch["features"])  # [B, N, dim]
        genes = self.gene_tokens(batch["rna"])  # [B, K, dim]
        guided = self.coattn(genes, patches, real_patch_mask(batch))  # [B, K, dim]
        h_path = self.path_pool(self.path_transformer(guided))
        h_omic = self.omic_pool(self.omic_transformer(genes))
        return self.fusion(torch.cat([h_path, h_omic], dim=-1))


@register_model(
    "mcat",
    label="MCAT",
    modalities=("wsi", "rna"),
    paper_context={"feature_dim": PAPER_FEATURE_DIM, "n_genes": SURVPATH_N_GENES, "families": paper_families},
)
def mcat(ctx: ModelContext) -> MCAT:
    """MCAT: gene-family SNN tokens guide a co-attention over WSI patches, concat fusion (ICCV 2021).

    Paper profile: the reference widths (tokens 256, 8-head 2-layer Transformers with feed-forward
    512, dropout 0.25); with SurvPath's families (MCAT ``signatures.csv`` intersected with the 4,999
    combine genes: 53/173/216/252/387/200 genes) and D = 1536 it has 4,082,694 parameters for 4
    outputs. ``small`` / ``tiny`` narrow every token width to 128 / 32 (feed-forward 2x width,
    heads unchanged); the layers stay the same.
    """
    if not ctx.families:
        raise ValueError("mcat tokenises RNA by the MCAT gene families but the context has none")
    return MCAT(
        feature_dim=ctx.feature_dim,
        families=ctx.families,
        n_genes=ctx.n_genes,
        n_outputs=ctx.n_outputs,
        dim=profile_dim(ctx.profile),
    )
