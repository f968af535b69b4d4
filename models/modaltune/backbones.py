"""The frozen slide encoders ModalTune plugs its Modal Adapters into, behind one small interface.

ModalTune (ICCV 2025; martellab-sri/ModalTune ``models/aggregators/longvit_adapter.py`` and
``titan_adapter.py``) drives a slide encoder layer by layer: embed the bag, run its layers in
groups with adapter blocks in between, then read the slide embedding. A :class:`SlideBackbone`
exposes exactly that, so the adapter model is encoder-agnostic:

``embed(features [B, N, F], coords [B, N, 2], mask [B, N] | None) -> EncodedBag``
    input tokens ``[B, 1 + L, D]`` (CLS first), what the layers need besides the tokens
    (``context``) and the token mask ``[B, 1 + L]`` (``None`` = all real);
``repeat(bag, n)``
    each bag repeated ``n`` times along the batch (``repeat_interleave``), to run several task
    prompts on one patient in one batched pass;
``run_layer(i, tokens, context) -> tokens``
    encoder layer ``i``;
``slide_embedding(tokens, bag) -> [B, D]``
    the image feature after the last layer.

:class:`GigaPathBackbone` (Prov-GigaPath, :mod:`models.gigapath`) reads the raw CLS token of the
last layer, as the release's ``LongNetGeneAdapter`` does with ``global_pool=False`` (no LongNet
output LayerNorm, no final ``norm``); :class:`TitanBackbone` (:mod:`models.titan`) applies TITAN's
``norm`` and its contrastive attentional pooler over the real tokens, as the release's
``TITANGeneAdapter`` (``self.norm`` then ``forward_attn_pool``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from models.gigapath import GigaPathSlideEncoder
from models.titan import AlibiBias, TitanSlideEncoder

__all__ = ["EncodedBag", "GigaPathBackbone", "SlideBackbone", "TitanBackbone"]


@dataclass(frozen=True)
class EncodedBag:
    """Embedded bags: ``tokens [B, 1 + L, D]``, the layers' ``context``, ``token_mask [B, 1 + L]``."""

    tokens: torch.Tensor
    context: Any
    token_mask: torch.Tensor | None

    @property
    def patch_mask(self) -> torch.Tensor | None:
        """``bool [B, L]`` mask of the real patch tokens (CLS excluded), ``None`` when all are real."""
        return None if self.token_mask is None else self.token_mask[:, 1:]


class SlideBackbone(nn.Module, ABC):
    """A slide encoder seen as embed -> layers -> slide embedding (see the module docstring)."""

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    @property
    def embed_dim(self) -> int:
        return int(self.encoder.embed_dim)

    @property
    def layers(self) -> nn.ModuleList:
        return self.encoder.layers

    @property
    def depth(self) -> int:
        return len(self.layers)

    @abstractmethod
    def embed(self, features: torch.Tensor, coords: torch.Tensor, mask: torch.Tensor | None) -> EncodedBag:
        """Input tokens, layer context and token mask of a batch of bags."""

    @abstractmethod
    def repeat(self, bag: EncodedBag, n: int) -> EncodedBag:
        """The bags repeated ``n`` times along the batch (one copy per task prompt)."""

    @abstractmethod
    def slide_embedding(self, tokens: torch.Tensor, bag: EncodedBag) -> torch.Tensor:
        """The slide embedding ``[B, D]`` from final tokens, as the encoder defines it."""

    def run_layer(self, index: int, tokens: torch.Tensor, context: Any) -> torch.Tensor:
        """Encoder layer ``index`` on ``tokens [B, 1 + L, D]``."""
        return self.layers[index](tokens, context)


class GigaPathBackbone(SlideBackbone):
    """Prov-GigaPath's LongNet slide encoder; the layers' context is the token mask."""

    encoder: GigaPathSlideEncoder

    def embed(self, features: torch.Tensor, coords: torch.Tensor, mask: torch.Tensor | None) -> EncodedBag:
        token_mask = self.encoder.token_mask(mask)
        return EncodedBag(self.encoder.embed(features, coords, mask), token_mask, token_mask)

    def repeat(self, bag: EncodedBag, n: int) -> EncodedBag:
        mask = None if bag.token_mask is None else bag.token_mask.repeat_interleave(n, dim=0)
        return EncodedBag(bag.tokens.repeat_interleave(n, dim=0), mask, mask)

    def slide_embedding(self, tokens: torch.Tensor, bag: EncodedBag) -> torch.Tensor:
        """The raw CLS token ``[B, D]``; with ``global_pool`` the mean of the real patch tokens."""
        if not self.encoder.config.global_pool:
            return tokens[:, 0]
        patches = tokens[:, 1:]
        if bag.patch_mask is None:
            return patches.mean(dim=1)
        weight = bag.patch_mask.to(patches.dtype).unsqueeze(-1)
        return (patches * weight).sum(dim=1) / weight.sum(dim=1).clamp_min(1.0)


class TitanBackbone(SlideBackbone):
    """TITAN's vision tower; tokens are occupied grid cells, the context is their 2-D ALiBi bias."""

    encoder: TitanSlideEncoder

    def embed(self, features: torch.Tensor, coords: torch.Tensor, mask: torch.Tensor | None) -> EncodedBag:
        tokens, bias = self.encoder.embed(features, coords, mask)
        return EncodedBag(tokens, bias, bias.token_mask)

    def repeat(self, bag: EncodedBag, n: int) -> EncodedBag:
        bias: AlibiBias = bag.context
        mask = None if bag.token_mask is None else bag.token_mask.repeat_interleave(n, dim=0)
        cells = bias.positions[:, 1:].repeat_interleave(n, dim=0)  # grid cells of the tile tokens
        repeated = AlibiBias(cells, bias.slopes, mask, bias.max_elements)
        return EncodedBag(bag.tokens.repeat_interleave(n, dim=0), repeated, mask)

    def slide_embedding(self, tokens: torch.Tensor, bag: EncodedBag) -> torch.Tensor:
        """TITAN's slide embedding ``[B, D]``: ``norm``, then the contrastive pooler over real tokens."""
        return self.encoder.pool(self.encoder.final_norm(tokens), bag.token_mask)
