"""CPU benchmark of the TITAN slide encoder (``python -m bench perf titan``).

Measures, at the paper width (768, 12 heads, MLP 3072, 8-head poolers) and a chosen depth, the
forward time (median of ``repeats`` inference-mode passes over one bag) and the peak resident memory
for each bag size, plus the construction time of the full 6-layer paper model.  Each measurement
runs in a fresh spawned process, so every peak RSS belongs to one bag size.  Same output layout as
:mod:`bench.perf.gigapath`.

TITAN's attention is full self-attention over all ``1 + L`` tokens with a dense 2-D ALiBi bias, so
time grows quadratically in the bag size once attention dominates the linear layers.  The reference
holds the whole ``[1, H, T, T]`` float32 bias (``reference_bias_mb``: 12 GiB at 16,384 tiles);
here it is built in query blocks of at most ``max_bias_elements`` floats (``bias_block_mb``), shared
by all layers when one block covers all rows (``bias_blocks_per_layer`` = 1).
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

__all__ = ["benchmark"]



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


def _forward(tiles: int, layers: int, repeats: int, threads: int, seed: int) -> dict[str, Any]:
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    config = replace(TitanConfig.paper(), depth=layers)
    model = TitanSlideEncoder(config).eval()
    features, coords = _synthetic_bag(tiles, config, seed)
    rss_before = peak_rss_mb()
    times, cpu_times = [], []
    with torch.inference_mode():
        _, bias = model.embed(features, coords)
        for _ in range(repeats):
            start, cpu_start = time.perf_counter(), time.process_time()
            model(features, coords)
            times.append(time.perf_counter() - start)
            cpu_times.append(time.process_time() - cpu_start)
    n_tokens = bias.n_tokens
    return {
        "tiles": tiles,
        "tokens": n_tokens,
        "median_s": median(times),
        "times_s": times,
        "median_cpu_s": median(cpu_times),
        "rss_before_forward_mb": rss_before,
        "peak_rss_mb": peak_rss_mb(),
        "attention_score_pairs_per_layer": config.num_heads * n_tokens * n_tokens,
        "bias_blocks_per_layer": math.ceil(n_tokens / bias.rows),
        "bias_block_mb": config.num_heads * bias.rows * n_tokens * 4 / 2**20,
        "reference_bias_mb": config.num_heads * n_tokens * n_tokens * 4 / 2**20,
    }


def benchmark(
    tokens: tuple[int, ...] = (1024, 4096, 16384),
    layers: int = 6,
    repeats: int = 3,
    threads: int | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Forward time and peak RSS of the paper-width encoder for bags of ``tokens`` tiles, on CPU.

    ``layers`` sets the depth of the timed model (6 is the paper's; fewer if that is too slow: time
    is linear in depth); ``threads`` defaults to torch's current intra-op thread count.  Returns a
    JSON-ready dict: construction time of the 6-layer paper model, one entry per bag size (median
    and all wall-clock times, median process CPU time, RSS before the forward passes and peak,
    score pairs per layer, ALiBi bias blocking and the reference's full-bias size), and the ratios
    of consecutive median wall-clock times (``"16384/4096"`` etc.) and CPU times.
    """
    return scaling_benchmark(_paper_encoder, _forward, embed_dim=TitanConfig.paper().embed_dim, tokens=tokens, layers=layers,
                             repeats=repeats, threads=threads, seed=seed)
