"""Per-model cost (``python -m bench perf models``): forward+backward time and peak RSS of each model at
its paper configuration for one bag of N = 4,096 patches at D = 1,536 (batch 1), each model in a fresh
process so that every peak RSS is that model's.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from bench.perf.measure import in_fresh_process, peak_rss_mb


def _model_step(name: str, patches: int, dim: int, repeats: int) -> dict[str, Any]:
    """Worker (own process, so peak RSS is this model's): forward+backward of one bag, median of ``repeats``."""
    from bench.registry import get_model, paper_context

    torch.manual_seed(0)
    entry = get_model(name)
    ctx = paper_context(entry, n_outputs=4)
    ctx = type(ctx)(**{**ctx.__dict__, "feature_dim": dim})
    batch = {"features": torch.randn(1, patches, dim), "coords": torch.randint(0, 200, (1, patches, 2)).float() * 256,
             "mask": torch.ones(1, patches, dtype=torch.bool), "rna": torch.randn(1, ctx.n_genes),
             "clinical": torch.zeros(1, 5), "label": torch.tensor([1]), "survival_bin": torch.tensor([2]),
             "event": torch.tensor([1]), "survival_months": torch.tensor([10.0])}
    base_rss = peak_rss_mb()
    model = entry.build(ctx).train()
    times = []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        model.compute_loss(batch, "survival").backward()
        times.append(time.perf_counter() - start)
        model.zero_grad(set_to_none=True)
    return {"model": name, "params": sum(p.numel() for p in model.parameters()),
            "fwd_bwd_s": round(float(np.median(times[1:])), 4), "peak_rss_mb": round(peak_rss_mb(), 1),
            "peak_rss_over_start_mb": round(peak_rss_mb() - base_rss, 1)}


def models(names: list[str] | None = None, patches: int = 4096, dim: int = 1536, repeats: int = 3) -> dict[str, Any]:
    """Forward+backward time and peak memory of each model at its paper configuration, one bag of ``patches``.

    Default: every supervised Table 2 comparison model that needs no slide foundation model.
    """
    from bench.registry import all_models

    registry = all_models()
    if names is None:
        names = [n for n, e in registry.items() if e.regime == "supervised" and e.family != "slide_encoders"
                 and e.family not in ("modaltune",)]
    runs = []
    for name in names:
        runs.append(in_fresh_process(_model_step, name, patches, dim, repeats))
    return {"benchmark": "models", "patches": patches, "dim": dim, "batch_size": 1, "repeats": repeats,
            "threads": torch.get_num_threads(), "runs": runs}
