"""LongNet encoder with dilated attention, as Prov-GigaPath's slide encoder uses it, in plain PyTorch.

Reference: Ding et al., "LongNet: Scaling Transformers to 1,000,000,000 Tokens" (2023) and the
LongNet fork that Prov-GigaPath (Xu et al., Nature 2024) ships in prov-gigapath/prov-gigapath under
``gigapath/torchscale`` (``component/dilated_attention.py``, ``architecture/encoder.py``,
``component/feedforward_network.py``; configuration ``LongNet_12_layers_768_dim`` with
``EncoderConfig`` defaults: ``subln=True`` hence pre-norm, GELU, LayerNorm eps 1e-5, no attention
dropout). No flash-attn: every attention call is
:func:`torch.nn.functional.scaled_dot_product_attention`.

Dilated attention (one *branch* per pair of segment length ``s`` and dilation ratio ``r``), for
``q, k, v [B, L, H, d]``:

1. ``s' = min(s, L)``; the sequence is zero-padded to a multiple of ``s'`` and cut into segments
   of ``s'`` tokens; each segment is zero-padded to a multiple of ``r``.  The padding rows are
   zero *after* the projections, so a padded key has logit 0 and value 0: it takes part in the
   softmax normaliser exactly as in the reference.
2. Heads are split into ``r`` groups of ``ceil(H / r)`` heads; head group ``g`` attends among the
   positions ``g, g + r, g + 2r, ...`` of each segment (``m = ceil(s' / r)`` tokens).
3. Each branch returns its output and the log-sum-exp ``lse`` of its softmax for the positions and
   heads it covers; elsewhere the branch is absent (output 0, ``lse = -1e8`` as in the reference).
4. The branch outputs are averaged with weights ``softmax_over_branches(lse)``; as in the reference
   the weights are computed without gradient (detached).

Cost per branch is ``O(L * s' / r)``: linear in ``L`` once ``L`` exceeds the segment length, and no
tensor larger than one segment's ``m x m`` scores ever exists (the fused SDPA kernels do not
materialise even that).

Deviation from the reference (documented, deliberate): the reference re-assembles a branch whose
segments needed dilation padding (``s' % r != 0``) by concatenating the *padded* segments before
cutting to ``L``, which shifts every token after the first segment by the padding size (with the
paper's segment lengths: only the 185,363/8 branch, only for bags of more than 185,363 tiles).
Here each segment is cut back to ``s'`` before concatenation, so outputs stay aligned with tokens.
The reference's ``masked_fill(lse == 0, -1e8)`` (which would also drop a covered position whose
log-sum-exp is exactly 0) is not reproduced: coverage is tracked explicitly.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "DilatedAttention",
    "DropPath",
    "FeedForward",
    "LongNetEncoder",
    "LongNetEncoderLayer",
    "attention_with_lse",
    "dilated_attention",
]

# Log-sum-exp given to (position, head) pairs that a branch does not cover; the reference's value.
UNCOVERED_LSE = -1e8
# The extended q/k/v channel width (head dim + 2 bookkeeping channels) is rounded up to this
# multiple, the alignment the fused CUDA kernels want (the CPU kernel runs at full speed with it).
_HEAD_ALIGN = 8
# Re-runs of a branch's attention allowed to bring extremely peaked rows' sink mass into range.
_MAX_SINK_RAISES = 16


def _extended_rows(x: torch.Tensor, role: str) -> torch.Tensor:
    """Rows ``x [B, R, d]`` -> ``[B, R + 2, W]`` with the bookkeeping of :func:`_sink_attention`.

    Row ``R`` is an all-zero *padding* row (the reference's zero padding), row ``R + 1`` the *sink*
    row; ``W = d + 2`` rounded up to a multiple of 8.  Channel ``d`` is 1 on the sink row, for keys
    (so a query's channel ``d`` becomes the sink's logit) and for values (so the output's channel
    ``d`` is the sink's softmax mass).  Channel ``d + 1`` of the values is 1 on every non-sink row
    (real and padding keys alike count in the softmax normaliser).  Queries get zeros (channel
    ``d`` is filled per segment).
    """
    dim = x.shape[-1]
    width = -(-(dim + 2) // _HEAD_ALIGN) * _HEAD_ALIGN
    rows = F.pad(x, (0, width - dim, 0, 2))
    if role == "k":
        rows[:, -1, dim] = 1.0
    elif role == "v":
        rows[:, :-1, dim + 1] = 1.0
        rows[:, -1, dim] = 1.0
    return rows


def _sink_attention(
    q_ext: torch.Tensor, k_ext: torch.Tensor, v_ext: torch.Tensor, dim: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention plus log-sum-exp via the sink key, on extended tensors (see :func:`attention_with_lse`).

    ``q_ext [b, H, m, W]`` (channel ``dim`` is overwritten here), ``k_ext, v_ext [b, H, n + 1, W]``
    whose last key is the sink -> ``out [b, H, m, dim]``, ``lse [b, H, m]`` (float32, no gradient).
    """
    scale = dim**-0.5
    n_keys = k_ext.shape[2] - 1
    # The fused kernels round the (max-subtracted) probabilities to the input dtype before the
    # value product, so the sink mass S is exact only while it is a normal number of that dtype.
    # A row below that has lse - c > log(1 / tiny): its c may be raised by that much (minus a
    # margin) and the call repeated with still c <= lse.  Only very peaked rows need this
    # (lse - c beyond ~9.7 in float16, ~87 in bfloat16 / float32).
    floor = torch.finfo(q_ext.dtype).tiny
    raise_by = -math.log(floor) - 1.0
    with torch.no_grad():
        key_mean = k_ext[:, :, :n_keys, :dim].float().mean(dim=2, keepdim=True)  # [b, H, 1, d]
        bound = (q_ext[..., :dim].float() @ key_mean.transpose(-1, -2)).squeeze(-1) * scale + math.log(n_keys)
    for _ in range(_MAX_SINK_RAISES + 1):
        with torch.no_grad():
            sink_channel = (bound / scale).to(q_ext.dtype)
            q_ext[..., dim] = sink_channel
        out_ext = F.scaled_dot_product_attention(q_ext, k_ext, v_ext, scale=scale)
        with torch.no_grad():
            too_small = out_ext[..., dim] < floor
            if not bool(too_small.any()):
                break
            bound = torch.where(too_small, bound + raise_by, bound)
    mass_real = out_ext[..., dim + 1]
    out = out_ext[..., :dim] / mass_real.unsqueeze(-1)
    with torch.no_grad():
        shift = sink_channel.float() * scale  # the sink logit the kernel saw, after rounding
        tiny = torch.finfo(torch.float32).tiny
        mass_sink = out_ext[..., dim].float()
        lse = shift + torch.log(mass_real.float().clamp_min(tiny)) - torch.log(mass_sink.clamp_min(tiny))
    return out, lse


def attention_with_lse(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax attention and its log-sum-exp from ``scaled_dot_product_attention`` (usually one call).

    ``q, k, v [b, H, m, d]`` -> ``out [b, H, m, d]`` (dtype of ``q``) and
    ``lse [b, H, m]`` (float32, no gradient) with ``lse_i = log sum_j exp(q_i . k_j / sqrt(d))``.

    The public SDPA returns no log-sum-exp, and recomputing it explicitly would cost one more
    ``m x m`` score pass (about 3x the fused attention on CPU).  Instead one extra *sink* key is
    appended whose logit is a chosen per-query constant ``c_i`` (carried by one extra query/key
    channel), and two extra value channels collect the softmax mass on the sink, ``S``, and on the
    other keys, ``A = 1 - S``.  Then, exactly,

        out = out_ext[..., :d] / A          lse = c + log(A) - log(S).

    ``c`` is Jensen's lower bound ``c_i = q_i . mean_j(k_j) / sqrt(d) + log(m) <= lse_i``, so
    ``A >= 1/2`` (the division loses nothing).  ``S = sigmoid(c - lse)`` is exact unless a row is
    very peaked (``lse - c`` beyond ~87 in float32/bfloat16, ~9.7 in float16, where ``S`` leaves
    the normal range of the kernel's probabilities); such rows are detected, their ``c`` is raised
    by the amount that proves safe, and the call is repeated, which leaves every other row
    unchanged.  ``c`` cancels from ``out`` identically, so gradients are those of plain attention.
    """
    b, h, m, d = q.shape
    keys = torch.cat([torch.arange(m, device=q.device), torch.tensor([m + 1], device=q.device)])

    def rows(x: torch.Tensor, role: str) -> torch.Tensor:
        return _extended_rows(x.reshape(b * h, m, d), role)

    q_ext = rows(q, "q")[:, :m].reshape(b, h, m, -1)
    k_ext = rows(k, "k").index_select(1, keys).view(b, h, m + 1, -1)
    v_ext = rows(v, "v").index_select(1, keys).view(b, h, m + 1, -1)
    return _sink_attention(q_ext, k_ext, v_ext, d)


def _branch_rows(length: int, heads: int, segment: int, ratio: int, device: torch.device) -> torch.Tensor:
    """Row indices ``long [n, H, m]`` of one branch into the flattened ``[L * H]`` (position, head) rows.

    Head ``h`` of segment ``j`` attends over positions ``j * s' + g(h) + r * t``, ``t < m``, with
    ``s' = min(segment, L)``, ``m = ceil(s' / r)`` and head group ``g(h) = h // ceil(H / r)``;
    positions in the zero padding (past the segment's ``s'`` tokens, or past ``L``) point at the
    padding row ``L * H``.
    """
    seg = min(segment, length)
    n_seg = -(-length // seg)
    slots = -(-seg // ratio)
    head = torch.arange(heads, device=device)
    within = (head // -(-heads // ratio))[:, None] + ratio * torch.arange(slots, device=device)  # [H, m]
    pos = torch.arange(n_seg, device=device)[:, None, None] * seg + within  # [n, H, m]
    real = (within < seg) & (pos < length)
    return torch.where(real, pos * heads + head[:, None], length * heads)


def dilated_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    segment_lengths: Sequence[int],
    dilation_ratios: Sequence[int],
) -> torch.Tensor:
    """LongNet dilated attention, ``q, k, v [B, L, H, d] -> [B, L, H, d]`` (see the module docstring).

    Every (position, head) pair is one row of ``[B, L * H (+ padding row, sink row), W]``; a branch
    gathers its sparse ``[B * n, H, m]`` layout with one ``index_select`` per tensor, attends with
    :func:`_sink_attention`, and its weighted output is added back with one ``index_add``.  Branch
    weights are ``softmax(lse)`` over branches, computed without gradient like the reference's
    ``torch.no_grad()`` block in ``DilatedAttention.scattering``.
    """
    batch, length, heads, dim = q.shape
    n_rows = length * heads
    q_rows, k_rows, v_rows = (
        _extended_rows(x.reshape(batch, n_rows, dim), role) for x, role in ((q, "q"), (k, "k"), (v, "v"))
    )
    branches = []
    for segment, ratio in zip(segment_lengths, dilation_ratios, strict=True):
        index = _branch_rows(length, heads, segment, ratio, q.device)
        n_seg, _, slots = index.shape
        flat = index.flatten()
        key_flat = F.pad(index, (0, 1), value=n_rows + 1).flatten()  # + the sink key
        q_ext = q_rows.index_select(1, flat).view(batch * n_seg, heads, slots, -1)
        k_ext = k_rows.index_select(1, key_flat).view(batch * n_seg, heads, slots + 1, -1)
        v_ext = v_rows.index_select(1, key_flat).view(batch * n_seg, heads, slots + 1, -1)
        out, lse = _sink_attention(q_ext, k_ext, v_ext, dim)
        branches.append((flat, out.reshape(batch, -1, dim), lse.reshape(batch, -1)))

    with torch.no_grad():
        lse_rows = q.new_full((len(branches), batch, n_rows + 1), UNCOVERED_LSE, dtype=torch.float32)
        for i, (flat, _, lse) in enumerate(branches):
            lse_rows[i].index_copy_(1, flat, lse)  # the padding row's value is never read
        weights = torch.softmax(lse_rows, dim=0).to(q.dtype)
    mixed = q.new_zeros(batch, n_rows + 1, dim)
    for weight, (flat, out, _) in zip(weights, branches, strict=True):
        mixed.index_add_(1, flat, out * weight.index_select(1, flat).unsqueeze(-1))
    return mixed[:, :n_rows].view(batch, length, heads, dim)


class DilatedAttention(nn.Module):
    """Multi-head dilated self-attention with sub-LayerNorm (``inner_attn_ln``) before ``out_proj``.

    ``x [B, L, D]`` (and optionally ``mask bool [B, L]``, True = real token) -> ``[B, L, D]``.
    Parameter names follow the reference checkpoint: ``q_proj``, ``k_proj``, ``v_proj``,
    ``out_proj`` (all with bias), ``inner_attn_ln`` (LayerNorm over ``D``).

    Masking: a batch whose bags differ in length is attended per distinct length over real tokens only,
    so a padded and masked bag gets exactly the unpadded bag's result (the segmentation depends on
    the bag's own length, so the real tokens cannot share one padded layout); padded positions
    get zeros before ``out_proj``.
    """

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        segment_lengths: Sequence[int],
        dilation_ratios: Sequence[int],
        layernorm_eps: float = 1e-5,
    ) -> None:
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} is not divisible by num_heads {num_heads}")
        if len(segment_lengths) != len(dilation_ratios) or not segment_lengths:
            raise ValueError("segment_lengths and dilation_ratios must be non-empty and of equal length")
        if min(segment_lengths) < 1 or min(dilation_ratios) < 1:
            raise ValueError("segment lengths and dilation ratios must be positive")
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.head_dim = embed_dim // num_heads
        self.segment_lengths = tuple(int(s) for s in segment_lengths)
        self.dilation_ratios = tuple(int(r) for r in dilation_ratios)
        self.q_proj = nn.Linear(embed_dim, embed_dim)
        self.k_proj = nn.Linear(embed_dim, embed_dim)
        self.v_proj = nn.Linear(embed_dim, embed_dim)
        self.out_proj = nn.Linear(embed_dim, embed_dim)
        self.inner_attn_ln = nn.LayerNorm(embed_dim, eps=layernorm_eps)

    def _attend(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, _ = x.shape
        shape = (batch, length, self.num_heads, self.head_dim)
        q = self.q_proj(x).view(shape)
        k = self.k_proj(x).view(shape)
        v = self.v_proj(x).view(shape)
        return dilated_attention(q, k, v, self.segment_lengths, self.dilation_ratios).reshape(batch, length, -1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        if mask is None or bool(mask.all()):
            attn = self._attend(x)
        else:
            # Real tokens first (stable, so in order), then one batched call per distinct bag length:
            # a bag's segmentation depends on its own length, so bags of equal length share a call.
            keep = mask.bool()
            order = torch.argsort((~keep).to(torch.int8), dim=1, stable=True).unsqueeze(-1).expand_as(x)
            packed = x.gather(1, order)
            lengths = keep.sum(dim=1)
            attended = torch.zeros_like(x)
            for length in lengths.unique().tolist():
                if length:
                    rows = (lengths == length).nonzero().squeeze(1)
                    attended[rows, :length] = self._attend(packed.index_select(0, rows)[:, :length])
            attn = torch.zeros_like(x).scatter(1, order, attended)
        return self.out_proj(self.inner_attn_ln(attn))


class DropPath(nn.Module):
    """Stochastic depth: zero a sample's residual branch with probability ``p`` (scaled by ``1/(1-p)``)."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = float(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = 1.0 - self.p
        shape = (x.shape[0],) + (1,) * (x.dim() - 1)
        return x * x.new_empty(shape).bernoulli_(keep).div_(keep)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class FeedForward(nn.Module):
    """``fc1 -> GELU (in float32) -> ffn_layernorm -> fc2 -> dropout``, ``[..., D] -> [..., D]``.

    The sub-LayerNorm over the hidden width (``ffn_layernorm``) is LongNet's ``subln`` design;
    the GELU runs in float32 as in the reference ``FeedForwardNetwork``.
    """

    def __init__(self, embed_dim: int, ffn_dim: int, dropout: float, layernorm_eps: float = 1e-5) -> None:
        super().__init__()
        self.fc1 = nn.Linear(embed_dim, ffn_dim)
        self.ffn_layernorm = nn.LayerNorm(ffn_dim, eps=layernorm_eps)
        self.fc2 = nn.Linear(ffn_dim, embed_dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = self.fc1(x)
        hidden = F.gelu(hidden.float()).to(hidden.dtype)
        return self.dropout(self.fc2(self.ffn_layernorm(hidden)))


class LongNetEncoderLayer(nn.Module):
    """Pre-norm LongNet block, ``x [B, L, D]`` (+ ``mask [B, L]``) -> ``[B, L, D]``::

        x = x + drop_path(dropout(self_attn(self_attn_layer_norm(x))))
        x = x + drop_path(ffn(final_layer_norm(x)))
    """

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        ffn_dim: int,
        segment_lengths: Sequence[int],
        dilation_ratios: Sequence[int],
        dropout: float = 0.0,
        drop_path: float = 0.0,
        layernorm_eps: float = 1e-5,
    ) -> None:
        super().__init__()
        self.self_attn = DilatedAttention(embed_dim, num_heads, segment_lengths, dilation_ratios, layernorm_eps)
        self.self_attn_layer_norm = nn.LayerNorm(embed_dim, eps=layernorm_eps)
        self.ffn = FeedForward(embed_dim, ffn_dim, dropout, layernorm_eps)
        self.final_layer_norm = nn.LayerNorm(embed_dim, eps=layernorm_eps)
        self.dropout = nn.Dropout(dropout)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.drop_path(self.dropout(self.self_attn(self.self_attn_layer_norm(x), mask)))
        return x + self.drop_path(self.ffn(self.final_layer_norm(x)))


class LongNetEncoder(nn.Module):
    """``depth`` LongNet blocks and the output LayerNorm (``layers``, ``layer_norm``: checkpoint names).

    Stochastic depth grows linearly from 0 at the first block to ``drop_path_rate`` at the last,
    as ``np.linspace(0, drop_path_rate, depth)`` in the reference ``EncoderLayer``.
    """

    def __init__(
        self,
        depth: int,
        embed_dim: int,
        num_heads: int,
        ffn_dim: int,
        segment_lengths: Sequence[int],
        dilation_ratios: Sequence[int],
        dropout: float = 0.0,
        drop_path_rate: float = 0.0,
        layernorm_eps: float = 1e-5,
    ) -> None:
        super().__init__()
        rates = [drop_path_rate * i / (depth - 1) if depth > 1 else 0.0 for i in range(depth)]
        self.layers = nn.ModuleList(
            LongNetEncoderLayer(
                embed_dim, num_heads, ffn_dim, segment_lengths, dilation_ratios, dropout, rate, layernorm_eps
            )
            for rate in rates
        )
        self.layer_norm = nn.LayerNorm(embed_dim, eps=layernorm_eps)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x, mask)
        return self.layer_norm(x)
