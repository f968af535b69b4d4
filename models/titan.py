"""TITAN slide encoder (the vision tower of MahmoodLab's TITAN) in plain PyTorch.

Reference: Ding et al., "Multimodal Whole Slide Foundation Model for Pathology" (TITAN, 2024); the
Hugging Face remote code ``MahmoodLab/TITAN`` (``configuration_titan.py``, ``modeling_titan.py``,
``vision_transformer.py``), read as vendored in DIAGNijmegen/unicorn_baseline under
``src/unicorn_baseline/vision/pathology/titan/``.  ModalTune (ICCV 2025, martellab-sri/ModalTune
``models/aggregators/titan_adapter.py``) runs the same encoder frozen and interleaves its Modal
Adapters with pairs of these layers (interaction indexes ``[[0, 1], [2, 3], [4, 5]]``), hence the
iterable layer stack (:meth:`TitanSlideEncoder.embed`, ``layers``, ``final_norm``, :meth:`pool`).

Data flow, for CONCH v1.5 tile features ``[B, N, 768]`` (512-px tiles at 20x) and level-0 pixel
coordinates ``[B, N, 2]``::

    tiles -> grid cells: floor((coords - min coords of the bag) / patch_size_lv0)
    one token per occupied cell, in raster order; tiles sharing a cell are summed,
    cells whose summed features are all zero are dropped (the reference's background)   [B, L, 768]
    patch_embed: Linear(768, 768) + GELU                                                  [B, L, 768]
    prepend cls_token (no positional embedding: position enters through ALiBi only)       [B, 1 + L, 768]
    6 x pre-norm ViT block (12 heads, MLP 3072, GELU, LayerNorm eps 1e-6),
        attention logits + 2-D ALiBi bias  -slope_h * ||cell_i - cell_j||_2
        (0 in the CLS row and column; slopes of Press et al. for 12 heads)
    norm: LayerNorm(768, eps 1e-6)                                                 tokens [B, 1 + L, 768]
    attn_pool_contrastive: one learned query, 8-head cross-attention over all tokens     [B, 768]

The slide embedding is the contrastive attentional pooler's output without the final ``proj``:
TITAN's ``encode_slide_from_patch_features`` calls the vision tower with ``no_proj=True``, and
ModalTune's adapter uses the same pooled vector (``forward_attn_pool``).  It is *not* the CLS
token (``global_pool="token"`` only matters for the unused iBOT head).  ``proj`` (the image side of
TITAN's text alignment) is reachable through :meth:`TitanSlideEncoder.project`, the 128-query
captioning pooler ``attn_pool`` through :meth:`TitanSlideEncoder.caption_tokens`; both belong to the
vision tower's 48,539,904 parameters and its checkpoint.

Grid construction follows the reference's ``preprocess_features`` exactly, vectorised: one grid
origin per bag (the minimum real tile coordinate per axis), cell = floor division by the level-0
patch size (``patch_size_lv0``: 1024 for 40x slides, 512 for 20x; ModalTune always passes 1024),
no padding cells, no cropping, no cap on the number of tokens (the reference encodes the whole
slide).  Token order is the reference's raster order (first coordinate major); outputs are
invariant to it.  For a single bag this is the reference's batch-size-1 path, which drops
background cells; a padded batch masks them instead, with the same result.

ALiBi bias memory: the reference materialises the full ``[1, H, T, T]`` float32 bias (plus numpy
float64 distance tables) and shares it across layers: 12 GiB at 16,384 tiles.  Here the bias is
built from the cell positions in blocks of query rows, each under
:attr:`TitanConfig.max_bias_elements`; when the full bias fits in one block it is built once and
shared across layers, exactly as the reference, otherwise each layer rebuilds its blocks (one
broadcast multiply of a head-independent distance table by the slopes), so inference memory stays
bounded.  Under autograd the attention keeps its bias for the backward pass, so training through a
blocked encoder holds every layer's blocks, as it would hold the scores.

At the paper configuration the encoder has 48,539,904 parameters and its ``state_dict`` has exactly
the 96 keys of the ``vision_encoder.`` part of the official ``model.safetensors``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from models.flex_alibi import alibi_score_mod, flex_alibi_attention, flex_unavailable_reason
from models.names import check_profile
from models.checkpoint import check_checkpoint, load_checkpoint, load_state_strictly

__all__ = [
    "PAPER_PARAMETERS",
    "VISION_PREFIX",
    "AlibiBias",
    "AttentionalPooler",
    "SlideGrid",
    "TitanAttention",
    "TitanBlock",
    "TitanConfig",
    "TitanSlideEncoder",
    "alibi_slopes",
    "load_titan_weights",
    "tile_grid",
]

logger = logging.getLogger(__name__)

PAPER_PARAMETERS = 48_539_904
# Prefix of the vision tower's tensors in the full TITAN checkpoint (``Titan.vision_encoder``).
VISION_PREFIX = "vision_encoder."


@dataclass(frozen=True)
class TitanConfig:
    """Sizes of the TITAN vision tower; :meth:`paper` is ``TitanVisionConfig`` of the official model.

    ``feature_dim`` is the tile-feature width (``mlp_patch_embed_dim``, CONCH v1.5: 768);
    ``pool_heads`` / ``pool_queries`` size the captioning pooler (the contrastive pooler always has
    one query); ``norm_eps`` is the ViT's LayerNorm eps, ``pool_norm_eps`` that of the poolers
    (``nn.LayerNorm`` default).  ``patch_size_lv0`` is the tile size in level-0 pixels used to
    build the grid when a call does not give one.  ``max_bias_elements`` bounds one block of the
    ALiBi bias (``B x H x rows x tokens`` floats; the default is 1 GiB in float32, which holds the
    whole bias of a 4,096-tile bag).  ``flex_min_tokens``: inference over bags of at least this many
    tokens computes the bias inside a compiled FlexAttention kernel instead (:mod:`models.flex_alibi`);
    smaller bags, and every pass under autograd, use SDPA with the bias blocks.  ``None`` (default):
    never, because on this project's 2-core CPU the compiled kernel is slower than SDPA reading the
    bias (2 layers, 5,000 tiles: 3.71 s vs 2.27 s).
    The reference uses no dropout and no stochastic depth, so there are none here.
    """

    feature_dim: int = 768
    embed_dim: int = 768
    depth: int = 6
    num_heads: int = 12
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    pool_heads: int = 8
    pool_queries: int = 128
    patch_size_lv0: int = 1024
    norm_eps: float = 1e-6
    pool_norm_eps: float = 1e-5
    max_bias_elements: int = 2**28
    flex_min_tokens: int | None = None

    def __post_init__(self) -> None:
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim {self.embed_dim} must be divisible by num_heads {self.num_heads}")
        if self.embed_dim % self.pool_heads:
            raise ValueError(f"embed_dim {self.embed_dim} must be divisible by pool_heads {self.pool_heads}")
        if min(self.depth, self.pool_queries, self.patch_size_lv0, self.max_bias_elements) < 1:
            raise ValueError("depth, pool_queries, patch_size_lv0 and max_bias_elements must be positive")
        if self.flex_min_tokens is not None and self.flex_min_tokens < 1:
            raise ValueError("flex_min_tokens must be positive or None")

    @property
    def mlp_dim(self) -> int:
        return int(self.embed_dim * self.mlp_ratio)

    @classmethod
    def paper(cls) -> TitanConfig:
        """The published vision tower: 6 layers, width 768, 12 heads, MLP 3072, 8-head poolers."""
        return cls()

    @classmethod
    def for_profile(cls, profile: str) -> TitanConfig:
        """``paper``; ``small`` = 2 layers of width 64 (4 heads, 4-head poolers, 16 caption queries);
        ``tiny`` = 1 layer of width 64, 4 heads, 4-head poolers, 8 caption queries.  The input stays
        768-d CONCH v1.5 features in every profile."""
        paper = cls.paper()
        if check_profile(profile) == "paper":
            return paper
        if profile == "small":
            return replace(paper, depth=2, embed_dim=64, num_heads=4, pool_heads=4, pool_queries=16)
        return replace(paper, depth=1, embed_dim=64, num_heads=4, pool_heads=4, pool_queries=8)  # tiny


def alibi_slopes(num_heads: int, device: torch.device | str | None = None) -> torch.Tensor:
    """Per-head ALiBi slopes ``float32 [H]`` (Press et al., ICLR 2022), as TITAN's ``get_alibi``.

    For ``H`` a power of two: ``2^(-8/H), 2^(-16/H), ..., 2^(-8)``.  Otherwise the slopes of the
    largest power of two ``m < H`` followed by every other slope of ``2m`` (the 1st, 3rd, ...), the
    first ``H - m`` of them.  TITAN's 12 heads get ``2^-1 .. 2^-8`` then ``2^-0.5, 2^-1.5, 2^-2.5,
    2^-3.5``.
    """
    if num_heads < 1:
        raise ValueError(f"num_heads must be positive, got {num_heads}")

    def geometric(n: int) -> list[float]:
        start = 2.0 ** (-8.0 / n)
        return [start ** (i + 1) for i in range(n)]

    base = 2 ** int(math.floor(math.log2(num_heads)))
    slopes = geometric(base) + geometric(2 * base)[0::2][: num_heads - base]
    return torch.tensor(slopes, dtype=torch.float32, device=device)


class SlideGrid(NamedTuple):
    """Tiles regridded into one token per occupied grid cell (output of :func:`tile_grid`).

    ``features [B, L, F]`` summed features per cell, ``cells long [B, L, 2]`` the cell's grid
    position (row = first coordinate, column = second), ``mask bool [B, L]`` True for a real,
    non-empty cell.  Real cells come first, in raster order; the rest is padding.
    """

    features: torch.Tensor
    cells: torch.Tensor
    mask: torch.Tensor


def tile_grid(
    features: torch.Tensor, coords: torch.Tensor, patch_size_lv0: int, mask: torch.Tensor | None = None
) -> SlideGrid:
    """Put each bag's tiles on TITAN's 2-D grid, vectorised over tiles and bags.

    ``features [B, N, F]``, ``coords [B, N, 2]`` level-0 pixel ``(x, y)``, ``mask bool [B, N]``
    (True = real tile) -> :class:`SlideGrid` with ``L`` = the largest number of occupied cells.

    As the reference's ``preprocess_features``: the grid origin is the per-axis minimum of the bag's
    real coordinates; a tile's cell is ``floor((coords - origin) / patch_size_lv0)``; tiles falling
    in one cell are summed (``index_add_`` onto the grid); a cell whose summed features are all zero
    is background and dropped; cells are ordered row-major by (first, second) coordinate.  Instead of
    the dense ``H x W`` grid, tiles are sorted by cell key and runs of equal keys are summed.
    """
    batch, n_tiles, dim = features.shape
    if n_tiles == 0:
        empty = torch.zeros(batch, 0, dtype=torch.bool, device=features.device)
        return SlideGrid(features, torch.zeros(batch, 0, 2, dtype=torch.long, device=features.device), empty)
    real = torch.ones(batch, n_tiles, dtype=torch.bool, device=features.device) if mask is None else mask.bool()
    pos = coords.to(torch.float64)
    origin = torch.where(real.unsqueeze(-1), pos, math.inf).amin(dim=1, keepdim=True)
    cells = torch.floor((pos - origin) / patch_size_lv0)
    cells = torch.where(real.unsqueeze(-1), cells, 0.0).long()

    width = int(cells[..., 1].amax()) + 1
    sentinel = (int(cells[..., 0].amax()) + 1) * width  # above every real cell's key
    key = (cells[..., 0] * width + cells[..., 1]).masked_fill(~real, sentinel)
    key, order = key.sort(dim=1, stable=True)
    present = key != sentinel

    starts = torch.ones_like(present)
    starts[:, 1:] = key[:, 1:] != key[:, :-1]
    slot = starts.cumsum(dim=1) - 1  # [B, N] index of each sorted tile's cell
    n_cells = (starts & present).sum(dim=1)
    length = int(n_cells.max())

    sorted_feats = features.gather(1, order.unsqueeze(-1).expand(-1, -1, dim))
    sorted_feats = torch.where(present.unsqueeze(-1), sorted_feats, 0.0)
    sorted_cells = cells.gather(1, order.unsqueeze(-1).expand(-1, -1, 2))
    # Padding tiles sit in the last run (slot n_cells[b]); send them past the kept length.
    slot = torch.where(present, slot, n_tiles)
    index = slot.unsqueeze(-1)
    grid_feats = features.new_zeros(batch, n_tiles + 1, dim).scatter_add_(1, index.expand(-1, -1, dim), sorted_feats)
    grid_cells = cells.new_zeros(batch, n_tiles + 1, 2).scatter_(1, index.expand(-1, -1, 2), sorted_cells)
    grid_feats, grid_cells = grid_feats[:, :length], grid_cells[:, :length]
    occupied = torch.arange(length, device=features.device) < n_cells.unsqueeze(1)
    return SlideGrid(grid_feats, grid_cells, occupied & (grid_feats != 0).any(dim=-1))


class AlibiBias:
    """The 2-D ALiBi attention bias of one batch of slides, materialised block by block.

    Built from the tile tokens' grid cells ``[B, L, 2]``, the head slopes ``[H]`` and the token mask
    ``bool [B, 1 + L]`` (token 0 is CLS; ``None`` = all real).  For tokens ``i, j``:
    ``bias[b, h, i, j] = -slope_h * ||cell_i - cell_j||_2`` between tiles, ``0`` in the CLS row and
    column (TITAN's ``get_alibi``), and ``-inf`` for a masked key.  Queries are never fully masked
    (the CLS key is always real).

    :meth:`blocks` yields ``(start, stop, bias [B, H, rows, 1 + L])`` for consecutive query rows,
    each block at most ``max_elements`` floats.  When the whole bias fits in one block it is computed
    once and shared by every layer (as the reference's full bias is); otherwise each layer rebuilds
    its blocks from the head-independent distance table ``[B, 1 + L, 1 + L]`` (masked keys at
    ``+inf``), itself kept when it fits in ``max_elements`` and rebuilt per block when it does not.
    """

    def __init__(
        self,
        cells: torch.Tensor,
        slopes: torch.Tensor,
        token_mask: torch.Tensor | None = None,
        max_elements: int = TitanConfig.max_bias_elements,
        flex_min_tokens: int | None = TitanConfig.flex_min_tokens,
    ) -> None:
        batch, n_tiles, _ = cells.shape
        self.flex_min_tokens = flex_min_tokens
        self.n_tokens = n_tiles + 1
        self.token_mask = None if token_mask is None or bool(token_mask.all()) else token_mask.bool()
        self.slopes = slopes.to(device=cells.device, dtype=torch.float32)
        cls_pos = torch.zeros(batch, 1, 2, dtype=torch.float32, device=cells.device)
        self.positions = torch.cat([cls_pos, cells.to(torch.float32)], dim=1)  # [B, T, 2]
        self.max_elements = max_elements
        self.rows = max(1, min(self.n_tokens, max_elements // max(1, batch * slopes.numel() * self.n_tokens)))
        self._keep_distances = batch * self.n_tokens * self.n_tokens <= max_elements
        self._distances: torch.Tensor | None = None
        self._full: dict[torch.dtype, torch.Tensor] = {}
        self._buffer: torch.Tensor | None = None
        self._scratch: torch.Tensor | None = None
        self._score_mod = None  # FlexAttention's bias function, built on first use

    def _distance_rows(self, start: int, stop: int, scratch: torch.Tensor | None = None) -> torch.Tensor:
        """``[B, stop - start, T]``: Euclidean cell distances of rows ``start:stop``, 0 in the CLS row
        and column, ``+inf`` for masked keys; written into ``scratch [2, B, >= rows, T]`` if given."""
        query, keys = self.positions[:, start:stop], self.positions
        dx, dy = (
            torch.sub(query[..., axis].unsqueeze(2), keys[..., axis].unsqueeze(1),
                      out=None if scratch is None else scratch[axis, :, : stop - start])
            for axis in (0, 1)
        )
        dist = dx.square_().add_(dy.square_()).sqrt_()
        dist[:, :, 0] = 0.0  # CLS column
        if start == 0:
            dist[:, 0] = 0.0  # CLS row
        if self.token_mask is not None:
            dist.masked_fill_(~self.token_mask.unsqueeze(1), math.inf)
        return dist

    def distances(self, start: int, stop: int) -> torch.Tensor:
        """Rows ``start:stop`` of the distance table: from the kept table when it fits, else rebuilt
        in a reused scratch buffer (valid until the next call; never part of an autograd graph)."""
        if self._keep_distances:
            if self._distances is None:
                self._distances = self._distance_rows(0, self.n_tokens)
            return self._distances[:, start:stop]
        if self._scratch is None:
            batch = self.positions.shape[0]
            self._scratch = self.positions.new_empty(2, batch, self.rows, self.n_tokens)
        return self._distance_rows(start, stop, self._scratch)

    def block(self, start: int, stop: int, out: torch.Tensor | None = None) -> torch.Tensor:
        """``[B, H, stop - start, T]``: the bias of query rows ``start:stop`` (float32, or written
        into ``out`` in its dtype)."""
        return torch.mul(self.distances(start, stop).unsqueeze(1), -self.slopes.view(1, -1, 1, 1), out=out)

    def blocks(self, dtype: torch.dtype = torch.float32) -> Iterator[tuple[int, int, torch.Tensor]]:
        """Consecutive query-row blocks ``(start, stop, bias)`` covering all tokens, bias in ``dtype``.

        A block is valid until the next one is requested: without autograd, blocked biases are
        written into one reused buffer (fresh gigabyte-sized allocations cost more than the
        arithmetic); with autograd every block is a new tensor, which the attention may save.
        """
        if self.rows >= self.n_tokens:
            if dtype not in self._full:
                self._full[dtype] = self.block(0, self.n_tokens).to(dtype)
                self._distances = None  # the full bias replaces it
            yield 0, self.n_tokens, self._full[dtype]
            return
        buffer = None
        if not torch.is_grad_enabled():
            if self._buffer is None or self._buffer.dtype != dtype:
                shape = (self.positions.shape[0], self.slopes.numel(), self.rows, self.n_tokens)
                self._buffer = torch.empty(shape, dtype=dtype, device=self.positions.device)
            buffer = self._buffer
        for start in range(0, self.n_tokens, self.rows):
            stop = min(start + self.rows, self.n_tokens)
            if buffer is None:
                yield start, stop, self.block(start, stop).to(dtype)
            else:
                yield start, stop, self.block(start, stop, out=buffer[:, :, : stop - start])

    def repeat_interleave(self, repeats: int) -> AlibiBias:
        """The bias of a batch in which every bag is repeated ``repeats`` times in a row (as
        ``Tensor.repeat_interleave(repeats, dim=0)`` repeats the tokens)."""
        mask = None if self.token_mask is None else self.token_mask.repeat_interleave(repeats, dim=0)
        cells = self.positions[:, 1:].repeat_interleave(repeats, dim=0)
        return AlibiBias(cells, self.slopes, mask, self.max_elements, self.flex_min_tokens)

    def uses_flex(self) -> bool:
        """True when :meth:`attend` computes the bias inside FlexAttention: no autograd, a bag of at
        least ``flex_min_tokens`` tokens, and a kernel that compiled in this process."""
        return (self.flex_min_tokens is not None and self.n_tokens >= self.flex_min_tokens
                and not torch.is_grad_enabled() and flex_unavailable_reason() is None)

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """``softmax(q k^T / sqrt(d) + bias) v`` for ``q, k, v [B, H, T, d]`` -> ``[B, H, T, d]``: in one
        FlexAttention kernel that computes the bias per score (:meth:`uses_flex`), else SDPA over the
        bias's query-row blocks."""
        if self.uses_flex():
            if self._score_mod is None:
                self._score_mod = alibi_score_mod(self.positions, self.slopes, self.token_mask)
            out = flex_alibi_attention(q, k, v, self._score_mod)
            if out is not None:
                return out
        parts = [F.scaled_dot_product_attention(q[:, :, start:stop], k, v, attn_mask=block)
                 for start, stop, block in self.blocks(q.dtype)]
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=2)

    def dense(self) -> torch.Tensor:
        """The whole bias ``float32 [B, H, T, T]`` (for inspection and tests; quadratic in memory)."""
        return self.block(0, self.n_tokens)


class TitanAttention(nn.Module):
    """Multi-head self-attention with an additive ALiBi bias (``Attention`` of the reference).

    ``qkv: Linear(D, 3D)`` split as ``(3, H, D / H)``, attention under the bias (:meth:`AlibiBias.attend`),
    ``proj: Linear(D, D)``.  ``[B, T, D] -> [B, T, D]``.
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, bias: AlibiBias) -> torch.Tensor:
        batch, n_tokens, dim = x.shape
        q, k, v = self.qkv(x).unflatten(-1, (3, self.num_heads, dim // self.num_heads)).permute(2, 0, 3, 1, 4)
        out = bias.attend(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(batch, n_tokens, dim))


class Mlp(nn.Module):
    """``fc1: Linear(D, M)``, GELU, ``fc2: Linear(M, D)`` (timm ``Mlp`` without dropout)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class TitanBlock(nn.Module):
    """Pre-norm ViT block: ``x + attn(norm1(x), bias)``, then ``x + mlp(norm2(x))``; ``[B, T, D]``."""

    def __init__(self, cfg: TitanConfig) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.embed_dim, eps=cfg.norm_eps)
        self.attn = TitanAttention(cfg.embed_dim, cfg.num_heads, cfg.qkv_bias)
        self.norm2 = nn.LayerNorm(cfg.embed_dim, eps=cfg.norm_eps)
        self.mlp = Mlp(cfg.embed_dim, cfg.mlp_dim)

    def forward(self, x: torch.Tensor, bias: AlibiBias) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), bias)
        return x + self.mlp(self.norm2(x))


class BlockStack(nn.Module):
    """The layers, held under ``modules_list`` so checkpoint keys read ``blocks.modules_list.{i}``
    (the reference's ``CustomSequential``)."""

    def __init__(self, blocks: list[TitanBlock]) -> None:
        super().__init__()
        self.modules_list = nn.ModuleList(blocks)

    def forward(self, x: torch.Tensor, bias: AlibiBias) -> torch.Tensor:
        for block in self.modules_list:
            x = block(x, bias)
        return x


class PoolingAttention(nn.Module):
    """Cross-attention with ``nn.MultiheadAttention``'s parameters and maths, batch first, via SDPA.

    Parameters ``in_proj_weight [3D, D]``, ``in_proj_bias [3D]``, ``out_proj: Linear(D, D)`` (the
    checkpoint's names).  ``forward(query [Q, D], context [B, T, D], key_mask bool [B, T] | None)
    -> [B, Q, D]``: the shared queries attend over each bag's real tokens.
    """

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))
        self.in_proj_bias = nn.Parameter(torch.empty(3 * dim))
        self.out_proj = nn.Linear(dim, dim)

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """``nn.MultiheadAttention``'s initialisation: Xavier-uniform input projection, zero biases,
        default ``Linear`` weight for the output projection."""
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.in_proj_bias)
        self.out_proj.reset_parameters()
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, query: torch.Tensor, context: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        batch, _, dim = context.shape
        heads = (self.num_heads, dim // self.num_heads)
        w_q, w_k, w_v = self.in_proj_weight.chunk(3)
        b_q, b_k, b_v = self.in_proj_bias.chunk(3)
        q = F.linear(query, w_q, b_q).unflatten(-1, heads).transpose(0, 1).expand(batch, -1, -1, -1)
        k = F.linear(context, w_k, b_k).unflatten(-1, heads).transpose(1, 2)
        v = F.linear(context, w_v, b_v).unflatten(-1, heads).transpose(1, 2)
        attn_mask = None if key_mask is None else key_mask.bool()[:, None, None, :]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        return self.out_proj(out.transpose(1, 2).flatten(2))


class AttentionalPooler(nn.Module):
    """CoCa attentional pooler (``AttentionalPooler`` of the reference, from open_clip).

    ``Q`` learned queries ``query [Q, D]``; ``attn(ln_q(query), ln_k(tokens), ln_k(tokens))``.
    ``forward(tokens [B, T, D], token_mask bool [B, T] | None) -> [B, Q, D]``.
    """

    def __init__(self, dim: int, num_heads: int, num_queries: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.query = nn.Parameter(torch.empty(num_queries, dim))
        self.attn = PoolingAttention(dim, num_heads)
        self.ln_q = nn.LayerNorm(dim, eps=eps)
        self.ln_k = nn.LayerNorm(dim, eps=eps)

    def forward(self, tokens: torch.Tensor, token_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.attn(self.ln_q(self.query), self.ln_k(tokens), token_mask)


class TitanSlideEncoder(nn.Module):
    """TITAN's vision tower (``VisionTransformer`` built by ``build_vision_tower``); see the module docstring.

    ``forward(features [B, N, F], coords [B, N, 2], mask bool [B, N] | None) -> [B, D]`` slide
    embedding.  Token level, as ModalTune's adapter drives it::

        tokens, bias = encoder.embed(features, coords, mask)   # [B, 1 + L, D], AlibiBias
        for layer in encoder.layers:
            tokens = layer(tokens, bias)
        tokens = encoder.final_norm(tokens)
        embedding = encoder.pool(tokens, bias.token_mask)       # [B, D]

    ``L`` is the number of occupied grid cells, not ``N`` (see :func:`tile_grid`), so the token mask
    comes out of :meth:`embed` with the bias.  A padded and masked bag gives the unpadded bag's
    outputs.  ``embed_dim`` is the output width.
    """

    def __init__(self, config: TitanConfig | None = None) -> None:
        super().__init__()
        cfg = config if config is not None else TitanConfig.paper()
        self.config = cfg
        self.embed_dim = cfg.embed_dim
        self.patch_embed = nn.Sequential(nn.Linear(cfg.feature_dim, cfg.embed_dim), nn.GELU())
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.embed_dim))
        self.blocks = BlockStack([TitanBlock(cfg) for _ in range(cfg.depth)])
        self.norm = nn.LayerNorm(cfg.embed_dim, eps=cfg.norm_eps)
        self.attn_pool = AttentionalPooler(cfg.embed_dim, cfg.pool_heads, cfg.pool_queries, cfg.pool_norm_eps)
        self.attn_pool_contrastive = AttentionalPooler(cfg.embed_dim, cfg.pool_heads, 1, cfg.pool_norm_eps)
        self.proj = nn.Parameter(torch.empty(cfg.embed_dim, cfg.embed_dim))
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """The reference's initialisation: timm ViT init for the tower (linears ~ N(0, 0.02) truncated
        at +-2, zero bias; unit LayerNorms; ``cls_token ~ N(0, 1e-6)``), then the poolers as built
        after it (queries ~ N(0, 1), ``nn.MultiheadAttention`` init) and ``proj ~ N(0, 1/D)``."""
        for module in [self.patch_embed, self.blocks, self.norm]:
            for sub in module.modules():
                if isinstance(sub, nn.Linear):
                    nn.init.trunc_normal_(sub.weight, std=0.02)
                    nn.init.zeros_(sub.bias)
                elif isinstance(sub, nn.LayerNorm):
                    sub.reset_parameters()
        nn.init.normal_(self.cls_token, std=1e-6)
        for pooler in (self.attn_pool, self.attn_pool_contrastive):
            nn.init.normal_(pooler.query)
            pooler.attn.reset_parameters()
            pooler.ln_q.reset_parameters()
            pooler.ln_k.reset_parameters()
        nn.init.normal_(self.proj, std=self.embed_dim**-0.5)

    @property
    def layers(self) -> nn.ModuleList:
        """The ViT blocks, each ``layer(tokens [B, T, D], bias: AlibiBias) -> [B, T, D]``."""
        return self.blocks.modules_list

    @property
    def final_norm(self) -> nn.LayerNorm:
        """The LayerNorm applied to all tokens after the last layer (``norm``)."""
        return self.norm

    def grid(
        self, features: torch.Tensor, coords: torch.Tensor, mask: torch.Tensor | None = None,
        patch_size_lv0: int | None = None,
    ) -> SlideGrid:
        """The bag's grid tokens (:func:`tile_grid`) with ``patch_size_lv0`` or the config's."""
        size = self.config.patch_size_lv0 if patch_size_lv0 is None else patch_size_lv0
        return tile_grid(features, coords, size, mask)

    def embed(
        self, features: torch.Tensor, coords: torch.Tensor, mask: torch.Tensor | None = None,
        patch_size_lv0: int | None = None,
    ) -> tuple[torch.Tensor, AlibiBias]:
        """Input tokens ``[B, 1 + L, D]`` (CLS first, then ``GELU(Linear(cell features))``) and the
        :class:`AlibiBias` of their grid cells, which carries the token mask ``[B, 1 + L]``."""
        grid = self.grid(features, coords, mask, patch_size_lv0)
        tiles = self.patch_embed(grid.features)
        tokens = torch.cat([self.cls_token.to(tiles.dtype).expand(tiles.shape[0], -1, -1), tiles], dim=1)
        token_mask = torch.cat([grid.mask.new_ones(grid.mask.shape[0], 1), grid.mask], dim=1)
        slopes = alibi_slopes(self.config.num_heads, device=tokens.device)
        return tokens, AlibiBias(grid.cells, slopes, token_mask, self.config.max_bias_elements,
                                 self.config.flex_min_tokens)

    def pool(self, tokens: torch.Tensor, token_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Slide embedding ``[B, D]``: the contrastive pooler over the final tokens (no ``proj``)."""
        return self.attn_pool_contrastive(tokens, token_mask)[:, 0]

    def caption_tokens(self, tokens: torch.Tensor, token_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``[B, pool_queries, D]``: the captioning pooler's output (the reference's ``tokens``)."""
        return self.attn_pool(tokens, token_mask)

    def project(self, embedding: torch.Tensor) -> torch.Tensor:
        """``embedding [B, D] @ proj``: the slide embedding in TITAN's image-text space."""
        return embedding @ self.proj.to(embedding.dtype)

    def forward_tokens(
        self, features: torch.Tensor, coords: torch.Tensor, mask: torch.Tensor | None = None,
        patch_size_lv0: int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Final tokens ``[B, 1 + L, D]`` (after all layers and ``final_norm``) and their mask."""
        tokens, bias = self.embed(features, coords, mask, patch_size_lv0)
        for layer in self.layers:
            tokens = layer(tokens, bias)
        return self.final_norm(tokens), bias.token_mask

    def forward(
        self, features: torch.Tensor, coords: torch.Tensor, mask: torch.Tensor | None = None,
        patch_size_lv0: int | None = None,
    ) -> torch.Tensor:
        """Slide embedding ``[B, D]``: ``encode_slide_from_patch_features`` of the reference."""
        return self.pool(*self.forward_tokens(features, coords, mask, patch_size_lv0))


_WHAT = "TITAN checkpoint"


def _read_checkpoint(path: Path) -> Mapping[str, torch.Tensor]:
    """Tensors of a local checkpoint: only the vision tower's when the file holds the full model."""
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        check_checkpoint(path, _WHAT)
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            names = list(handle.keys())
            if any(name.startswith(VISION_PREFIX) for name in names):
                names = [name for name in names if name.startswith(VISION_PREFIX)]
            return {name: handle.get_tensor(name) for name in names}
    loaded = load_checkpoint(path, _WHAT)
    for wrapper in ("state_dict", "model"):
        if isinstance(loaded.get(wrapper), Mapping):
            return loaded[wrapper]
    return loaded


def load_titan_weights(model: TitanSlideEncoder, path: str | Path) -> TitanSlideEncoder:
    """Load TITAN vision-tower weights from a local file, strictly; returns ``model``.

    ``path`` is ``.safetensors`` or a torch file (``.pth`` / ``.bin``, read with ``weights_only``;
    a ``{"state_dict": ...}`` or ``{"model": ...}`` wrapper is unwrapped).  It holds either the
    vision tower's 96 tensors under their own names, or the full TITAN model (the official
    ``model.safetensors``: text encoder included), from which the tensors under
    ``vision_encoder.`` (:data:`VISION_PREFIX`) are taken with the prefix removed, as ModalTune's
    ``load_slide_encoder`` does.  Nothing is downloaded.
    """
    path = Path(path)
    state = _read_checkpoint(path)
    if any(name.startswith(VISION_PREFIX) for name in state):
        state = {name[len(VISION_PREFIX):]: t for name, t in state.items() if name.startswith(VISION_PREFIX)}
    load_state_strictly(model, state, path, _WHAT)
    logger.info("loaded %d TITAN vision-tower tensors from %s", len(state), path)
    return model
