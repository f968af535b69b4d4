"""Attention with TITAN's 2-D ALiBi bias computed inside the kernel (``torch`` FlexAttention).

The bias ``-slope_h * ||cell_i - cell_j||_2`` (0 in the CLS row and column, ``-inf`` for masked keys)
is a function of the two tokens' grid cells, so it need not exist in memory at all: FlexAttention's
``score_mod`` computes it per score from the cells ``[B, T, 2]`` and the slopes ``[H]`` while the
compiled kernel streams over key blocks.  Against SDPA with a float mask this removes the
``B x H x T x T`` bias (1.2 GB at 5,000 tiles) and the time spent writing and reading it.

FlexAttention needs ``torch.compile`` (Inductor; on CPU a C++ compiler).  The kernel is compiled once
per process with dynamic shapes, so bags of other lengths reuse it; the first call pays the compile
(tens of seconds on a 2-core CPU; Inductor's on-disk cache shortens later processes).  Where it
cannot compile, :func:`flex_alibi_attention` returns ``None`` once it has logged why, and the caller
uses its SDPA path: nothing requires a compiler.  Only inference uses it (no autograd graph).

It is opt-in (``TitanConfig.flex_min_tokens``): measured on a 2-core AVX-512 CPU, the paper-width
encoder at 2 layers ran 3.71 s with it against 2.27 s with SDPA at 5,000 tiles (1.02 s vs 0.72 s at
2,500), outputs within 2e-7; the memory it saves is the bias's.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

import torch

__all__ = ["alibi_score_mod", "flex_alibi_attention", "flex_unavailable_reason"]

logger = logging.getLogger(__name__)

_compiled: Callable[..., torch.Tensor] | None = None
_unavailable: str | None = None


def flex_unavailable_reason() -> str | None:
    """Why FlexAttention was given up in this process (``None`` while it works or is untried)."""
    return _unavailable


def _kernel() -> Callable[..., torch.Tensor] | None:
    global _compiled, _unavailable
    if _compiled is None and _unavailable is None:
        try:
            from torch.nn.attention.flex_attention import flex_attention
        except ImportError as err:  # pragma: no cover - torch without FlexAttention
            _unavailable = f"torch {torch.__version__} has no FlexAttention ({err})"
        else:
            _compiled = torch.compile(flex_attention, dynamic=True)
    return _compiled


def alibi_score_mod(positions: torch.Tensor, slopes: torch.Tensor, token_mask: torch.Tensor | None):
    """FlexAttention's ``score_mod`` adding TITAN's ``get_alibi`` term: positions ``float32 [B, T, 2]``
    (token 0 is CLS), slopes ``float32 [H]``, token mask ``bool [B, T]`` (``None``: all real), all on
    the attention's device."""

    def alibi(score, b, h, q_idx, kv_idx):
        dx = positions[b, q_idx, 0] - positions[b, kv_idx, 0]
        dy = positions[b, q_idx, 1] - positions[b, kv_idx, 1]
        distance = torch.where((q_idx == 0) | (kv_idx == 0), 0.0, torch.sqrt(dx * dx + dy * dy))
        return score - slopes[h] * distance

    if token_mask is None:
        return alibi

    def masked_alibi(score, b, h, q_idx, kv_idx):
        return torch.where(token_mask[b, kv_idx], alibi(score, b, h, q_idx, kv_idx), -math.inf)

    return masked_alibi


def flex_alibi_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, score_mod: Callable[..., torch.Tensor],
) -> torch.Tensor | None:
    """``softmax(q k^T / sqrt(d) + alibi) v`` for ``q, k, v [B, H, T, d]`` -> ``[B, H, T, d]``, with the
    bias from :func:`alibi_score_mod` (built once per bag, shared by every layer), or ``None`` when
    FlexAttention cannot run in this process (the reason is logged once)."""
    global _unavailable
    kernel = _kernel()
    if kernel is None:
        return None
    try:
        return kernel(q, k, v, score_mod=score_mod)
    except Exception as err:  # noqa: BLE001 - any compile failure falls back to SDPA, with the reason logged
        _unavailable = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
        logger.warning("FlexAttention is unavailable (%s); TITAN attention falls back to SDPA with a "
                       "materialised ALiBi bias", _unavailable)
        return None
