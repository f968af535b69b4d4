"""Where a grid's time goes (``python -m bench perf runs --store S [--profile small] [--table table2]``).

Reads the training time each stored run recorded (``seconds``: from the plan to the stored rows, in its
worker) and sums it per model, counting a multitask run (one row per task, or per site) once. Nothing is
trained. The grid's wall time is about the sum divided by the number of parallel workers, plus the
workers' start-up and the cohort's generation; the shares show which row families to make faster first.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def run_times(store: str | Path | None = None, profile: str | None = None, table: str | None = None) -> dict[str, Any]:
    """Per model of ``table`` (default: every stored model): runs, total, mean and largest seconds, and its
    share of the total; models sorted by total time, longest first."""
    from bench.errors import BenchError
    from bench.grids import get_grid
    from bench.results import ResultStore, store_path

    path = store_path(str(store) if store else None)
    if not path.is_file():
        raise BenchError(f"results store {path} does not exist; run a grid first (or pass --store)")
    with ResultStore(path) as results:
        rows = results.rows(profile=profile)
    wanted = {name for name, _ in get_grid(table).rows} if table else None
    seconds: dict[str, dict[str, float]] = {}
    for row in rows:
        if wanted is None or row.model in wanted:
            seconds.setdefault(row.model, {})[row.run_id] = row.seconds
    total = sum(sum(runs.values()) for runs in seconds.values())
    models = [{"model": model, "runs": len(runs), "total_s": round(sum(runs.values()), 1),
               "mean_s": round(sum(runs.values()) / len(runs), 2), "max_s": round(max(runs.values()), 1),
               "share": round(sum(runs.values()) / total, 4) if total else 0.0}
              for model, runs in seconds.items()]
    models.sort(key=lambda m: -m["total_s"])
    return {"store": str(path), "profile": profile, "table": table, "runs": sum(m["runs"] for m in models),
            "total_s": round(total, 1), "models": models}
