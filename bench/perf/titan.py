"""CPU benchmark of the TITAN slide encoder (``python -m bench perf titan``).

Measures, at the paper width (768, 12 heads, MLP 3072, 8-head poolers) and a chosen depth, the
forward time (median of ``repeats`` inference-mode passes over one bag) and the peak resident memory
for each bag size, plus the construction time of the full 6-layer paper model.  Each measurement
runs in a fresh spawned process, so every peak RSS belongs to one bag size.  Same output layout as
:mod:`bench.perf.gigapath`.

TITAN's attention is full self-attention over all ``1 + L`` tokens with a dense 2-D ALiBi bias, so
time grows quadratically in the bag size once attention dominates the linear layers.  The reference
holds the whole ``[1, H, T, T]`` float32 bias (``reference_bias_mb``: 12 GiB at 16,384 tiles); here
it is built in query blocks of at most ``max_bias_elements`` floats for SDPA (``attention: sdpa``),
or, where ``TitanConfig.flex_min_tokens`` opts in, computed inside a compiled FlexAttention kernel
(``attention: flex``; the first call, ``first_call_s``, pays the compile).

Efficiency is reported against this machine's float32 GEMM rate (:func:`gemm_rate`, measured in
the same process): ``gemm_fraction`` = :func:`counted_flops` / median time / rate.
"""

from __future__ import annotations

import math
import time
from dataclasses import replace
from statistics import median
from typing import Any

import torch

from bench.perf.measure import peak_rss_mb, scaling_benchmark
from models.titan import TitanConfig, TitanSlideEncoder

__all__ = ["benchmark", "counted_flops", "gemm_rate"]


def _synthetic_bag(tiles: int, config: TitanConfig, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Random features ``[1, N, F]`` on N distinct cells of a square grid twice as large as the bag
    (tissue with holes), at ``patch_size_lv0`` spacing: exactly N tokens after regridding."""
    gen = torch.Generator().manual_seed(seed)
    side = math.ceil(math.sqrt(2 * tiles))
    cells = torch.randperm(side * side, generator=gen)[:tiles]
    coords = torch.stack([cells // side, cells % side], dim=-1).float().mul(config.patch_size_lv0)
    return torch.randn(1, tiles, config.feature_dim, generator=gen), coords.unsqueeze(0)


def _paper_encoder() -> TitanSlideEncoder:
    return TitanSlideEncoder(TitanConfig.paper())


GEMM_SHAPE = (4097, 768, 3072)


def gemm_rate(repeats: int = 5) -> float:
    """This machine's float32 GEMM rate in FLOP/s: the median of ``repeats`` products ``[4097, 768] @
    [768, 3072]`` (TITAN's MLP ``fc1`` over a 4,096-tile bag), measured on the current thread count."""
    m, k, n = GEMM_SHAPE
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(m, k, generator=gen), torch.randn(k, n, generator=gen)
    a @ b
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - start)
    return 2 * m * k * n / median(times)


def counted_flops(config: TitanConfig, n_tokens: int) -> float:
    """FLOPs of one forward pass as the benchmark counts them: per layer the linear layers (qkv, proj,
    fc1, fc2: ``2 T D (3D + D + 2M)``) plus ``4 D T^2`` for attention (``q k^T`` and ``p v``); the patch
    embedding, norms, softmax and poolers are not counted."""
    d, m, t = config.embed_dim, config.mlp_dim, n_tokens
    return config.depth * (2 * t * d * (4 * d + 2 * m) + 4 * d * t * t)


def _forward(tiles: int, layers: int, repeats: int, threads: int, seed: int) -> dict[str, Any]:
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    config = replace(TitanConfig.paper(), depth=layers)
    model = TitanSlideEncoder(config).eval()
    features, coords = _synthetic_bag(tiles, config, seed)
    rate = gemm_rate()
    rss_before = peak_rss_mb()
    times, cpu_times = [], []
    with torch.inference_mode():
        _, bias = model.embed(features, coords)
        attention = "flex" if bias.uses_flex() else "sdpa"
        start = time.perf_counter()
        model(features, coords)  # warm-up (compiles the FlexAttention kernel where the bag uses it)
        first_s = time.perf_counter() - start
        for _ in range(repeats):
            start, cpu_start = time.perf_counter(), time.process_time()
            model(features, coords)
            times.append(time.perf_counter() - start)
            cpu_times.append(time.process_time() - cpu_start)
    n_tokens = bias.n_tokens
    flops = counted_flops(config, n_tokens)
    return {
        "tiles": tiles,
        "tokens": n_tokens,
        "attention": attention,
        "first_call_s": first_s,
        "median_s": median(times),
        "times_s": times,
        "median_cpu_s": median(cpu_times),
        "counted_tflop": flops / 1e12,
        "gemm_gflops": rate / 1e9,
        "gemm_fraction": flops / median(times) / rate,
        "rss_before_forward_mb": rss_before,
        "peak_rss_mb": peak_rss_mb(),
        "attention_score_pairs_per_layer": config.num_heads * n_tokens * n_tokens,
        "bias_blocks_per_layer": math.ceil(n_tokens / bias.rows),
        "bias_block_mb": config.num_heads * bias.rows * n_tokens * 4 / 2**20,
        "reference_bias_mb": config.num_heads * n_tokens * n_tokens * 4 / 2**20,
    }


def benchmark(
    tokens: tuple[int, ...] = (1000, 2500, 5000, 10000),
    layers: int = 6,
    repeats: int = 3,
    threads: int | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Forward time and peak RSS of the paper-width encoder for bags of ``tokens`` tiles, on CPU.

    ``layers`` sets the depth of the timed model (6 is the paper's; fewer if that is too slow: time
    is linear in depth); ``threads`` defaults to torch's current intra-op thread count.  Returns a
    JSON-ready dict: construction time of the 6-layer paper model, one entry per bag size (attention
    path, first-call time, median and all wall-clock times, median process CPU time, counted TFLOP,
    GEMM rate and the fraction of it reached, RSS before the forward passes and peak, score pairs per
    layer, ALiBi bias blocking and the reference's full-bias size), and the ratios
    of consecutive median wall-clock times (``"10000/5000"`` etc.) and CPU times.
    """
    return scaling_benchmark(_paper_encoder, _forward, embed_dim=TitanConfig.paper().embed_dim, tokens=tokens, layers=layers,
                             repeats=repeats, threads=threads, seed=seed)
