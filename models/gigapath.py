"""Prov-GigaPath slide encoder (``gigapath_slide_enc12l768d``) in plain PyTorch.

Reference: Xu et al., "A whole-slide foundation model for digital pathology from real-world data",
Nature 2024; prov-gigapath/prov-gigapath ``gigapath/slide_encoder.py`` (``LongNetViT``) with
``gigapath/pos_embed.py`` and the LongNet fork under ``gigapath/torchscale`` (see
:mod:`models.longnet`).  ModalTune (ICCV 2025, martellab-sri/ModalTune
``models/aggregators/longvit_adapter.py``) interleaves its Modal Adapters between these LongNet
layers, hence the iterable layer stack (:meth:`GigaPathSlideEncoder.embed`, ``layers``,
``final_norm``).

Data flow, for tile features ``[B, N, 1536]`` and level-0 pixel coordinates ``[B, N, 2]``::

    patch_embed.proj: Linear(1536, 768)                               [B, N, 768]
    + 2-D sin-cos position of tile (floor(x / 256), floor(y / 256))
      on a 1000 x 1000 grid (computed per tile, never as a table)     [B, N, 768]
    prepend cls_token (its position row is zero)                      [B, 1 + N, 768]
    embedding dropout (0.25)
    12 x LongNet block (dilated attention, 16 heads, FFN 3072)        [B, 1 + N, 768]
    encoder.layer_norm                                                tokens [B, 1 + N, 768]
    norm(tokens[:, 0])  (or norm(mean of tile tokens) with global_pool)   slide embedding [B, 768]

The reference's default (``global_pool=False``) returns the normed CLS token; so do ModalTune's
GigaPath configurations (``model_configs/modaltune_gigapath_config.json``).  Note that ModalTune's
adapter model takes the raw CLS token after the last interaction block (no ``encoder.layer_norm``,
no ``norm``), and Prov-GigaPath's own inference pipeline (``gigapath/pipeline.py``) reports
``all_layer_embed`` outputs, whose last entry skips ``encoder.layer_norm``; both are reachable here
(:meth:`GigaPathSlideEncoder.layer_embeddings`, or the layer stack).

At the paper configuration the encoder has 86,330,880 parameters and its ``state_dict`` has exactly
the 247 keys of the official ``slide_encoder.pth``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import nn

from models.names import check_profile
from models.checkpoint import load_checkpoint, load_state_strictly
from models.longnet import LongNetEncoder

__all__ = [
    "PAPER_PARAMETERS",
    "GigaPathConfig",
    "GigaPathSlideEncoder",
    "load_gigapath_weights",
    "optimal_segment_lengths",
    "sincos_position_embedding",
]

logger = logging.getLogger(__name__)

PAPER_PARAMETERS = 86_330_880


def optimal_segment_lengths(max_wsi_size: int = 262_144, tile_size: int = 256, branches: int = 5) -> tuple[int, ...]:
    """Segment lengths geometrically spaced from 1024 to the longest possible bag, truncated to ints.

    Follows ``LongNetViT.get_optimal_segment_length``: exponents evenly spaced from ``log2(1024)``
    to ``int(log2((max_wsi_size // tile_size) ** 2))``.  The defaults give
    ``(1024, 5792, 32768, 185363, 1048576)``.
    """
    lo = math.log2(1024)
    hi = int(math.log2((max_wsi_size // tile_size) ** 2))
    return tuple(int(2.0 ** (lo + (hi - lo) * i / (branches - 1))) for i in range(branches))


@dataclass(frozen=True)
class GigaPathConfig:
    """Sizes and regularisation of the slide encoder; :meth:`paper` is ``gigapath_slide_enc12l768d``.

    ``dropout`` (embedding, attention output and FFN output) and ``drop_path_rate`` are the
    ``LongNetViT`` defaults that ModalTune also uses; ``layernorm_eps`` is LongNet's,
    ``norm_eps`` that of the final ``norm``.
    """

    feature_dim: int = 1536
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 16
    ffn_dim: int = 3072
    segment_lengths: tuple[int, ...] = optimal_segment_lengths()
    dilation_ratios: tuple[int, ...] = (1, 2, 4, 8, 16)
    slide_ngrids: int = 1000
    tile_size: int = 256
    dropout: float = 0.25
    drop_path_rate: float = 0.1
    global_pool: bool = False
    layernorm_eps: float = 1e-5
    norm_eps: float = 1e-6

    def __post_init__(self) -> None:
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim {self.embed_dim} must be divisible by num_heads {self.num_heads}")
        if self.embed_dim % 4:
            raise ValueError(f"embed_dim {self.embed_dim} must be divisible by 4 (2-D sin-cos positions)")
        if len(self.segment_lengths) != len(self.dilation_ratios) or not self.segment_lengths:
            raise ValueError("segment_lengths and dilation_ratios must be non-empty and of equal length")
        if min(self.segment_lengths) < 1 or min(self.dilation_ratios) < 1:
            raise ValueError("segment lengths and dilation ratios must be positive")

    @classmethod
    def paper(cls, feature_dim: int = 1536) -> GigaPathConfig:
        """The published configuration (12 layers, width 768, 16 heads, FFN 3072)."""
        return cls(feature_dim=feature_dim)

    @classmethod
    def for_profile(cls, profile: str, feature_dim: int = 1536) -> GigaPathConfig:
        """``paper``; ``small`` = 2 layers of width 64 (4 heads, FFN 256, paper segments — sized so the
        whole ``small`` Table 2 trains on a 2-core CPU);
        ``tiny`` = 1 layer of width 64, 4 heads, segments (64, 128, 256) with ratios (1, 2, 4), so
        that tiny bags are still cut into segments and dilated."""
        paper = cls.paper(feature_dim)
        if check_profile(profile) == "paper":
            return paper
        if profile == "small":
            return replace(paper, depth=2, embed_dim=64, num_heads=4, ffn_dim=256)
        return replace(  # tiny
            paper,
            depth=1,
            embed_dim=64,
            num_heads=4,
            ffn_dim=128,
            segment_lengths=(64, 128, 256),
            dilation_ratios=(1, 2, 4),
        )


def _sincos_1d(position: torch.Tensor, dim: int) -> torch.Tensor:
    """``[...]`` float64 positions -> ``[..., dim]``: ``[sin(p w), cos(p w)]``, ``w_t = 10000^(-2t/dim)``."""
    omega = 1.0 / 10000.0 ** (torch.arange(dim // 2, dtype=torch.float64, device=position.device) / (dim / 2.0))
    angle = position.unsqueeze(-1) * omega
    return torch.cat([angle.sin(), angle.cos()], dim=-1)


def sincos_position_embedding(
    coords: torch.Tensor,
    dim: int,
    tile_size: int = 256,
    grid: int = 1000,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Rows of the reference's fixed 2-D sin-cos table for the tiles at ``coords``, computed on demand.

    ``coords [..., 2]`` level-0 pixel ``(x, y)`` -> ``float32 [..., dim]``.  The reference builds a
    ``(1 + grid**2) x dim`` table (``get_2d_sincos_pos_embed`` with a zero CLS row) and indexes it
    with ``1 + floor(x / tile) * grid + floor(y / tile)``; table row ``1 + k`` encodes the grid
    cell ``(k % grid, k // grid)`` as ``[sincos(k % grid), sincos(k // grid)]``, each of width
    ``dim / 2``.  The same arithmetic per tile, in float64 like numpy's, then cast to float32, gives
    the identical rows without the 2.9 GB table.  (A ``y`` cell past the grid therefore aliases into
    the next row, exactly as the flat lookup does.)  A flat index outside the table raises
    ``ValueError``; ``mask`` (True = real tile) exempts padding from that check.
    """
    cell = torch.floor(coords.to(torch.float64) / tile_size)
    flat = cell[..., 0] * grid + cell[..., 1]
    if mask is not None:
        flat = torch.where(mask.bool(), flat, torch.zeros_like(flat))
    if flat.numel() and (bool((flat < 0).any()) or bool((flat >= grid * grid).any())):
        raise ValueError(
            f"tile coordinates outside the {grid} x {grid} position grid of {tile_size}-px tiles "
            f"(level-0 x in [0, {grid * tile_size}))"
        )
    row = torch.div(flat, grid, rounding_mode="floor")
    col = flat - row * grid
    half = dim // 2
    return torch.cat([_sincos_1d(col, half), _sincos_1d(row, half)], dim=-1).to(torch.float32)


class PatchEmbed(nn.Module):
    """``proj: Linear(feature_dim, embed_dim)``, ``[B, N, F] -> [B, N, D]`` (checkpoint key ``patch_embed.proj``)."""

    def __init__(self, feature_dim: int, embed_dim: int) -> None:
        super().__init__()
        self.proj = nn.Linear(feature_dim, embed_dim)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.proj(features)


class GigaPathSlideEncoder(nn.Module):
    """The Prov-GigaPath LongNet slide encoder (``LongNetViT``); see the module docstring.

    ``forward(features [B, N, F], coords [B, N, 2], mask bool [B, N] | None) -> [B, D]``.
    Token level: ``tokens = embed(features, coords, mask)``; ``for layer in layers: tokens =
    layer(tokens, token_mask(mask))``; ``tokens = final_norm(tokens)``; ``pool(tokens, mask)``.
    A padded and masked bag gives the unpadded bag's outputs (attention runs bag by bag over real
    tokens when the lengths differ).  ``embed_dim`` is the output width.
    """

    def __init__(self, config: GigaPathConfig | None = None) -> None:
        super().__init__()
        cfg = config if config is not None else GigaPathConfig.paper()
        self.config = cfg
        self.embed_dim = cfg.embed_dim
        # Built on the meta device and materialised once: every parameter is then initialised a
        # single time by reset_parameters (not first by PyTorch's defaults), halving construction.
        with torch.device("meta"):
            self.patch_embed = PatchEmbed(cfg.feature_dim, cfg.embed_dim)
            self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.embed_dim))
            self.embed_dropout = nn.Dropout(cfg.dropout)
            self.encoder = LongNetEncoder(
                depth=cfg.depth,
                embed_dim=cfg.embed_dim,
                num_heads=cfg.num_heads,
                ffn_dim=cfg.ffn_dim,
                segment_lengths=cfg.segment_lengths,
                dilation_ratios=cfg.dilation_ratios,
                dropout=cfg.dropout,
                drop_path_rate=cfg.drop_path_rate,
                layernorm_eps=cfg.layernorm_eps,
            )
            self.norm = nn.LayerNorm(cfg.embed_dim, eps=cfg.norm_eps)
        self.to_empty(device="cpu")
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """The reference's final initialisation: Xavier-uniform linears with zero bias, unit
        LayerNorms, ``cls_token ~ N(0, 0.02)`` (``LongNetViT.initialize_vit_weights``, which
        overrides LongNet's own sub-LN scaling)."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        nn.init.normal_(self.cls_token, std=0.02)

    @property
    def layers(self) -> nn.ModuleList:
        """The LongNet blocks, each ``layer(tokens [B, L, D], token_mask [B, L] | None) -> [B, L, D]``."""
        return self.encoder.layers

    @property
    def final_norm(self) -> nn.LayerNorm:
        """LongNet's output LayerNorm (``encoder.layer_norm``), applied to all tokens after the last layer."""
        return self.encoder.layer_norm

    @staticmethod
    def token_mask(mask: torch.Tensor | None) -> torch.Tensor | None:
        """Tile mask ``[B, N]`` -> token mask ``[B, 1 + N]`` (the CLS token is always real)."""
        if mask is None:
            return None
        mask = mask.bool()
        return torch.cat([mask.new_ones(mask.shape[0], 1), mask], dim=1)

    def positions(self, coords: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Fixed 2-D sin-cos positions of the tiles, ``coords [B, N, 2] -> float32 [B, N, D]``."""
        cfg = self.config
        return sincos_position_embedding(coords, cfg.embed_dim, cfg.tile_size, cfg.slide_ngrids, mask)

    def embed(self, features: torch.Tensor, coords: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Input tokens ``[B, 1 + N, D]``: projected tiles plus positions, CLS first, embedding dropout.

        Padded tiles (``mask`` False) are zeroed, as the reference encoder zeroes padded tokens.
        """
        x = self.patch_embed(features)
        x = x + self.positions(coords, mask).to(x.dtype)
        x = torch.cat([self.cls_token.to(x.dtype).expand(x.shape[0], -1, -1), x], dim=1)
        x = self.embed_dropout(x)
        token_mask = self.token_mask(mask)
        if token_mask is not None:
            x = x * token_mask.unsqueeze(-1).to(x.dtype)
        return x

    def pool(self, tokens: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Slide embedding ``[B, D]`` from tokens ``[B, 1 + N, D]``: ``norm`` of the CLS token, or with
        ``global_pool`` ``norm`` of the mean over real tile tokens (``LongNetViT.forward``)."""
        if not self.config.global_pool:
            return self.norm(tokens[:, 0])
        tiles = tokens[:, 1:]
        if mask is None:
            return self.norm(tiles.mean(dim=1))
        weight = mask.to(tiles.dtype).unsqueeze(-1)
        return self.norm((tiles * weight).sum(dim=1) / weight.sum(dim=1).clamp_min(1.0))

    def forward_tokens(
        self, features: torch.Tensor, coords: torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Output tokens ``[B, 1 + N, D]`` after all layers and ``final_norm`` (CLS first)."""
        tokens = self.embed(features, coords, mask)
        token_mask = self.token_mask(mask)
        for layer in self.layers:
            tokens = layer(tokens, token_mask)
        return self.final_norm(tokens)

    def forward(self, features: torch.Tensor, coords: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Slide embedding ``[B, D]``: the reference's ``forward(x, coords)[0]``."""
        return self.pool(self.forward_tokens(features, coords, mask), mask)

    def layer_embeddings(
        self, features: torch.Tensor, coords: torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``[depth + 1, B, D]``: the reference's ``forward(..., all_layer_embed=True)``.

        Entry 0 pools the input tokens, entry ``i`` the output of layer ``i``; none of them passes
        through ``final_norm`` (the reference collects LongNet's hidden states before its output
        LayerNorm), each goes through :meth:`pool`.  Prov-GigaPath's pipeline reports the last entry
        as ``last_layer_embed``.
        """
        tokens = self.embed(features, coords, mask)
        token_mask = self.token_mask(mask)
        pooled = [self.pool(tokens, mask)]
        for layer in self.layers:
            tokens = layer(tokens, token_mask)
            pooled.append(self.pool(tokens, mask))
        return torch.stack(pooled)


def load_gigapath_weights(model: GigaPathSlideEncoder, path: str | Path) -> GigaPathSlideEncoder:
    """Load official slide-encoder weights from a local file, strictly; returns ``model``.

    ``path`` is Prov-GigaPath's ``slide_encoder.pth`` (a ``torch.save`` of ``{"model": state_dict}``,
    read with ``weights_only=True``), a bare state dict saved by torch, or a ``.safetensors`` file
    holding the same 247 keys.  Nothing is downloaded.
    """
    what = "Prov-GigaPath slide-encoder checkpoint"
    loaded = load_checkpoint(path, what)
    state: Mapping[str, torch.Tensor] = loaded["model"] if isinstance(loaded.get("model"), Mapping) else loaded
    load_state_strictly(model, state, path, what)
    logger.info("loaded %d slide-encoder tensors from %s", len(state), path)
    return model
