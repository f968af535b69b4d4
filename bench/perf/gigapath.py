"""CPU benchmark of the Prov-GigaPath slide encoder (``python -m bench perf gigapath``).

Measures, at the paper width (768, 16 heads, paper segment lengths and dilation ratios) and a chosen
depth, the forward time (median of ``repeats`` inference-mode passes over one bag) and the peak
resident memory for each bag size, plus the construction time of the full 12-layer paper model.
Each measurement runs in a fresh spawned process, so every peak RSS belongs to one bag size.

It also reports the number of query-key score pairs the dilated attention evaluates, which explains
the scaling: with the paper's segment lengths (1024, 5792, 32768, 185363, 1048576) every branch
whose segment is at least the bag length is full attention over ``L / r`` tokens, i.e. quadratic,
so below ~1M tokens the attention cost grows faster than linearly (memory stays linear: the fused
SDPA kernels never hold a score matrix).
"""

from __future__ import annotations

import math
import time
from dataclasses import replace
from statistics import median
from typing import Any

import torch

from bench.perf.measure import peak_rss_mb, scaling_benchmark
from models.gigapath import GigaPathConfig, GigaPathSlideEncoder

__all__ = ["attention_score_pairs", "benchmark"]



def attention_score_pairs(length: int, heads: int, segment_lengths, dilation_ratios) -> int:
    """Query-key pairs scored by one dilated-attention layer over ``length`` tokens (zero padding
    and the log-sum-exp sink key included): sum over branches of ``n_segments * H * m * (m + 1)``."""
    total = 0
    for segment, ratio in zip(segment_lengths, dilation_ratios, strict=True):
        seg = min(segment, length)
        slots = math.ceil(seg / ratio)
        total += math.ceil(length / seg) * heads * slots * (slots + 1)
    return total


def _synthetic_bag(tiles: int, feature_dim: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Random features ``[1, N, F]`` and N distinct tile coordinates on the 1000 x 1000 grid."""
    gen = torch.Generator().manual_seed(seed)
    features = torch.randn(1, tiles, feature_dim, generator=gen)
    cells = torch.randperm(1000 * 1000, generator=gen)[:tiles]
    coords = torch.stack([cells // 1000, cells % 1000], dim=-1).float().mul(256.0).unsqueeze(0)
    return features, coords


def _paper_encoder() -> GigaPathSlideEncoder:
    return GigaPathSlideEncoder(GigaPathConfig.paper())


def _forward(tiles: int, layers: int, repeats: int, threads: int, seed: int) -> dict[str, Any]:
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    config = replace(GigaPathConfig.paper(), depth=layers)
    model = GigaPathSlideEncoder(config).eval()
    features, coords = _synthetic_bag(tiles, config.feature_dim, seed)
    rss_before = peak_rss_mb()
    times, cpu_times = [], []
    with torch.inference_mode():
        for _ in range(repeats):
            start, cpu_start = time.perf_counter(), time.process_time()
            model(features, coords)
            times.append(time.perf_counter() - start)
            cpu_times.append(time.process_time() - cpu_start)
    return {
        "tiles": tiles,
        "tokens": tiles + 1,
        "median_s": median(times),
        "times_s": times,
        "median_cpu_s": median(cpu_times),
        "rss_before_forward_mb": rss_before,
        "peak_rss_mb": peak_rss_mb(),
        "attention_score_pairs_per_layer": attention_score_pairs(
            tiles + 1, config.num_heads, config.segment_lengths, config.dilation_ratios
        ),
    }


def benchmark(
    tokens: tuple[int, ...] = (1024, 4096, 16384),
    layers: int = 12,
    repeats: int = 3,
    threads: int | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Forward time and peak RSS of the paper-width encoder for bags of ``tokens`` tiles, on CPU.

    ``layers`` sets the depth of the timed model (12 is the paper's; fewer if that is too slow:
    time is linear in depth); ``threads`` defaults to torch's current intra-op thread count.
    Returns a JSON-ready dict: construction time of the 12-layer paper model, one entry per bag
    size (median and all wall-clock times, median process CPU time, which a shared machine's load
    disturbs less, RSS before the forward passes and peak, score pairs per layer), and the ratios
    of consecutive median wall-clock times (``"16384/4096"`` etc.) and CPU times.
    """
    return scaling_benchmark(_paper_encoder, _forward, embed_dim=GigaPathConfig.paper().embed_dim, tokens=tokens, layers=layers,
                             repeats=repeats, threads=threads, seed=seed)
