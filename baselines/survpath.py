"""SurvPath: pathway tokens and WSI patch tokens fused by one sparse cross-modal attention layer.

Reference: Jaume et al., "Modeling Dense Multimodal Interactions Between Biological Pathways and
Histology for Survival Prediction", CVPR 2024 — mahmoodlab/SurvPath ``models/model_SurvPath.py``
(``SurvPath``) and ``models/layers/cross_attention.py`` (``MMAttentionLayer``, ``FeedForward``).

Architecture (``dim`` = 256 in the reference, ``P`` pathways, 331 in the paper)::

    rna [B, G] --GeneGroupSNN (one 2-layer SNN per pathway)--> pathway tokens [B, P, dim]
    features [B, N, D] --Linear--> patch tokens [B, N, dim]
    LayerNorm, then one attention head of width dim/2 (no output projection, no residual):
        pathway queries attend to pathways and patches   (P x (P + N) scores)
        patch queries attend to pathways only            (N x P scores; patch-patch excluded)
    FeedForward (LayerNorm, Linear, GELU, Dropout 0.1, Linear) then LayerNorm, width dim/2
    embedding = [mean of pathway tokens, mean of (real) patch tokens]  [B, dim]
    head: Linear dim -> dim/4, ReLU, Linear -> n_outputs

The attention never forms an N x N patch matrix, so its memory is O(N x P).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from baselines.mcat import PAPER_FEATURE_DIM, GeneGroupSNN, profile_dim, real_patch_mask
from models.base import BenchModel, ModelContext
from models.paper.omics import SURVPATH_N_GENES, paper_pathways
from models.registry import register_model


class PathwayHistologyAttention(nn.Module):
    """SurvPath's ``MMAttentionLayer``: pre-LayerNorm, bias-free packed ``to_qkv``, ``heads`` heads.

    Inputs ``pathways [B, P, E]`` and ``patches [B, N, E]`` (one token sequence in the reference,
    pathways first); outputs ``([B, P, heads * dim_head], [B, N, heads * dim_head])``. Pathway
    queries take a softmax over all ``P + N`` keys (padded patches masked out); patch queries take a
    softmax over the ``P`` pathway keys only. The reference configuration is ``heads = 1``,
    ``dim_head = E / 2``, without the optional depth-wise convolution residual (``residual=False``).
    """

    def __init__(self, dim: int, heads: int = 1, dim_head: int | None = None) -> None:
        super().__init__()
        self.heads = heads
        self.dim_head = dim_head if dim_head is not None else dim // 2
        self.inner_dim = heads * self.dim_head
        self.norm = nn.LayerNorm(dim)
        self.to_qkv = nn.Linear(dim, 3 * self.inner_dim, bias=False)

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.unflatten(-1, (self.heads, self.dim_head)).transpose(1, 2)  # [B, T, h*d] -> [B, h, T, d]

    @staticmethod
    def _merge_heads(x: torch.Tensor) -> torch.Tensor:
        return x.transpose(1, 2).flatten(-2)  # [B, h, T, d] -> [B, T, h*d]

    def forward(
        self, pathways: torch.Tensor, patches: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        n_pathways = pathways.shape[1]
        tokens = self.norm(torch.cat([pathways, patches], dim=1))
        query, key, value = (self._split_heads(t) for t in self.to_qkv(tokens).chunk(3, dim=-1))
        keep = torch.cat([mask.new_ones(mask.shape[0], n_pathways), mask], dim=1)  # [B, P + N]
        out_pathways = F.scaled_dot_product_attention(
            query[:, :, :n_pathways], key, value, attn_mask=keep[:, None, None, :]
        )
        out_patches = F.scaled_dot_product_attention(
            query[:, :, n_pathways:], key[:, :, :n_pathways], value[:, :, :n_pathways]
        )
        return self._merge_heads(out_pathways), self._merge_heads(out_patches)


class SurvPath(BenchModel):
    """SurvPath (Jaume et al., CVPR 2024; mahmoodlab/SurvPath ``SurvPath``).

    ``pathways`` is the cohort's gene x pathway membership ``bool [G, P]``; each pathway gets its
    own SNN over its genes (vectorised in :class:`baselines.mcat.GeneGroupSNN`, parameter count as
    the reference's per-pathway ``SNN_Block`` stacks). ``forward_features`` returns the
    concatenated modality means ``[B, dim]``; ``head`` is the reference's ``to_logits``.
    """

    modalities = ("wsi", "rna")

    def __init__(
        self,
        feature_dim: int,
        pathways: torch.Tensor,
        n_outputs: int,
        dim: int = 256,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        if dim % 4:
            raise ValueError(f"SurvPath's width must be divisible by 4, got {dim}")
        inner = dim // 2
        self.embed_dim = dim
        self.pathway_tokens = GeneGroupSNN.from_membership(pathways, hidden=dim, dropout=0.25)
        self.wsi_projection = nn.Linear(feature_dim, dim)
        self.cross_attention = PathwayHistologyAttention(dim, heads=1, dim_head=inner)
        self.feed_forward = nn.Sequential(
            nn.LayerNorm(inner), nn.Linear(inner, inner), nn.GELU(), nn.Dropout(dropout), nn.Linear(inner, inner)
        )
        self.norm = nn.LayerNorm(inner)
        self.head = nn.Sequential(nn.Linear(dim, dim // 4), nn.ReLU(), nn.Linear(dim // 4, n_outputs))

    def encode_tokens(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Post-attention tokens: pathways ``[B, P, dim/2]`` and patches ``[B, N, dim/2]``.

        Padded patch positions carry finite values that :meth:`forward_features` ignores.
        """
        pathways = self.pathway_tokens(batch["rna"])
        patches = self.wsi_projection(batch["features"])
        out_pathways, out_patches = self.cross_attention(pathways, patches, real_patch_mask(batch))
        return self.norm(self.feed_forward(out_pathways)), self.norm(self.feed_forward(out_patches))

    def forward_features(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """``features [B, N, D]`` (+ ``mask [B, N]``), ``rna [B, G]`` -> embedding ``[B, dim]``."""
        pathways, patches = self.encode_tokens(batch)
        mask = real_patch_mask(batch)
        patch_sum = torch.where(mask[..., None], patches, torch.zeros_like(patches)).sum(dim=1)
        patch_mean = patch_sum / mask.sum(dim=1, keepdim=True).to(patches.dtype)
        return torch.cat([pathways.mean(dim=1), patch_mean], dim=-1)


@register_model(
    "survpath",
    label="SurvPath",
    modalities=("wsi", "rna"),
    paper_context={"feature_dim": PAPER_FEATURE_DIM, "n_genes": SURVPATH_N_GENES, "pathways": paper_pathways},
)
def survpath(ctx: ModelContext) -> SurvPath:
    """SurvPath: per-pathway SNN tokens and WSI patches in one pathway-centred attention (CVPR 2024).

    Paper profile: the reference widths (tokens 256, one attention head of width 128, feed-forward
    width 128, per-pathway SNNs 256-256); with SurvPath's 331 combine_comps.csv pathways (9,745
    memberships over 4,999 genes) and D = 1536 it has 24,899,140 parameters for 4 outputs.
    ``small`` / ``tiny`` narrow the token width to 128 / 32 (attention and feed-forward to half of
    it, the logit MLP's hidden layer to a quarter); the layers stay the same.
    """
    pathways = ctx.pathways
    if pathways is None:
        raise ValueError("survpath tokenises RNA by pathway but the context has no pathways")
    if pathways.shape[0] != ctx.n_genes:
        raise ValueError(f"pathways cover {pathways.shape[0]} genes but the context has n_genes={ctx.n_genes}")
    return SurvPath(
        feature_dim=ctx.feature_dim,
        pathways=pathways,
        n_outputs=ctx.n_outputs,
        dim=profile_dim(ctx.profile),
    )
