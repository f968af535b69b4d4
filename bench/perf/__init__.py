"""Performance benchmarks (``python -m bench perf …``): measured here, never asserted in tests.

One module per benchmark: :mod:`bench.perf.harness` (harness overhead against a bare loop),
:mod:`bench.perf.model_steps` (each model's forward+backward at the paper configuration),
:mod:`bench.perf.gigapath` and :mod:`bench.perf.titan` (slide encoders' scaling with bag size),
:mod:`bench.perf.modaltune` (a ModalTune training step), :mod:`bench.perf.run_times` (a stored grid's
time per row, nothing trained); :mod:`bench.perf.measure` holds the shared
measuring helpers (peak RSS, fresh processes).
"""

from __future__ import annotations

import argparse
import importlib
from typing import Any


def run(what: str, args: argparse.Namespace) -> dict[str, Any]:
    """Run the benchmark ``what`` with the CLI's options; a JSON-ready dict."""
    if what == "harness":
        from bench.perf.harness import harness

        return harness(steps=args.steps, patches=args.patches or 512, dim=args.dim)
    if what in ("gigapath", "titan"):
        module = importlib.import_module(f"bench.perf.{what}")
        kwargs = {"tokens": tuple(args.tokens)} if args.tokens else {}
        if args.layers:
            kwargs["layers"] = args.layers
        return module.benchmark(**kwargs)
    if what == "modaltune":
        from bench.perf.modaltune import modaltune

        return modaltune(patches=args.patches or 4096)
    if what == "models":
        from bench.perf.model_steps import models
        from bench.registry import resolve_models

        return models(resolve_models(args.models) if args.models else None, patches=args.patches or 4096,
                      dim=args.dim)
    if what == "runs":
        from bench.perf.run_times import run_times

        return run_times(args.store, args.profile, args.table)
    raise ValueError(what)
