"""TransMIL: a two-layer Nyström-attention transformer with a pyramid position encoding over a bag.

Architecture (Shao et al., NeurIPS 2021, "TransMIL: Transformer based correlated multiple instance
learning for whole slide image classification", official code szc19990412/TransMIL
``models/TransMIL.py``; ModalTune, ICCV 2025, compares against it as "TransMIL")::

    features [B, N, D]
      -> Linear(D, 512) + ReLU                                         [B, N, 512]
      -> square padding: append the bag's first ceil(sqrt N)^2 - N patches again, so the
         S = ceil(sqrt N)^2 tokens fill a square grid (row-major)     [B, S, 512]
      -> prepend a learned CLS token                                   [B, 1 + S, 512]
      -> TransLayer: x + NystromAttention(LayerNorm(x))               (8 heads x 64, 256 landmarks,
                                                                       6 pinv iterations, kernel-33
                                                                       value residual, dropout 0.1)
      -> PPEG on the S grid tokens: x + dwconv7(x) + dwconv5(x) + dwconv3(x); CLS passes through
      -> TransLayer
      -> LayerNorm, CLS token                                          embedding [B, 512]
      -> head Linear(512, K)                                           logits [B, K]

At ``D = 1536`` and ``K = 4`` this is 2,935,316 parameters, the count of the original repository's
layer definitions (``nystrom_attention.NystromAttention`` with ``dim_head = dim // 8``,
``heads = 8``, ``num_landmarks = dim // 2``, ``residual = True``). SurvPath's port
(mahmoodlab/SurvPath ``models/model_TMIL.py``) is a different, smaller model (one single-head
Nyström layer at width 256, mean pooling, no CLS token or PPEG: 525,828 parameters at ``D = 1536``),
so the original is followed here.

The Nyström attention (Xiong et al., AAAI 2021, "Nyströmformer") is written from its definition in
lucidrains' ``nystrom_attention`` package, which the reference imports: the sequence is virtually
left-padded with zero tokens to a multiple of the landmark count ``m``; landmarks are the means of
``m`` consecutive segments; ``out = softmax(Q K~^T) pinv(softmax(Q~ K~^T)) softmax(Q~ K^T) V`` plus
a depthwise convolution (kernel 33 along the sequence) of ``V``. Every product is ``L x m`` or
``m x m``: memory is linear in the bag length.

Masking guarantee (tested): for every bag of a batch, the embedding and logits equal, up to
floating-point summation order, those of the same bag passed alone and unpadded, with its real
patches in the order they appear in the batch (padding may sit anywhere; ``mask`` False marks it).
Each bag gets its own square grid, its own virtual left padding and landmark segmentation, and its
own PPEG canvas; padding never enters an attention, a landmark or a convolution. For a single
unpadded bag the computation is the reference's up to floating-point summation order
(``attn1 @ (attn2_inv @ (attn3 @ V))`` instead of ``(attn1 @ attn2_inv) @ (attn3 @ V)``; the
virtual left padding folded into one key, see :class:`NystromAttention`). One deviation concerns
batches: the reference scales the pseudo-inverse's initial guess by the maximum over the whole
batch, which couples the bags of a batch; here it is the maximum over each bag's heads, identical
for a batch of one (the reference trains with batch size 1).
"""

from __future__ import annotations


import torch
import torch.nn.functional as F
from torch import nn

from models.base import BenchModel, ModelContext, bag_mask
from models.registry import register_model

__all__ = ["PPEG", "NystromAttention", "TransLayer", "TransMIL", "iterative_pinv", "transmil"]


def iterative_pinv(matrix: torch.Tensor, iterations: int = 6) -> torch.Tensor:
    """Approximate Moore-Penrose pseudo-inverse of ``matrix [B, ..., m, m]`` (per leading index).

    The cubically convergent iteration of Razavi et al. (2014) used by Nyströmformer (Xiong et al.
    2021, eq. 16) with 6 iterations in TransMIL: ``Z0 = A^T / (max_i ||A_i.||_1 * max_j ||A_.j||_1)``,
    ``Z <- Z (13 I - A Z (15 I - A Z (7 I - A Z))) / 4``. The initial scaling is taken per entry of
    the first dimension (one bag, all its heads) so that the bags of a batch stay independent.
    """
    magnitude = matrix.abs()
    reduce_dims = tuple(range(1, matrix.dim() - 1))
    row_sums = magnitude.sum(dim=-1).amax(dim=reduce_dims)
    col_sums = magnitude.sum(dim=-2).amax(dim=reduce_dims)
    scale = (row_sums * col_sums).view(-1, *([1] * (matrix.dim() - 1)))
    z = matrix.transpose(-1, -2) / scale
    identity = torch.eye(matrix.shape[-1], dtype=matrix.dtype, device=matrix.device)
    for _ in range(iterations):
        az = matrix @ z
        z = 0.25 * z @ (13 * identity - az @ (15 * identity - az @ (7 * identity - az)))
    return z


class NystromAttention(nn.Module):
    """Multi-head Nyström self-attention over variable-length sequences stored left-aligned.

    ``forward(x [B, L, dim], lengths long [B]) -> [B, L, dim]``: bag ``b`` occupies positions
    ``< lengths[b]``; later positions are padding, ignored, and zero in the output. Per bag, with
    ``n = lengths[b]``, ``l = ceil(n / m)`` and ``p = m l - n`` virtual zero tokens on the left (as the
    reference pads), landmark ``j`` is the mean over the ``l`` (virtual + real) tokens of segment
    ``j``. The ``p`` virtual tokens are zero keys with zero values: in ``softmax(Q~ K^T) V`` they only
    add ``p`` to each softmax denominator, which one extra zero key with logit bias ``log p``
    reproduces exactly without materialising them.
    """

    def __init__(
        self,
        dim: int,
        heads: int = 8,
        dim_head: int = 64,
        num_landmarks: int = 256,
        pinv_iterations: int = 6,
        residual_kernel: int = 33,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        inner = heads * dim_head
        self.heads = heads
        self.dim_head = dim_head
        self.num_landmarks = num_landmarks
        self.pinv_iterations = pinv_iterations
        self.scale = dim_head**-0.5
        self.to_qkv = nn.Linear(dim, 3 * inner, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner, dim), nn.Dropout(dropout))
        self.res_conv = nn.Conv2d(
            heads, heads, (residual_kernel, 1), padding=(residual_kernel // 2, 0), groups=heads, bias=False
        )

    def _split_heads(self, t: torch.Tensor) -> torch.Tensor:
        return t.unflatten(-1, (self.heads, self.dim_head)).transpose(1, 2)

    def _landmarks(self, t: torch.Tensor, segment: torch.Tensor, seg_len: torch.Tensor) -> torch.Tensor:
        """Segment means ``[B, m, inner]`` of ``t [B, L, inner]`` (padding rows of ``t`` are zero)."""
        batch, length, inner = t.shape
        m = self.num_landmarks
        flat = (torch.arange(batch, device=t.device)[:, None] * m + segment).reshape(-1)
        sums = t.new_zeros(batch * m, inner).index_add_(0, flat, t.reshape(batch * length, inner))
        return sums.view(batch, m, inner) / seg_len.to(t.dtype)[:, None, None]

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        batch, length, _ = x.shape
        m = self.num_landmarks
        positions = torch.arange(length, device=x.device)
        valid = positions[None] < lengths[:, None]  # [B, L]
        q, k, v = (self.to_qkv(x) * valid[..., None]).chunk(3, dim=-1)  # each [B, L, inner]
        q = q * self.scale

        seg_len = (lengths + m - 1) // m  # l = ceil(n / m), [B]
        lead = seg_len * m - lengths  # virtual zero tokens on the left, [B]
        segment = ((positions[None] + lead[:, None]) // seg_len[:, None]).clamp_max(m - 1)  # [B, L]
        q_land = self._split_heads(self._landmarks(q, segment, seg_len))  # [B, h, m, d]
        k_land = self._split_heads(self._landmarks(k, segment, seg_len))
        q, k, v = map(self._split_heads, (q, k, v))  # [B, h, L, d]

        kernel_inv = iterative_pinv(torch.softmax(q_land @ k_land.transpose(-1, -2), dim=-1), self.pinv_iterations)
        # softmax(Q~ K^T) V over the real keys plus one zero "sink" key standing for the virtual ones.
        key_bias = torch.zeros(batch, length + 1, dtype=q.dtype, device=x.device)
        key_bias[:, :length].masked_fill_(~valid, float("-inf"))
        key_bias[:, length] = lead.to(q.dtype).log()  # log 0 = -inf when there is no virtual token
        landmark_values = F.scaled_dot_product_attention(
            q_land,
            F.pad(k, (0, 0, 0, 1)),
            F.pad(v, (0, 0, 0, 1)),
            attn_mask=key_bias[:, None, None, :],
            scale=1.0,
        )  # [B, h, m, d]
        out = F.scaled_dot_product_attention(q, k_land, kernel_inv @ landmark_values, scale=1.0)
        out = out + self.res_conv(v)
        out = self.to_out(out.transpose(1, 2).flatten(2))
        return out * valid[..., None]


class TransLayer(nn.Module):
    """Pre-norm residual Nyström attention block of TransMIL: ``x + attn(LayerNorm(x))``.

    Width ``dim``; 8 heads of ``dim // 8``, ``dim // 2`` landmarks, as in the reference.
    """

    def __init__(self, dim: int, heads: int = 8, pinv_iterations: int = 6, dropout: float = 0.1) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.attn = NystromAttention(
            dim,
            heads=heads,
            dim_head=dim // heads,
            num_landmarks=dim // 2,
            pinv_iterations=pinv_iterations,
            dropout=dropout,
        )

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return x + self.attn(self.norm(x), lengths)


class PPEG(nn.Module):
    """Pyramid position encoding generator: ``x + dwconv7(x) + dwconv5(x) + dwconv3(x)`` on a grid.

    ``forward(grid [B, C, S, S]) -> [B, C, S, S]``; depthwise convolutions with bias, zero padding.
    A bag whose square is smaller than the canvas sits in its top-left corner with zeros elsewhere,
    which is exactly the zero padding it would see alone.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(dim, dim, k, padding=k // 2, groups=dim) for k in (7, 5, 3))

    def forward(self, grid: torch.Tensor) -> torch.Tensor:
        return grid + sum(conv(grid) for conv in self.convs)


def _ceil_sqrt(n: torch.Tensor) -> torch.Tensor:
    """Exact ``ceil(sqrt(n))`` for a long tensor of positive counts."""
    side = torch.sqrt(n.double()).ceil().long()
    side = side + (side * side < n).long()
    return side - ((side - 1) * (side - 1) >= n).long()


class TransMIL(BenchModel):
    """TransMIL over a bag of patch features; the embedding is the normalised CLS token.

    ``forward_features(batch) -> [B, dim]`` reads ``features [B, N, D]`` and optional ``mask [B, N]``
    (True = real patch). ``embed_dim = dim`` (512 in the reference).
    """

    modalities = ("wsi",)

    def __init__(
        self, feature_dim: int, n_outputs: int, dim: int = 512, heads: int = 8, pinv_iterations: int = 6
    ) -> None:
        super().__init__()
        self.embed_dim = dim
        self.fc1 = nn.Sequential(nn.Linear(feature_dim, dim), nn.ReLU())
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim))
        self.layer1 = TransLayer(dim, heads, pinv_iterations)
        self.pos_layer = PPEG(dim)
        self.layer2 = TransLayer(dim, heads, pinv_iterations)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, n_outputs)

    def _grid_sequence(
        self, h: torch.Tensor, mask: torch.Tensor, counts: torch.Tensor, side: torch.Tensor
    ) -> torch.Tensor:
        """``[B, 1 + max S, dim]``: CLS, then each bag's ``S = side^2`` grid tokens, then zeros.

        Grid token ``t`` of bag ``b`` is its real patch ``t mod n_b`` (real patches in order): the
        reference's square padding repeats the first ``S - n`` patches after the ``n`` real ones.
        """
        batch = h.shape[0]
        rows = torch.arange(batch, device=h.device)[:, None]
        order = torch.argsort((~mask).to(torch.uint8), dim=1, stable=True)  # real patches first
        grid_len = int(side.max()) ** 2
        t = torch.arange(grid_len, device=h.device)[None]
        tokens = h[rows, order[rows, t % counts[:, None]]]  # [B, max S, dim]
        tokens = tokens * (t < (side * side)[:, None])[..., None]
        return torch.cat([self.cls_token.expand(batch, -1, -1).to(h.dtype), tokens], dim=1)

    def _position_encoding(self, seq: torch.Tensor, side: torch.Tensor) -> torch.Tensor:
        """PPEG on each bag's own ``side x side`` grid, laid out on a shared zero canvas."""
        batch, length, dim = seq.shape
        canvas_side = int(side.max())
        rows = torch.arange(batch, device=seq.device)[:, None]
        cls, tokens = seq[:, :1], seq[:, 1:]
        grid = torch.arange(canvas_side, device=seq.device)
        r, c = grid[None, :, None], grid[None, None, :]
        b_side = side[:, None, None]
        inside = (r < b_side) & (c < b_side)  # [B, S, S]
        zero_row = length - 1  # index of the zero row appended below
        source = torch.where(inside, r * b_side + c, zero_row).flatten(1)  # [B, S*S]
        tokens_ext = torch.cat([tokens, tokens.new_zeros(batch, 1, dim)], dim=1)
        canvas = tokens_ext[rows, source].transpose(1, 2).unflatten(-1, (canvas_side, canvas_side))
        encoded = self.pos_layer(canvas).flatten(2).transpose(1, 2)  # [B, S*S, dim]
        t = torch.arange(length - 1, device=seq.device)[None]
        on_grid = t < (side * side)[:, None]
        target = torch.where(on_grid, (t // side[:, None]) * canvas_side + t % side[:, None], 0)
        tokens = encoded[rows, target] * on_grid[..., None]
        return torch.cat([cls, tokens], dim=1)

    def forward_features(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        mask = bag_mask(batch)
        counts = mask.sum(dim=1)
        if not bool((counts > 0).all()):
            raise ValueError("TransMIL received a bag with no real patch (mask all False)")
        side = _ceil_sqrt(counts)
        lengths = 1 + side * side  # CLS + grid tokens per bag
        h = self.fc1(batch["features"].float())
        seq = self._grid_sequence(h, mask, counts, side)
        seq = self.layer1(seq, lengths)
        seq = self._position_encoding(seq, side)
        seq = self.layer2(seq, lengths)
        return self.norm(seq[:, 0])


_PROFILE_DIMS = {"paper": 512, "small": 64, "tiny": 64}


@register_model(
    "transmil",
    label="TransMIL",
    modalities=("wsi",),
    paper_context={"feature_dim": 1536},
)
def transmil(ctx: ModelContext) -> TransMIL:
    """TransMIL (Nyström-attention transformer with PPEG and CLS token, original configuration).

    ``paper`` builds the reference width 512 (8 heads of 64, 256 landmarks). ``small`` and ``tiny``
    narrow the width to 64 (8 heads of 8, 32 landmarks) so the ``small`` Table 2 fits a 2-core CPU,
    keeping the reference's ratios (``dim // 8`` per head, ``dim // 2`` landmarks): the landmark
    pseudo-inverse costs O(landmarks^3) per head and layer whatever the bag size, about a second
    per batch on a laptop CPU at width 512 even for a one-patch bag.
    """
    if ctx.profile not in _PROFILE_DIMS:
        raise ValueError(f"unknown profile {ctx.profile!r}; valid: {', '.join(_PROFILE_DIMS)}")
    return TransMIL(feature_dim=ctx.feature_dim, n_outputs=ctx.n_outputs, dim=_PROFILE_DIMS[ctx.profile])
