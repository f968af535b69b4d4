"""Grids resume after being killed, tables render ours beside the paper's figures, and the drift
check fails (exit 1, naming the metric) against a perturbed expected file."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.cli import main
from bench.drift import compare
from bench.grids import TABLE2, grid_cells
from bench.results import ResultRow, ResultStore
from reports.tables import TableRow, render

REPO = Path(__file__).resolve().parents[1]


def _count(store: Path) -> tuple[int, int]:
    if not store.exists():
        return 0, 0
    try:
        with sqlite3.connect(store) as conn:
            total = conn.execute("SELECT COUNT(*) FROM results").fetchone()[0]
            distinct = conn.execute("SELECT COUNT(DISTINCT run_id || task) FROM results").fetchone()[0]
    except sqlite3.OperationalError:  # the grid has not created its table yet
        return 0, 0
    return total, distinct


def test_killed_grid_resumes_without_duplicates(rcc_cohort: Path, tmp_path: Path) -> None:
    store = tmp_path / "grid.sqlite"
    cmd = [sys.executable, "-m", "bench", "grid", "table2", "--profile", "tiny", "--cohort", str(rcc_cohort),
           "--models", "snn", "--sites", "rcc", "--seeds", "0,1,2", "--jobs", "1", "--store", str(store),
           "--wandb", "disabled", "--json"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.time() + 240
    while _count(store)[0] < 1 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before, _ = _count(store)
    assert 1 <= done_before < 6, "the grid should have been killed part-way"
    result = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["runs"] == 6 and summary["cached"] == done_before and summary["ran"] == 6 - done_before
    assert _count(store) == (6, 6)
    again = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert json.loads(again.stdout)["ran"] == 0


def test_grid_cells_follow_the_paper_rows_and_probe_seeds() -> None:
    cells = grid_cells(TABLE2, models=["abmil", "snn"], sites=["RCC"], seeds=[0, 1])
    assert [(c.model, c.task, c.seed) for c in cells] == [
        ("abmil", "subtype", 0), ("abmil", "subtype", 1), ("abmil", "survival", 0), ("abmil", "survival", 1),
        ("snn", "subtype", 0), ("snn", "subtype", 1), ("snn", "survival", 0), ("snn", "survival", 1)]
    labels = [label for _, label in TABLE2.rows]
    assert labels[:4] == ["Prov-Gigapath LP", "ABMIL", "TransMIL", "Prov-Gigapath (Tuned)"]
    assert labels[-2:] == ["ModalTune (Ours)", "ModalTune Pan-Cancer (Ours)"]


def _row(model: str, site: str, task: str, seed: int, value: float) -> ResultRow:
    metric = "test_balanced_accuracy" if task == "subtype" else "test_c_index"
    return ResultRow(run_id=f"{model}{site}{task}{seed}", task=task, model=model, site=site, seed=seed,
                     profile="tiny", cohort="c", cohort_fingerprint="f", regime="supervised",
                     metrics={metric: value}, config={}, n_train=1, n_val=1, n_test=1, n_excluded=0, seconds=1.0)


def test_table_cells_mean_std_paper_and_placeholders() -> None:
    rows = [TableRow("abmil", "ABMIL", True), TableRow("snn", "SNN", True), TableRow("mlp", "MLP", False)]
    results = [_row("abmil", "BRCA", "subtype", s, v) for s, v in zip((0, 1, 2), (0.8, 0.9, 1.0))]
    results += [_row("abmil", site, "subtype", 0, 0.5) for site in ("GBMLGG", "NSCLC", "RCC")]
    md = render(rows, ["BRCA", "GBMLGG", "NSCLC", "RCC"], results, table_key="table2", title="T", fmt="md")
    abmil_line = next(line for line in md.splitlines() if line.startswith("| ABMIL"))
    assert "0.900 ± 0.100 / 0.853 ± 0.015" in abmil_line  # ours (ddof=1) beside the published BRCA value
    assert "0.600 / 0.906" in abmil_line  # Overall = mean of the 4 site means, beside the paper's
    snn_line = next(line for line in md.splitlines() if line.startswith("| SNN"))
    assert "— / n/a" in snn_line  # not run, no published number
    mlp_line = next(line for line in md.splitlines() if line.startswith("| MLP"))
    assert "— / 0.752 ± 0.032" in mlp_line
    csv_text = render(rows, ["BRCA"], results, table_key="table2", title="T", fmt="csv", overall=False)
    assert "subtype,abmil,ABMIL,BRCA,0.900000,0.100000,3,0.853,0.015" in csv_text
    latex = render(rows, ["BRCA"], results, table_key="table2", title="T", fmt="latex", overall=False)
    assert "\\toprule" in latex


def test_table_command_reads_the_store(capsys, tmp_path: Path) -> None:
    store = tmp_path / "t.sqlite"
    with ResultStore(store) as s:
        s.write([_row("abmil", "RCC", "survival", 0, 0.61)])
    assert main(["table", "table2", "--store", str(store)]) == 0
    out = capsys.readouterr().out
    assert "profile: tiny" in out
    subtype_line, survival_line = [line for line in out.splitlines()
                                   if line.startswith("|") and line.split("|")[1].strip() == "ABMIL"]
    assert "0.610" not in subtype_line and survival_line.count("0.610 / ") == 1


def test_compare_names_each_moved_metric() -> None:
    expected = {"cohort_fingerprint": "a", "metrics": {"m/RCC/subtype/seed0": {"test_x": 0.5, "val_x": 0.7}}}
    observed = {"cohort_fingerprint": "a", "metrics": {"m/RCC/subtype/seed0": {"test_x": 0.5, "val_x": 0.9}}}
    problems = compare(expected, observed, tolerance=1e-3)
    assert problems == ["m/RCC/subtype/seed0 val_x: expected 0.700000, got 0.900000 (moved by +0.200000)"]
    assert compare(expected, expected, tolerance=1e-3) == []


def test_drift_check_fails_on_perturbed_expected_file(capsys, tmp_path: Path) -> None:
    recorded = json.loads((REPO / "tests" / "drift" / "expected.json").read_text())
    run, metrics = sorted(recorded["metrics"].items())[0]
    name = sorted(metrics)[0]
    metrics[name] = metrics[name] + 0.05
    perturbed = tmp_path / "perturbed.json"
    perturbed.write_text(json.dumps(recorded))
    code = main(["drift", "check", "--expected", str(perturbed)])
    err = capsys.readouterr().err
    assert code == 1
    assert f"{run} {name}" in err and "moved by -0.05" in err
    assert err.count("expected") == 1, "only the perturbed metric may differ"


def test_grid_rejects_bad_seed_list() -> None:
    with pytest.raises(SystemExit) as exc:
        main(["grid", "table2", "--profile", "tiny", "--seeds", "a,b"])
    assert exc.value.code == 2


def test_grid_rejects_unknown_model(capsys) -> None:
    assert main(["grid", "table2", "--profile", "tiny", "--models", "abmil,nonsense"]) == 2
    assert "unknown model 'nonsense'" in capsys.readouterr().err


def test_a_metric_that_could_not_be_computed_is_not_shown_as_not_run() -> None:
    rows = [TableRow("abmil", "ABMIL", True)]
    md = render(rows, ["RCC"], [_row("abmil", "RCC", "survival", 0, float("nan"))], table_key="table2", title="T",
                fmt="md", overall=False)
    survival_line = [line for line in md.splitlines() if line.startswith("| ABMIL")][1]
    assert "NaN / " in survival_line and "— /" not in survival_line


def test_drift_grid_covers_every_regime_and_both_fusion_heads() -> None:
    from bench.drift import DRIFT_RUNS
    from bench.registry import all_models, get_model

    regimes = {entry.regime for entry in all_models().values()}
    covered = {get_model(model).regime for model, _, _ in DRIFT_RUNS}
    assert covered == regimes, f"regimes without a drift run: {sorted(regimes - covered)}"
    models = {model for model, _, _ in DRIFT_RUNS}
    assert {"abmil_cat", "abmil_kp"} <= models
    recorded = {key.split("/")[0] for key in json.loads((REPO / "tests" / "drift" / "expected.json").read_text())["metrics"]}
    assert models == recorded, f"drift grid and recorded metrics differ: run `make drift-record` ({sorted(models ^ recorded)})"


def test_grid_runs_the_longest_runs_first() -> None:
    from bench.grids import get_grid, grid_cells, longest_first
    from bench.registry import all_models

    cells = grid_cells(get_grid("table2"), sites=["RCC"], seeds=[0])
    order = [c.model for c, _, _ in longest_first([(c, str(i), {}) for i, c in enumerate(cells)], all_models())]
    assert order[0] == "modaltune_pancancer" and order[1] == "modaltune"
    assert order.index("abmil") > order.index("gigapath_kp") > order.index("transmil_kp") > order.index("modaltune")
    assert order[-2:] == ["abmil_kp", "abmil_kp"], "stable within a rank: the table's order"
    assert [m for m in order if m.startswith("abmil")] == [c.model for c in cells if c.model.startswith("abmil")]


def test_perf_runs_sums_each_runs_time_once_per_model(tmp_path: Path) -> None:
    from dataclasses import replace

    from bench.perf.run_times import run_times

    store = tmp_path / "t.sqlite"
    rows = [replace(_row("abmil", "RCC", "subtype", s, 0.6), seconds=2.0) for s in (0, 1)]
    multitask = replace(_row("modaltune", "RCC", "subtype", 0, 0.7), seconds=30.0)
    rows += [multitask, replace(multitask, task="survival", metrics={"test_c_index": 0.6})]
    rows.append(replace(_row("titan_lp", "RCC", "subtype", 0, 0.5), seconds=5.0))
    with ResultStore(store) as s:
        s.write(rows)
    out = run_times(store, profile="tiny", table="table2")
    assert [m["model"] for m in out["models"]] == ["modaltune", "abmil"], "titan_lp is not a Table 2 row"
    assert out["models"][0]["runs"] == 1 and out["models"][0]["total_s"] == 30.0  # two rows, one run
    assert out["models"][1] == {"model": "abmil", "runs": 2, "total_s": 4.0, "mean_s": 2.0, "max_s": 2.0,
                                "share": round(4 / 34, 4)}
    assert run_times(store)["runs"] == 4


def test_a_row_not_above_its_own_initialisation_is_marked_on_that_task() -> None:
    from dataclasses import replace

    from reports.tables import NOT_ABOVE_INIT_MARK

    def run(model: str, task: str, seed: int, value: float, init: float) -> ResultRow:
        row = _row(model, "RCC", task, seed, value)
        metric = next(iter(row.metrics))
        return replace(row, metrics={metric: value, f"init_{metric}": init})

    results = [run("modaltune", "subtype", s, 0.8, 0.5) for s in (0, 1)]
    results += [run("modaltune", "survival", 0, 0.58, 0.60), run("modaltune", "survival", 1, 0.61, 0.60)]
    results += [_row("abmil", "RCC", "survival", 0, 0.5)]  # no init metric stored: never marked
    rows = [TableRow("modaltune", "ModalTune", True), TableRow("abmil", "ABMIL", True)]
    md = render(rows, ["RCC"], results, table_key="table2", title="T", fmt="md", overall=False)
    subtype, survival = md.split("### Survival")
    assert NOT_ABOVE_INIT_MARK not in subtype
    assert f"| ModalTune {NOT_ABOVE_INIT_MARK}" in survival and f"ABMIL {NOT_ABOVE_INIT_MARK}" not in survival
    assert "ModalTune: -0.005, 1 of 2 runs not above" in survival
