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
    the image feature after the last layer;
``run_lora_layer(i, tokens, context, lora, gene, task) -> tokens``
    encoder layer ``i`` with the low-rank q/k/v updates of :mod:`models.modaltune.lora` (the
    "ModalTune w/ LoRA" ablation): the layer's own frozen weights, its attention recomputed from
    the updated projections.

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
import torch.nn.functional as F
from torch import nn

from models.gigapath import GigaPathSlideEncoder
from models.longnet import DilatedAttention, dilated_attention
from models.modaltune.lora import LayerLoRA
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

    @abstractmethod
    def run_lora_layer(
        self, index: int, tokens: torch.Tensor, context: Any, lora: LayerLoRA, gene: torch.Tensor,
        task: torch.Tensor | None,
    ) -> torch.Tensor:
        """Encoder layer ``index`` with ``lora``'s q/k/v updates; ``gene`` / ``task`` ``[B, 1, D]``
        are normalised by the layer's pre-attention LayerNorm before they reach ``lora``."""


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

    def run_lora_layer(
        self, index: int, tokens: torch.Tensor, context: Any, lora: LayerLoRA, gene: torch.Tensor,
        task: torch.Tensor | None,
    ) -> torch.Tensor:
        """A LongNet block (:class:`models.longnet.LongNetEncoderLayer`) whose dilated attention reads
        the LoRA-updated q/k/v; ``context`` is the token mask."""
        layer = self.layers[index]
        norm = layer.self_attn_layer_norm
        x = norm(tokens)
        attn = layer.self_attn
        dq, dk, dv = lora(x, norm(gene), None if task is None else norm(task))
        q, k, v = attn.q_proj(x) + dq, attn.k_proj(x) + dk, attn.v_proj(x) + dv
        out = _dilated_attention_from_projections(attn, q, k, v, context)
        tokens = tokens + layer.drop_path(layer.dropout(out))
        return tokens + layer.drop_path(layer.ffn(layer.final_layer_norm(tokens)))


def _dilated_attention_from_projections(
    attn: DilatedAttention, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None
) -> torch.Tensor:
    """:meth:`DilatedAttention.forward` from already projected ``q, k, v [B, L, D]`` -> ``[B, L, D]``.

    Same masking rule: a batch of unequal bags is attended per distinct length over its real tokens
    only (the projections are per token, so projecting before packing changes nothing), padded
    positions get zeros before ``inner_attn_ln`` and ``out_proj``.
    """

    def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        shape = (q.shape[0], q.shape[1], attn.num_heads, attn.head_dim)
        out = dilated_attention(q.reshape(shape), k.reshape(shape), v.reshape(shape), attn.segment_lengths,
                                attn.dilation_ratios)
        return out.reshape(q.shape)

    if mask is None or bool(mask.all()):
        out = attend(q, k, v)
    else:
        keep = mask.bool()
        order = torch.argsort((~keep).to(torch.int8), dim=1, stable=True).unsqueeze(-1).expand_as(q)
        packed = [t.gather(1, order) for t in (q, k, v)]
        lengths = keep.sum(dim=1)
        attended = torch.zeros_like(q)
        for length in lengths.unique().tolist():
            if length:
                rows = (lengths == length).nonzero().squeeze(1)
                attended[rows, :length] = attend(*(t.index_select(0, rows)[:, :length] for t in packed))
        out = torch.zeros_like(q).scatter(1, order, attended)
    return attn.out_proj(attn.inner_attn_ln(out))


class TitanBackbone(SlideBackbone):
    """TITAN's vision tower; tokens are occupied grid cells, the context is their 2-D ALiBi bias."""

    encoder: TitanSlideEncoder

    def embed(self, features: torch.Tensor, coords: torch.Tensor, mask: torch.Tensor | None) -> EncodedBag:
        tokens, bias = self.encoder.embed(features, coords, mask)
        return EncodedBag(tokens, bias, bias.token_mask)

    def repeat(self, bag: EncodedBag, n: int) -> EncodedBag:
        bias: AlibiBias = bag.context
        mask = None if bag.token_mask is None else bag.token_mask.repeat_interleave(n, dim=0)
        return EncodedBag(bag.tokens.repeat_interleave(n, dim=0), bias.repeat_interleave(n), mask)

    def slide_embedding(self, tokens: torch.Tensor, bag: EncodedBag) -> torch.Tensor:
        """TITAN's slide embedding ``[B, D]``: ``norm``, then the contrastive pooler over real tokens."""
        return self.encoder.pool(self.encoder.final_norm(tokens), bag.token_mask)

    def run_lora_layer(
        self, index: int, tokens: torch.Tensor, context: Any, lora: LayerLoRA, gene: torch.Tensor,
        task: torch.Tensor | None,
    ) -> torch.Tensor:
        """A TITAN block (:class:`models.titan.TitanBlock`) whose attention reads the LoRA-updated
        q/k/v (the fused ``qkv`` projection split into its three ``D``-wide parts); ``context`` is
        the ALiBi bias, attended block by block as :class:`models.titan.TitanAttention` does."""
        layer = self.layers[index]
        x = layer.norm1(tokens)
        attn = layer.attn
        dq, dk, dv = lora(x, layer.norm1(gene), None if task is None else layer.norm1(task))
        q, k, v = attn.qkv(x).chunk(3, dim=-1)
        batch, n_tokens, dim = x.shape

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.unflatten(-1, (attn.num_heads, dim // attn.num_heads)).transpose(1, 2)  # [B, H, T, d]

        q, k, v = heads(q + dq), heads(k + dk), heads(v + dv)
        bias: AlibiBias = context
        parts = [F.scaled_dot_product_attention(q[:, :, start:stop], k, v, attn_mask=block)
                 for start, stop, block in bias.blocks(q.dtype)]
        out = parts[0] if len(parts) == 1 else torch.cat(parts, dim=2)
        tokens = tokens + attn.proj(out.transpose(1, 2).reshape(batch, n_tokens, dim))
        return tokens + layer.mlp(layer.norm2(tokens))
