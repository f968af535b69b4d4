"""The results store keeps every row's per-patient test predictions (schema 2), migrates a schema-1
store without losing its rows, and serves the predictions as a DataFrame."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pytest

from bench.predictions import Predictions
from bench.results import SCHEMA_VERSION, ResultRow, ResultStore

# The layout of a schema-1 store, as modaltune-bench 0.2.0 wrote it (no predictions table).
V1_SCHEMA = """
CREATE TABLE results (
    run_id TEXT NOT NULL, task TEXT NOT NULL, model TEXT NOT NULL, site TEXT NOT NULL, seed INTEGER NOT NULL,
    profile TEXT NOT NULL, cohort TEXT NOT NULL, cohort_fingerprint TEXT NOT NULL, regime TEXT NOT NULL,
    metrics TEXT NOT NULL, config TEXT NOT NULL, n_train INTEGER, n_val INTEGER, n_test INTEGER,
    n_excluded INTEGER, seconds REAL, finished_at REAL NOT NULL, PRIMARY KEY (run_id, site, task));
CREATE INDEX results_lookup ON results (profile, model, site, task);
CREATE TABLE claims (run_id TEXT PRIMARY KEY, owner TEXT NOT NULL, host TEXT NOT NULL, pid INTEGER NOT NULL,
    claimed_at REAL NOT NULL, heartbeat REAL NOT NULL);
PRAGMA user_version = 1;
"""


def _row(run_id: str, task: str, seed: int = 0, site: str = "RCC") -> ResultRow:
    return ResultRow(run_id=run_id, task=task, model="snn", site=site, seed=seed, profile="tiny", cohort="c",
                     cohort_fingerprint="f", regime="supervised", metrics={"test_c_index": 0.7}, config={},
                     n_train=3, n_val=1, n_test=3, n_excluded=0, seconds=1.0)


def _subtype() -> Predictions:
    return Predictions(case_ids=("p2", "p1", "p3"), labels=np.array([1, 0, -1]), times=np.array([3.5, 10.25, 7.0]),
                       events=np.array([1, 0, 1]), probs=np.array([[0.2, 0.8], [0.9, 0.1], [0.5, 0.5]]))


def _survival(risk: list[float]) -> Predictions:
    return Predictions(case_ids=("p2", "p1", "p3"), labels=np.array([1, 0, -1]), times=np.array([3.5, 10.25, 7.0]),
                       events=np.array([1, 0, 1]), risk=np.array(risk))


def test_predictions_round_trip_exactly_with_the_row(tmp_path: Path) -> None:
    with ResultStore(tmp_path / "s.sqlite") as store:
        store.write([_row("r", "subtype", seed=2), _row("r", "survival", seed=2)],
                    {("r", "RCC", "subtype"): _subtype(), ("r", "RCC", "survival"): _survival([0.1 / 3, np.nan, 2.0])})
        sub = store.predictions("r", "RCC", "subtype")
        surv = store.predictions("r", "RCC", "survival")
    assert list(sub.columns) == ["case_id", "label", "time", "event", "risk", "prob_0", "prob_1", "seed"]
    assert sub["case_id"].tolist() == ["p1", "p2", "p3"]  # sorted by case id
    assert sub["label"].tolist() == [0, 1, -1] and sub["event"].tolist() == [0, 1, 1]
    assert sub["prob_1"].tolist() == [0.1, 0.8, 0.5] and sub["time"].tolist() == [10.25, 3.5, 7.0]
    assert sub["risk"].isna().all() and (sub["seed"] == 2).all()
    assert list(surv.columns) == ["case_id", "label", "time", "event", "risk", "seed"]
    assert surv["risk"].iloc[1] == 0.1 / 3 and np.isnan(surv["risk"].iloc[0]) and surv["risk"].iloc[2] == 2.0


def test_forced_rewrite_replaces_predictions_and_a_row_without_keeps_none(tmp_path: Path) -> None:
    with ResultStore(tmp_path / "s.sqlite") as store:
        store.write([_row("r", "survival")], {("r", "RCC", "survival"): _survival([1.0, 2.0, 3.0])})
        store.write([_row("r", "survival")], {("r", "RCC", "survival"): _survival([3.0, 2.0, 1.0])})
        assert store.predictions("r", "RCC", "survival")["risk"].tolist() == [2.0, 3.0, 1.0]
        store.write([_row("r", "survival")])
        assert store.predictions("r", "RCC", "survival").empty
        with pytest.raises(ValueError, match="not being written"):
            store.write([_row("r", "survival")], {("other", "RCC", "survival"): _survival([1.0, 2.0, 3.0])})


def test_failed_write_leaves_neither_rows_nor_predictions(tmp_path: Path) -> None:
    duplicated = Predictions(case_ids=("p1", "p1"), labels=np.array([0, 0]), times=np.array([1.0, 2.0]),
                             events=np.array([1, 1]), risk=np.array([1.0, 2.0]))
    with ResultStore(tmp_path / "s.sqlite") as store:
        with pytest.raises(sqlite3.IntegrityError):  # the second p1 fails after the row was inserted
            store.write([_row("r", "survival")], {("r", "RCC", "survival"): duplicated})
        assert store.rows() == [] and store.predictions("r", "RCC", "survival").empty


def test_schema_1_store_is_migrated_and_keeps_its_rows(tmp_path: Path) -> None:
    path = tmp_path / "v1.sqlite"
    conn = sqlite3.connect(path)
    conn.executescript(V1_SCHEMA)
    conn.execute("INSERT INTO results VALUES ('old','survival','snn','RCC',0,'tiny','c','f','supervised',"
                 "'{\"test_c_index\": 0.61}','{}',3,1,3,0,1.0,1.0)")
    conn.commit()
    conn.close()
    with ResultStore(path) as store:
        (old,) = store.rows()
        assert old.metrics == {"test_c_index": 0.61}
        frame = store.predictions("old", "RCC", "survival")
        assert frame.empty and list(frame.columns) == ["case_id", "label", "time", "event", "risk", "seed"]
        store.write([_row("new", "survival")], {("new", "RCC", "survival"): _survival([1.0, 2.0, 3.0])})
        assert len(store.predictions("new", "RCC", "survival")) == 3
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 2
    conn.close()


def test_table_ci_says_which_rows_have_no_predictions(tmp_path: Path, capsys) -> None:
    """A row stored before schema 2 gets no interval, and `table --ci` says so instead of failing."""
    from bench.cli import main

    path = tmp_path / "v1.sqlite"
    conn = sqlite3.connect(path)
    conn.executescript(V1_SCHEMA)
    conn.execute("INSERT INTO results VALUES ('old','survival','snn','RCC',0,'tiny','c','f','supervised',"
                 "'{\"test_c_index\": 0.61}','{}',3,1,3,0,1.0,1.0)")
    conn.commit()
    conn.close()
    assert main(["table", "table2", "--store", str(path), "--ci"]) == 0
    out = capsys.readouterr().out
    snn = [line for line in out.splitlines() if line.startswith("| SNN")]
    assert "0.610" in snn[1] and "no predictions" in snn[3]  # the table as before; no interval for the old row
    assert "no predictions: SNN RCC survival" in out and "--force" in out
    assert "Tests: none (no row has stored predictions)" in out


def test_predictions_reject_mismatched_lengths() -> None:
    with pytest.raises(ValueError, match="2 outputs for 3 patients"):
        Predictions(("a", "b", "c"), np.zeros(3), np.zeros(3), np.zeros(3), risk=np.zeros(2))
    with pytest.raises(ValueError, match="either class probabilities"):
        Predictions(("a",), np.zeros(1), np.zeros(1), np.zeros(1))
