"""Measurement helpers shared by the benchmarks (``python -m bench perf …``).

:func:`scaling_benchmark` times a slide encoder's forward pass over bags of growing size, each in a
fresh spawned process so that every peak RSS belongs to one bag size; the encoder modules
(:mod:`bench.perf.gigapath`, :mod:`bench.perf.titan`) supply the construction and forward
workers.
"""

from __future__ import annotations

import logging
import resource
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from typing import Any

import torch

logger = logging.getLogger(__name__)


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def in_fresh_process(fn: Callable[..., dict[str, Any]], *args: Any) -> dict[str, Any]:
    """Run ``fn(*args)`` in a new spawned process (a clean peak RSS) and return its result."""
    with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
        return pool.submit(fn, *args).result()


def timed_construction(build: Callable[[], torch.nn.Module], threads: int) -> dict[str, Any]:
    """Seconds to construct ``build()`` (the paper-size encoder) on ``threads`` threads, and its parameter count."""
    torch.set_num_threads(threads)
    start = time.perf_counter()
    model = build()
    seconds = time.perf_counter() - start
    return {"construction_s": seconds, "parameters": sum(p.numel() for p in model.parameters())}


def scaling_benchmark(
    build: Callable[[], torch.nn.Module],
    forward: Callable[[int, int, int, int, int], dict[str, Any]],
    *,
    embed_dim: int,
    tokens: Sequence[int],
    layers: int,
    repeats: int = 3,
    threads: int | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Construction time of ``build()`` (a picklable, module-level function returning the paper-size
    encoder), then ``forward(tiles, layers, repeats, threads, seed)`` per bag size.

    Returns a JSON-ready dict with one entry per bag size (as ``forward`` reports it: at least
    ``tiles``, ``median_s``, ``median_cpu_s``, ``peak_rss_mb``) and the ratios of consecutive median
    wall-clock and CPU times (``"16384/4096"`` …); CPU time is the steadier on a shared machine.
    """
    threads = threads if threads is not None else torch.get_num_threads()
    result: dict[str, Any] = {"device": "cpu", "torch": torch.__version__, "threads": threads, "layers": layers,
                              "embed_dim": embed_dim, "repeats": repeats}
    result.update(in_fresh_process(timed_construction, build, threads))
    logger.info("construction of the paper model: %.2f s", result["construction_s"])
    runs = []
    for tiles in tokens:
        run = in_fresh_process(forward, tiles, layers, repeats, threads, seed)
        logger.info("%d tiles: median %.2f s, peak RSS %.0f MB", tiles, run["median_s"], run["peak_rss_mb"])
        runs.append(run)
    result["runs"] = runs
    for key, name in (("median_s", "time_ratios"), ("median_cpu_s", "cpu_time_ratios")):
        result[name] = {f"{b['tiles']}/{a['tiles']}": b[key] / a[key] for a, b in zip(runs, runs[1:])}
    return result
