"""ModalTune's Modal Adapter: injector / extractor interaction blocks and the prompt self-attention.

Reference: ModalTune (ICCV 2025) Sec. 3.3 (Eq. 1-3) and Supplement Table 6; the release,
martellab-sri/ModalTune ``models/vitadapter/adapter_modules.py`` (``Injector``, ``Extractor``,
``InteractionBlockWithCls_*``, ``CrossAttentionLayer``, ``SelfAttentionLayer``, ``FFNLayer``),
itself adapted from ViT-Adapter (Chen et al., 2022; czczup/ViT-Adapter).

Notation: ``x [B, N, D]`` are the slide encoder's patch tokens (the CLS token is kept aside),
``c [B, T, D]`` the adapter tokens (one task prompt, then the compressed pathway tokens) and
``pos [T, D]`` their learned positional embedding. Every attention here works in a compressed
width ``d = int(D * ratio)`` (the release's ``with_cffn`` / ``cffn_ratio`` 0.25: ``d = 192`` for
``D = 768``), with ``num_heads`` heads (12 in the paper, head width 16).

Injector (Eq. 1), adapter tokens into patch tokens::

    x <- x + gamma * (x + Attn(LN_q(x), LN_kv(c) + pos, LN_kv(c) + pos))

Extractor (Eq. 2), patch tokens into adapter tokens, then an MLP::

    c <- c + (c + Attn(LN_q(c) + pos, LN_kv(x), LN_kv(x)))
    c <- c + DropPath(MLP(c)),   MLP = Linear(D, d) . ReLU . Linear(d, D) . LN

Both keep the release's double residual: its ``CrossAttentionLayer`` (pre-norm branch) already
returns ``query + attention`` and the injector / extractor add the query once more, so the
injector's update is ``gamma * (x + attention)``. With the release's initial ``gamma = 0``
(Table 6, "Adapter initial gamma 0") the injector leaves the patch tokens unchanged at
initialisation, so a freshly built model runs the frozen encoder exactly.

Prompt self-attention (before every interaction block but the first, ``use_prompt_sa``)::

    c <- c + Dropout(Attn(LN(c) + pos, LN(c) + pos, LN(c)))

The last block runs two extra extractors (``use_extra_extractor``). Every attention is
``torch.nn.functional.scaled_dot_product_attention``; the extractor masks padded patches out of
its keys, so padding never reaches the adapter tokens.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from models.longnet import DropPath

__all__ = [
    "CompressedAttention",
    "Extractor",
    "InteractionBlock",
    "Injector",
    "PromptSelfAttention",
    "interaction_groups",
    "validate_interaction_groups",
]


def interaction_groups(depth: int, n_blocks: int = 3) -> tuple[tuple[int, int], ...]:
    """Split ``depth`` encoder layers into ``min(n_blocks, depth)`` contiguous, near-equal groups.

    Returns inclusive ``(first, last)`` layer indexes per interaction block, larger groups first.
    This reproduces both release configurations, ``(0, 3), (4, 7), (8, 11)`` for Prov-GigaPath's
    12 layers and ``(0, 1), (2, 3), (4, 5)`` for TITAN's 6, and gives a shallow encoder one layer
    per block: 2 layers -> ``(0, 0), (1, 1)`` (two blocks), 1 layer -> ``(0, 0)`` (one block).
    """
    if depth < 1 or n_blocks < 1:
        raise ValueError(f"depth and n_blocks must be positive, got {depth} and {n_blocks}")
    n = min(n_blocks, depth)
    size, extra = divmod(depth, n)
    groups, start = [], 0
    for block in range(n):
        stop = start + size + (1 if block < extra else 0)
        groups.append((start, stop - 1))
        start = stop
    return tuple(groups)


def validate_interaction_groups(groups: Sequence[Sequence[int]], depth: int) -> tuple[tuple[int, int], ...]:
    """Check release-style interaction indexes against an encoder of ``depth`` layers.

    Each group is an inclusive ``[first, last]`` pair; groups must be contiguous and end at the last
    layer (the release runs only the layers before the first group and those inside groups, so a
    gap or a short last group would silently skip encoder layers).
    """
    pairs = tuple((int(g[0]), int(g[-1])) for g in groups)
    if not pairs:
        raise ValueError("at least one interaction group is required")
    previous = pairs[0][0] - 1
    if previous < -1:
        raise ValueError(f"interaction groups start at a negative layer: {pairs}")
    for first, last in pairs:
        if first != previous + 1 or last < first:
            raise ValueError(f"interaction groups must be contiguous, non-empty [first, last] ranges: {pairs}")
        previous = last
    if previous != depth - 1:
        raise ValueError(f"interaction groups {pairs} must end at the encoder's last layer ({depth - 1})")
    return pairs


class CompressedAttention(nn.Module):
    """Multi-head attention in a compressed width, the core of the release's attention layers.

    ``forward(query [B, Q, D], key [B, K, D], value [B, K, D], key_mask bool [B, K] | None)
    -> [B, Q, D]``. Layers (the release's ``q_proj`` + ``nn.MultiheadAttention(d, H, kdim=D,
    vdim=D)`` + ``output_proj``, same parameter count)::

        q = q_proj(q_in(query))       q_in: Linear(D, d), q_proj: Linear(d, d)
        k = k_proj(key)               Linear(D, d)
        v = v_proj(value)             Linear(D, d)
        out = expand(out_proj(SDPA(q, k, v)))   out_proj: Linear(d, d), expand: Linear(d, D)

    ``key_mask`` (True = attend) drops keys; ``dropout`` is applied to the attention weights in
    training, as ``nn.MultiheadAttention``'s ``dropout``.
    """

    def __init__(self, dim: int, num_heads: int, ratio: float, dropout: float = 0.0) -> None:
        super().__init__()
        inner = int(dim * ratio)
        if inner < 1 or inner % num_heads:
            raise ValueError(
                f"compressed width {inner} (= int({dim} * {ratio})) must be divisible by {num_heads} heads"
            )
        self.num_heads = num_heads
        self.dropout = float(dropout)
        self.q_in = nn.Linear(dim, inner)
        self.q_proj = nn.Linear(inner, inner)
        self.k_proj = nn.Linear(dim, inner)
        self.v_proj = nn.Linear(dim, inner)
        self.out_proj = nn.Linear(inner, inner)
        self.expand = nn.Linear(inner, dim)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """The release's ``_reset_parameters``: Xavier-uniform for every weight matrix; the inner
        attention's biases zero (``nn.MultiheadAttention``); ``q_in`` / ``expand`` biases keep
        ``nn.Linear``'s default (owners that re-initialise them, the interaction blocks, do so)."""
        for linear in (self.q_in, self.q_proj, self.k_proj, self.v_proj, self.out_proj, self.expand):
            nn.init.xavier_uniform_(linear.weight)
        for linear in (self.q_in, self.expand):
            bound = linear.in_features**-0.5
            nn.init.uniform_(linear.bias, -bound, bound)
        for linear in (self.q_proj, self.k_proj, self.v_proj, self.out_proj):
            nn.init.zeros_(linear.bias)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.unflatten(-1, (self.num_heads, -1)).transpose(1, 2)  # [B, H, L, d / H]

    def forward(
        self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, key_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        q = self._heads(self.q_proj(self.q_in(query)))
        k = self._heads(self.k_proj(key))
        v = self._heads(self.v_proj(value))
        attn_mask = None if key_mask is None else key_mask.bool()[:, None, None, :]
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, dropout_p=self.dropout if self.training else 0.0
        )
        return self.expand(self.out_proj(out.transpose(1, 2).flatten(2)))


class _CrossAttention(nn.Module):
    """Pre-norm cross-attention, the release's ``CrossAttentionLayer(normalize_before=True)``:
    ``norm`` on the queries, ``norm_kq`` on the attended tokens, :class:`CompressedAttention`."""

    def __init__(self, dim: int, num_heads: int, ratio: float) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.norm_kv = nn.LayerNorm(dim)
        self.attn = CompressedAttention(dim, num_heads, ratio)

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Interaction-block initialisation: unit LayerNorms, Xavier weights, all biases zero."""
        self.norm.reset_parameters()
        self.norm_kv.reset_parameters()
        self.attn.reset_parameters()
        nn.init.zeros_(self.attn.q_in.bias)
        nn.init.zeros_(self.attn.expand.bias)


class Injector(_CrossAttention):
    """Eq. 1: ``x + gamma * (x + Attn(LN(x), LN_kv(c) + pos))``; ``x [B, N, D]`` queries the adapter
    tokens ``c [B, T, D]`` (positions ``pos [T, D]`` on keys and values) -> ``[B, N, D]``.

    ``gamma [D]`` starts at ``init_gamma`` (0 in the paper: the injector is the identity at
    initialisation).
    """

    def __init__(self, dim: int, num_heads: int, ratio: float, init_gamma: float = 0.0) -> None:
        super().__init__(dim, num_heads, ratio)
        self.init_gamma = float(init_gamma)
        self.gamma = nn.Parameter(torch.full((dim,), self.init_gamma))

    @torch.no_grad()
    def reset_parameters(self) -> None:
        super().reset_parameters()
        self.gamma.fill_(self.init_gamma)

    def forward(self, x: torch.Tensor, c: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        memory = self.norm_kv(c) + pos
        return x + self.gamma * (x + self.attn(self.norm(x), memory, memory))


class Extractor(_CrossAttention):
    """Eq. 2: adapter tokens ``c [B, T, D]`` (positions ``pos [T, D]`` on the queries) attend over the
    real patch tokens ``x [B, N, D]`` (``key_mask [B, N]``), then a pre-norm MLP with stochastic depth.

    ``c <- 2 c + Attn(LN(c) + pos, LN_kv(x))`` (the release's double residual), then
    ``c <- c + DropPath(fc2(ReLU(fc1(LN_ffn(c)))))`` with hidden width ``int(D * ratio)``.
    """

    def __init__(self, dim: int, num_heads: int, ratio: float, drop_path: float = 0.0) -> None:
        super().__init__(dim, num_heads, ratio)
        hidden = int(dim * ratio)
        self.ffn = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, dim))
        self.drop_path = DropPath(drop_path)

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Attention as :class:`_CrossAttention`; MLP linears ``trunc_normal(std 0.02)``, zero bias
        (the release's ``_init_weights`` over the interaction blocks)."""
        super().reset_parameters()
        for module in self.ffn:
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                module.reset_parameters()

    def forward(
        self, c: torch.Tensor, x: torch.Tensor, pos: torch.Tensor, key_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        memory = self.norm_kv(x)
        c = c + (c + self.attn(self.norm(c) + pos, memory, memory, key_mask))
        return c + self.drop_path(self.ffn(c))


class PromptSelfAttention(nn.Module):
    """Self-attention among the adapter tokens (the release's ``SelfAttentionLayer``, pre-norm).

    ``c [B, T, D]``, ``pos [T, D]`` -> ``c + Dropout(Attn(LN(c) + pos, LN(c) + pos, LN(c)))``:
    positions on queries and keys only; ``dropout`` (the release's ``prompt_dropout``, 0 in the
    paper) on the attention weights and on the update.
    """

    def __init__(self, dim: int, num_heads: int, ratio: float, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.attn = CompressedAttention(dim, num_heads, ratio, dropout)
        self.dropout = nn.Dropout(dropout)

    @torch.no_grad()
    def reset_parameters(self) -> None:
        self.norm.reset_parameters()
        self.attn.reset_parameters()

    def forward(self, c: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        normed = self.norm(c)
        query = normed + pos
        return c + self.dropout(self.attn(query, query, normed))


class InteractionBlock(nn.Module):
    """One Modal Adapter block: an :class:`Injector` before a group of encoder layers, an
    :class:`Extractor` (plus ``extra_extractors`` more, 2 in the release's last block) after it.

    The encoder layers in between belong to the frozen encoder; the model runs them (so that they
    can be checkpointed), calling :meth:`inject` before and :meth:`extract` after.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        ratio: float,
        init_gamma: float = 0.0,
        drop_path: float = 0.0,
        extra_extractors: int = 0,
    ) -> None:
        super().__init__()
        self.injector = Injector(dim, num_heads, ratio, init_gamma)
        self.extractor = Extractor(dim, num_heads, ratio, drop_path)
        self.extra_extractors = nn.ModuleList(
            Extractor(dim, num_heads, ratio, drop_path) for _ in range(extra_extractors)
        )
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        self.injector.reset_parameters()
        for extractor in (self.extractor, *self.extra_extractors):
            extractor.reset_parameters()

    def inject(self, x: torch.Tensor, c: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """Patch tokens ``[B, N, D]`` after injection of the adapter tokens ``c [B, T, D]``."""
        return self.injector(x, c, pos)

    def extract(
        self, c: torch.Tensor, x: torch.Tensor, pos: torch.Tensor, key_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Adapter tokens ``[B, T, D]`` after extraction from the patch tokens ``x [B, N, D]``."""
        c = self.extractor(c, x, pos, key_mask)
        for extractor in self.extra_extractors:
            c = extractor(c, x, pos, key_mask)
        return c
