"""The drift check: a small fixed grid on the tiny synthetic cohort, rerun and compared with the
metrics recorded in ``tests/drift/expected.json``. Same seed, same data, same machine give
identical metrics, so any change beyond the tolerance means behaviour changed: the check names
each metric that moved, expected vs got.
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
from pathlib import Path
from typing import Any

from bench.data import format as fmt

log = logging.getLogger(__name__)

DEFAULT_EXPECTED = Path("tests") / "drift" / "expected.json"
DEFAULT_TOLERANCE = 1e-3
# One fixed run per code path: every regime, a fusion head, and the out-of-distribution deployment.
# ``(model, site, task)``; a run that stores several rows (multitask, deployment) is checked row by row.
DRIFT_RUNS: tuple[tuple[str, str, str], ...] = (
    ("abmil", "BRCA", "subtype"), ("abmil", "BRCA", "survival"),  # supervised, WSI
    ("abmil", "RCC", "subtype"), ("abmil", "RCC", "survival"),
    ("snn", "BRCA", "subtype"), ("snn", "BRCA", "survival"),  # supervised, RNA
    ("snn", "RCC", "subtype"), ("snn", "RCC", "survival"),
    ("abmil_cat", "RCC", "survival"),  # late fusion (concatenation head)
    ("abmil_kp", "RCC", "survival"),  # late fusion (Kronecker head)
    ("gigapath_lp", "BRCA", "subtype"), ("gigapath_lp", "BRCA", "survival"),  # linear_probe
    ("modaltune", "BRCA", "multitask"),  # text_distill, deployed to COADREAD and BLCA
    ("gigapath_cat_cls", "BRCA", "multitask"),  # transfer: tuned on BRCA, probed on COADREAD and BLCA
)
DRIFT_SEED = 0
PROFILE = "tiny"


def run_drift_grid(cohort_dir: str | Path | None = None) -> dict[str, Any]:
    """Run the fixed drift grid in a fresh temporary store; ``{"cohort_fingerprint", "metrics"}``.

    Metrics are keyed ``model/site/task/seed`` per stored row, so a multitask or deployed run
    contributes one entry per (site, task) it stores.
    """
    from bench.results import ResultStore
    from bench.runner import RunRequest, ensure_cohort, execute

    cohort = ensure_cohort(cohort_dir, PROFILE)
    metrics: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="drift-") as tmp:
        store = Path(tmp) / "drift.sqlite"
        for model, site, task in DRIFT_RUNS:
            result = execute(RunRequest(model=model, site=site, task=task, seed=DRIFT_SEED, profile=PROFILE,
                                        store=store, wandb="disabled", runs_dir=Path(tmp) / "runs"), cohort=cohort)
            with ResultStore(store) as results:
                rows = results.get(result["run_id"])
            for row in rows:
                metrics[f"{model}/{row.site}/{row.task}/seed{DRIFT_SEED}"] = {
                    k: v for k, v in row.metrics.items() if k.startswith(("test_", "val_"))}
    return {"profile": PROFILE, "cohort_fingerprint": cohort.fingerprint, "metrics": metrics}


def record(expected: str | Path = DEFAULT_EXPECTED, cohort_dir: str | Path | None = None) -> dict[str, Any]:
    """Run the drift grid and write its metrics to ``expected`` (atomically); a target that cannot be
    written is refused before the grid runs."""
    from bench.errors import BenchError

    target = Path(expected)
    if target.is_dir():
        raise BenchError(f"{target} is a directory; --expected names the JSON file to record the metrics in")
    ancestor = next(p for p in target.absolute().parents if p.exists())
    if not ancestor.is_dir():
        raise BenchError(f"cannot write {target}: {ancestor} is not a directory; choose another --expected")
    observed = run_drift_grid(cohort_dir)
    fmt.write_json(expected, {**observed, "tolerance": DEFAULT_TOLERANCE})
    return observed


def compare(expected: dict[str, Any], observed: dict[str, Any], tolerance: float) -> list[str]:
    """Human-readable differences between two drift results (empty if none beyond ``tolerance``)."""
    problems = []
    if expected.get("cohort_fingerprint") != observed.get("cohort_fingerprint"):
        problems.append(f"tiny synthetic cohort changed: fingerprint {expected.get('cohort_fingerprint')} -> "
                        f"{observed.get('cohort_fingerprint')} (the generator's output is part of the contract)")
    exp_m, obs_m = expected.get("metrics", {}), observed.get("metrics", {})
    for run in sorted(set(exp_m) | set(obs_m)):
        if run not in obs_m:
            problems.append(f"{run}: expected but not run")
            continue
        if run not in exp_m:
            problems.append(f"{run}: run but not recorded (run `python -m bench drift record`)")
            continue
        for name in sorted(set(exp_m[run]) | set(obs_m[run])):
            want, got = exp_m[run].get(name), obs_m[run].get(name)
            if want is None or got is None:
                problems.append(f"{run} {name}: expected {want}, got {got}")
            elif _is_nan(want) and _is_nan(got):
                continue
            elif _is_nan(want) or _is_nan(got) or abs(want - got) > tolerance:
                delta = "" if _is_nan(want) or _is_nan(got) else f" (moved by {got - want:+.6f})"
                problems.append(f"{run} {name}: expected {want:.6f}, got {got:.6f}{delta}")
    return problems


def check(expected: str | Path = DEFAULT_EXPECTED, tolerance: float | None = None,
          cohort_dir: str | Path | None = None) -> tuple[list[str], dict[str, Any]]:
    """Rerun the drift grid and compare with ``expected``; returns (problems, observed)."""
    from bench.errors import BenchError

    path = Path(expected)
    if not path.is_file():
        raise BenchError(f"{path}: no recorded drift metrics; record them with `python -m bench drift record`")
    try:
        recorded = json.loads(path.read_text(), parse_constant=lambda c: float(c))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise BenchError(f"{path}: not a drift record (unreadable JSON: {err}); record one with "
                         "`python -m bench drift record --expected FILE`") from err
    if not isinstance(recorded, dict) or not isinstance(recorded.get("metrics"), dict):
        raise BenchError(f"{path}: not a drift record (no 'metrics' object); record one with "
                         "`python -m bench drift record --expected FILE`")
    tol = tolerance if tolerance is not None else float(recorded.get("tolerance", DEFAULT_TOLERANCE))
    observed = run_drift_grid(cohort_dir)
    return compare(recorded, observed, tol), observed


def _is_nan(x: Any) -> bool:
    return isinstance(x, float) and math.isnan(x)
