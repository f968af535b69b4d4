"""The paired bootstrap (bench.stats): its resampled metrics are the runs' metrics, it separates a
planted strong row from a chance row, gives identical rows p = 1, and `bench table --ci` renders
intervals from the store alone."""

from __future__ import annotations

import math
import sqlite3
import time
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import balanced_accuracy_score

from bench import metrics as M
from bench.predictions import Predictions
from bench.results import ResultRow
from bench.stats import (BOOTSTRAP_SEED, N_RESAMPLES, OVERALL, bootstrap_p_value, holm, resample_weights,
                         table_stats, weighted_balanced_accuracy, weighted_c_index)

SITES = ("BRCA", "RCC")


def _survival_case(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    times = np.round(rng.exponential(30.0, n), 0)  # rounded: tied times, censored and not
    return times, (rng.random(n) < 0.6).astype(np.int64)


def test_resampled_metrics_are_the_runs_metrics() -> None:
    """Unit weights give exactly bench.metrics' value; a resample's weights give the metric of the
    patients drawn, duplicated (ties in time and risk included)."""
    rng = np.random.default_rng(3)
    n = 60
    times, events = _survival_case(rng, n)
    risk = np.round(rng.normal(size=n), 1)  # tied risks
    labels, predicted = rng.integers(0, 3, n), rng.integers(0, 3, n)
    weights = resample_weights(n, 5, np.random.default_rng(0))
    assert weights.sum(axis=1).tolist() == [n] * 5
    assert weighted_c_index(events, times, risk, np.ones((1, n)))[0] == M.c_index(events, times, risk)
    assert weighted_balanced_accuracy(labels, predicted, np.ones((1, n)))[0] == pytest.approx(
        balanced_accuracy_score(labels, predicted), abs=1e-12)
    c_boot = weighted_c_index(events, times, risk, weights)
    ba_boot = weighted_balanced_accuracy(labels, predicted, weights)
    for b in range(5):
        drawn = np.repeat(np.arange(n), weights[b].astype(int))
        assert c_boot[b] == pytest.approx(M.c_index(events[drawn], times[drawn], risk[drawn]), abs=1e-12)
        assert ba_boot[b] == pytest.approx(balanced_accuracy_score(labels[drawn], predicted[drawn]), abs=1e-12)
    assert np.isnan(weighted_c_index(events, times, np.full(n, np.nan), weights)).all()


def test_c_index_of_1000_resamples_takes_well_under_a_second_of_cpu() -> None:
    rng = np.random.default_rng(0)
    n = 400  # a paper-sized test split
    times, events = _survival_case(rng, n)
    weights = resample_weights(n, N_RESAMPLES, rng)
    started = time.process_time()
    values = weighted_c_index(events, times, rng.normal(size=n), weights)
    assert time.process_time() - started < 3.0  # measured ~0.1 s
    assert values.shape == (N_RESAMPLES,) and np.isfinite(values).all()


def test_holm_matches_the_step_down_definition() -> None:
    # sorted: 0.005*4 = 0.02, 0.01*3 = 0.03, 0.03*2 = 0.06, 0.04*1 -> max(0.06, 0.04) = 0.06
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])
    corrected = holm([0.02, float("nan")])
    assert corrected[0] == pytest.approx(0.02) and math.isnan(corrected[1])


def test_bootstrap_p_value_two_sided() -> None:
    assert bootstrap_p_value(np.zeros(999)) == 1.0
    assert bootstrap_p_value(np.full(999, 0.1)) == pytest.approx(2 / 1000)
    assert bootstrap_p_value(np.full(999, -0.1)) == pytest.approx(2 / 1000)
    assert bootstrap_p_value(np.r_[np.full(500, 0.1), np.full(499, -0.1)]) == 1.0


# ---------------------------------------------------------------------------------------------- a planted table
def _row(model: str, site: str, task: str, seed: int) -> ResultRow:
    return ResultRow(run_id=f"{model}-{seed}", task=task, model=model, site=site, seed=seed, profile="tiny",
                     cohort="c", cohort_fingerprint="f", regime="supervised", metrics={}, config={}, n_train=1,
                     n_val=1, n_test=1, n_excluded=0, seconds=1.0)


def _planted(n: int = 80) -> tuple[list[ResultRow], dict[tuple[str, str, str, int], Predictions]]:
    """Rows of three models on two sites, three seeds: ``modaltune`` predicts the planted truth (strong),
    ``abmil`` is chance, ``abmil_cat`` is an exact copy of ``modaltune``. Subtype: 3 classes plus a rare set."""
    rng = np.random.default_rng(11)
    rows, preds = [], {}
    for site in SITES:
        cases = tuple(f"{site}-{i:03d}" for i in range(n))
        times, events = _survival_case(rng, n)
        labels = rng.integers(0, 3, n)
        labels[:5] = -1  # the rare set: never scored
        for seed in (0, 1, 2):
            strong_risk = -times + rng.normal(0, 8.0, n)
            strong_probs = np.eye(3)[np.where(rng.random(n) < 0.85, np.maximum(labels, 0), rng.integers(0, 3, n))]
            outputs = {"modaltune": (strong_probs, strong_risk), "abmil_cat": (strong_probs, strong_risk),
                       "abmil": (rng.dirichlet(np.ones(3), n), rng.normal(size=n))}
            for model, (probs, risk) in outputs.items():
                for task in ("subtype", "survival"):
                    rows.append(_row(model, site, task, seed))
                    preds[(model, site, task, seed)] = Predictions(
                        cases, labels, times, events, probs=probs if task == "subtype" else None,
                        risk=risk if task == "survival" else None)
    return rows, preds


def _stats(rows, preds, models=("abmil", "abmil_cat", "modaltune"), **kw):
    return table_stats(rows, lambda r: preds.get((r.model, r.site, r.task, r.seed)), list(models), SITES, **kw)


def test_planted_signal_strong_row_differs_from_chance_row_and_identical_rows_do_not() -> None:
    rows, preds = _planted()
    stats = _stats(rows, preds)
    for task, metric in (("subtype", "balanced_accuracy"), ("survival", "c_index")):
        assert stats.reference[task] == "modaltune"
        chance, copy = stats.tests[(task, "abmil")], stats.tests[(task, "abmil_cat")]
        assert chance.difference < -0.2 and chance.p_value < 0.01 and chance.p_holm < 0.05 and chance.differs
        assert copy.difference == 0.0 and copy.p_value == 1.0 and copy.p_holm == 1.0 and not copy.differs
        assert chance.sites == SITES
        for site in SITES:  # the cell is the mean over seeds of each seed's metric, as the runs computed it
            seeds = [preds[("modaltune", site, task, s)] for s in (0, 1, 2)]
            runs = [M.subtype_metrics(p.labels, p.probs)[metric] if task == "subtype"
                    else M.c_index(p.events, p.times, p.risk) for p in seeds]
            cell = stats.cells[(task, "modaltune", site)]
            assert cell.mean == pytest.approx(np.mean(runs), abs=1e-12)
            assert cell.seed_std == pytest.approx(np.std(runs, ddof=1), abs=1e-12)
            assert cell.n_seeds == 3 and cell.n_patients == (75 if task == "subtype" else 80)
        strong, weak = stats.cells[(task, "modaltune", OVERALL)], stats.cells[(task, "abmil", OVERALL)]
        chance_level = 0.5 if task == "survival" else 1 / 3
        assert weak.low < chance_level + 0.05 and strong.low > weak.high  # the intervals separate
    for cell in stats.cells.values():
        assert cell.low <= cell.mean <= cell.high


def test_same_store_same_intervals_and_the_seed_matters() -> None:
    rows, preds = _planted(n=40)
    a, b = _stats(rows, preds, n_resamples=200), _stats(rows, preds, n_resamples=200)
    c = _stats(rows, preds, n_resamples=200, seed=BOOTSTRAP_SEED + 1)
    assert a.cells == b.cells and a.tests == b.tests
    key = ("survival", "abmil", "RCC")
    assert (a.cells[key].low, a.cells[key].high) != (c.cells[key].low, c.cells[key].high)


def test_without_modaltune_the_best_row_is_the_reference_and_missing_predictions_are_listed() -> None:
    rows, preds = _planted(n=40)
    del preds[("abmil_cat", "RCC", "survival", 1)]  # a row stored before schema 2
    stats = _stats([r for r in rows if r.model != "modaltune"], preds, models=("abmil", "abmil_cat"), n_resamples=100,
                   tasks=("subtype", "survival", "duration_bins"))
    assert stats.tasks == ("subtype", "survival")  # a table section without predictions gets no intervals
    assert stats.reference == {"subtype": "abmil_cat", "survival": "abmil"}  # abmil_cat lacks RCC survival
    assert stats.no_predictions == [("survival", "abmil_cat", "RCC")]
    assert ("survival", "abmil_cat", "RCC") not in stats.cells and ("survival", "abmil_cat", OVERALL) not in stats.cells
    assert stats.tests[("survival", "abmil_cat")].sites == ("BRCA",)


# ---------------------------------------------------------------------------------------------- from the store
def _dump(path: Path) -> list[str]:
    with sqlite3.connect(path) as conn:
        lines = list(conn.iterdump())
    conn.close()
    return lines


def test_table_ci_from_the_store_alone(rcc_cohort: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    """A tiny grid stores predictions that reproduce each row's test metric; `table --ci` then renders
    intervals without training anything and without changing the store; plain `table` is unchanged."""
    from bench.cli import main
    from bench.regimes.base import Regime
    from bench.results import ResultStore

    store = tmp_path / "grid.sqlite"
    assert main(["grid", "table2", "--profile", "tiny", "--cohort", str(rcc_cohort), "--models", "snn,gigapath_lp",
                 "--sites", "rcc", "--seeds", "0,1", "--jobs", "1", "--store", str(store), "--wandb", "disabled",
                 "--json"]) == 0
    with ResultStore(store) as results:
        rows = results.rows()
        assert len(rows) == 6  # snn: 2 seeds x 2 tasks; the LP probes once per task
        for row in rows:
            frame = results.predictions(row.run_id, row.site, row.task)
            assert len(frame) == row.n_test and (frame["seed"] == row.seed).all()
            if row.task == "subtype":
                probs = frame.filter(like="prob_").to_numpy()
                got = M.subtype_metrics(frame["label"].to_numpy(), probs)["balanced_accuracy"]
                assert got == row.metrics["test_balanced_accuracy"]
            else:
                got = M.c_index(frame["event"].to_numpy(), frame["time"].to_numpy(), frame["risk"].to_numpy())
                assert got == row.metrics["test_c_index"]
    capsys.readouterr()
    assert main(["table", "table2", "--store", str(store)]) == 0
    plain = capsys.readouterr().out
    before = _dump(store)

    def no_training(*args, **kwargs):
        raise AssertionError("--ci must not train")

    monkeypatch.setattr(Regime, "run", no_training)
    assert main(["table", "table2", "--store", str(store), "--ci"]) == 0
    with_ci = capsys.readouterr().out
    assert _dump(store) == before
    assert with_ci.startswith(plain.rstrip("\n"))
    snn = [line for line in with_ci[len(plain):].splitlines() if line.startswith("| SNN")]
    assert len(snn) == 2 and all(" sd " in line and "[" in line for line in snn)
    assert "Holm" in with_ci and "alpha = 0.05" in with_ci and "1000 paired bootstrap resamples" in with_ci
    assert main(["table", "table2", "--store", str(store), "--ci", "--format", "csv"]) == 0
    header, *lines = capsys.readouterr().out.splitlines()
    assert header.endswith("row_p_holm,row_differs,reference")
    snn_rcc = next(line for line in lines if line.startswith("survival,snn,SNN,RCC,"))
    assert snn_rcc.split(",")[-1] in ("snn", "gigapath_lp")
