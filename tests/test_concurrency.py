"""Two grids on one results store: runs are claimed before they train (each trained once, every row
stored once), stale claims of dead processes are recovered, a waiting run serves the stored result,
failing cells (even a dead worker process) never stop a grid, and attempts never share a directory."""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from tqdm.auto import tqdm
from dying_worker import worker_that_dies

from bench import results as results_mod
from bench import runner
from bench.cli import main
from bench.data.cohort import Cohort
from bench.errors import BenchError
from bench.grids import TABLE2, _run_requests, run_grid
from bench.results import ResultRow, ResultStore

REPO = Path(__file__).resolve().parents[1]


def _rows(store: Path) -> list[tuple[str, str, str]]:
    with sqlite3.connect(store) as conn:
        return conn.execute("SELECT run_id, site, task FROM results").fetchall()


def _claims(store: Path) -> list[tuple]:
    with sqlite3.connect(store) as conn:
        return conn.execute("SELECT run_id, owner FROM claims").fetchall()


def _dead_pid() -> int:
    """The pid of a process that has exited and been reaped."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _insert_claim(store: Path, run_id: str, *, pid: int, host: str | None = None, age_s: float = 0.0) -> str:
    """A claim as another process would have left it; returns its owner."""
    host = host or socket.gethostname()
    owner = f"{host}:{pid}:test"
    ResultStore(store).close()  # creates the tables
    with sqlite3.connect(store) as conn:
        conn.execute("INSERT INTO claims VALUES (?,?,?,?,?,?)",
                     (run_id, owner, host, pid, time.time() - age_s, time.time() - age_s))
    return owner


def _run_id(cohort_dir: Path, model: str, task: str, seed: int) -> str:
    plan = runner.plan_run(runner.RunRequest(model=model, site="RCC", task=task, seed=seed, profile="tiny"),
                           Cohort.load(cohort_dir))
    return runner.run_config(plan).run_id()


@pytest.fixture
def live_pid():
    """A process that stays alive for the test (a claim owner that is still 'training')."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    yield proc.pid
    proc.kill()
    proc.wait()


def test_two_grids_started_together_train_each_run_once(rcc_cohort: Path, tmp_path: Path) -> None:
    store = tmp_path / "shared.sqlite"
    cmd = [sys.executable, "-m", "bench", "grid", "table2", "--profile", "tiny", "--models", "snn,mlp", "--sites",
           "rcc", "--seeds", "0,1", "--cohort", str(rcc_cohort), "--store", str(store), "--jobs", "1", "--wandb",
           "disabled", "--json"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outputs = [p.communicate(timeout=600) for p in procs]
    for proc, (out, err) in zip(procs, outputs):
        assert proc.returncode == 0, err[-3000:]
    summaries = [json.loads(out) for out, _ in outputs]
    runs = 2 * 2 * 2  # snn, mlp x subtype, survival x seeds 0, 1 on RCC
    for s in summaries:
        assert s["runs"] == runs and s["failed"] == [] and s["ran"] + s["cached"] == runs
    assert sum(s["ran"] for s in summaries) == runs, f"a run was trained twice (or never): {summaries}"
    rows = _rows(store)
    assert len(rows) == len(set(rows)) == runs
    assert _claims(store) == []
    attempts = sorted(p.relative_to(tmp_path / "runs") for p in (tmp_path / "runs").glob("*/*/attempt-*"))
    assert len(attempts) == runs and len({a.parent for a in attempts}) == runs, attempts


def test_claims_stale_live_and_heartbeat(tmp_path: Path, live_pid: int, monkeypatch: pytest.MonkeyPatch) -> None:
    store = tmp_path / "s.sqlite"
    _insert_claim(store, "dead", pid=_dead_pid())
    _insert_claim(store, "live", pid=live_pid)
    _insert_claim(store, "remote-fresh", pid=1, host="another-host")
    _insert_claim(store, "remote-old", pid=1, host="another-host", age_s=results_mod.CLAIM_STALE_S + 5)
    with ResultStore(store) as s:
        assert s.try_claim("live") is None
        assert s.try_claim("remote-fresh") is None
        for run_id in ("dead", "remote-old", "free"):
            lease = s.try_claim(run_id)
            assert lease is not None and s.holder(run_id).owner == lease.claim.owner
            assert s.try_claim(run_id) is None, "a claim held by this live process must not be taken again"
            lease.release()
            assert s.holder(run_id) is None

    monkeypatch.setattr(results_mod, "CLAIM_HEARTBEAT_S", 0.05)
    with ResultStore(store) as s:
        lease = s.try_claim("beating")
        first = s.holder("beating").heartbeat
        deadline = time.time() + 10
        while s.holder("beating").heartbeat == first and time.time() < deadline:
            time.sleep(0.05)
        assert s.holder("beating").heartbeat > first, "the lease's heartbeat thread never refreshed the claim"
        # Taken over while it looked stale: releasing the old lease must not delete the new owner's claim.
        with sqlite3.connect(store) as conn:
            conn.execute("UPDATE claims SET owner = 'elsewhere:1:x' WHERE run_id = 'beating'")
        lease.release()
        assert s.holder("beating").owner == "elsewhere:1:x"


def test_old_store_without_claims_table_stays_readable(tmp_path: Path) -> None:
    store = tmp_path / "old.sqlite"
    old_schema = results_mod._SCHEMA.split("CREATE TABLE IF NOT EXISTS claims")[0]
    with sqlite3.connect(store) as conn:
        conn.executescript(old_schema)
        conn.execute("INSERT INTO results VALUES ('r1','survival','snn','RCC',0,'tiny','c','fp','supervised',"
                     "'{\"test_c_index\": 0.5}','{}',1,1,1,0,1.0,1.0)")
    with ResultStore(store) as s:
        assert [r.metrics for r in s.get("r1")] == [{"test_c_index": 0.5}]
        assert s.try_claim("r1") is not None


def test_stale_claim_of_a_dead_process_is_recovered(capsys, rcc_cohort: Path, tmp_path: Path, caplog) -> None:
    store = tmp_path / "s.sqlite"
    run_id = _run_id(rcc_cohort, "snn", "survival", 0)
    _insert_claim(store, run_id, pid=_dead_pid())
    with caplog.at_level(logging.WARNING, logger="bench.results"):
        code = main(["run", "--model", "snn", "--site", "rcc", "--task", "survival", "--profile", "tiny", "--cohort",
                     str(rcc_cohort), "--store", str(store), "--wandb", "disabled", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and out["status"] == "ran" and out["run_id"] == run_id
    assert "stale claim" in caplog.text and "no longer exists" in caplog.text
    assert _claims(store) == [] and len(_rows(store)) == 1


def test_run_waits_for_a_live_claim_then_serves_the_stored_result(rcc_cohort: Path, tmp_path: Path, live_pid: int,
                                                                  monkeypatch: pytest.MonkeyPatch, caplog) -> None:
    monkeypatch.setattr(runner, "CLAIM_POLL_S", 0.05)
    store = tmp_path / "s.sqlite"
    run_id = _run_id(rcc_cohort, "snn", "survival", 0)
    _insert_claim(store, run_id, pid=live_pid)
    got: dict = {}
    req = runner.RunRequest(model="snn", site="rcc", task="survival", profile="tiny", cohort=rcc_cohort, store=store,
                            wandb="disabled")
    with caplog.at_level(logging.INFO, logger="bench.runner"):
        waiter = threading.Thread(target=lambda: got.update(runner.execute(req)))
        waiter.start()
        deadline = time.time() + 60
        while "waiting for it" not in caplog.text and time.time() < deadline:
            time.sleep(0.05)
        assert "waiting for it" in caplog.text and waiter.is_alive()
        # The holder finishes: it stores its row, then releases its claim.
        cohort = Cohort.load(rcc_cohort)
        row = ResultRow(run_id=run_id, task="survival", model="snn", site="RCC", seed=0, profile="tiny",
                        cohort=str(rcc_cohort), cohort_fingerprint=cohort.fingerprint, regime="supervised",
                        metrics={"test_c_index": 0.123}, config={"task": "survival"}, n_train=1, n_val=1, n_test=1,
                        n_excluded=0, seconds=1.0)
        with ResultStore(store) as s:
            s.write([row])
        with sqlite3.connect(store) as conn:
            conn.execute("DELETE FROM claims")
        waiter.join(60)
    assert got["status"] == "cached" and got["metrics"] == {"test_c_index": 0.123}
    assert not (tmp_path / "runs").exists(), "the waiting run must not train"


def test_grid_moves_past_a_claimed_run_and_comes_back_to_it(rcc_cohort: Path, tmp_path: Path, live_pid: int,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runner, "CLAIM_POLL_S", 0.05)
    store = tmp_path / "s.sqlite"
    claimed, other = _run_id(rcc_cohort, "snn", "survival", 0), _run_id(rcc_cohort, "snn", "survival", 1)
    _insert_claim(store, claimed, pid=live_pid)
    summary: dict = {}
    grid = threading.Thread(target=lambda: summary.update(run_grid(
        TABLE2, profile="tiny", cohort_dir=rcc_cohort, store=store, models=["snn"], sites=["rcc"], seeds=[0, 1],
        jobs=1, wandb="disabled", progress=False)))
    grid.start()
    deadline = time.time() + 120
    while {other} - {r for r, _, _ in _rows(store)} and time.time() < deadline:
        time.sleep(0.1)
    stored = {r for r, _, _ in _rows(store)}
    assert other in stored and claimed not in stored and grid.is_alive(), "the grid should wait for the claimed run"
    with sqlite3.connect(store) as conn:  # the holder fails: it releases its claim without storing rows
        conn.execute("DELETE FROM claims")
    grid.join(120)
    assert summary["failed"] == [] and summary["ran"] == 4 and summary["cached"] == 0
    assert {r for r, _, _ in _rows(store)} >= {claimed, other} and len(_rows(store)) == 4
    assert _claims(store) == []


def test_a_failing_cell_does_not_stop_the_grid(capsys, rcc_cohort: Path, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from bench.regimes import RunPlan

    real_build = RunPlan.build_model

    def build(plan, n_outputs):
        if plan.entry.name == "mlp":
            raise RuntimeError("simulated crash\nin the model builder")
        return real_build(plan, n_outputs)

    monkeypatch.setattr(RunPlan, "build_model", build)
    store = tmp_path / "s.sqlite"
    code = main(["grid", "table2", "--profile", "tiny", "--models", "snn,mlp", "--sites", "rcc", "--seeds", "0",
                 "--cohort", str(rcc_cohort), "--store", str(store), "--jobs", "1", "--wandb", "disabled", "--json"])
    captured = capsys.readouterr()
    summary = json.loads(captured.out)
    assert code != 0
    assert summary["ran"] == 2 and summary["runs"] == 4
    expected = {_run_id(rcc_cohort, "mlp", t, 0): t for t in ("subtype", "survival")}
    assert {f["run_id"]: f["task"] for f in summary["failed"]} == expected
    for f in summary["failed"]:
        assert f["model"] == "mlp" and f["error"] == "RuntimeError: simulated crash in the model builder"
        assert f"run {f['run_id']} (mlp RCC {f['task']} seed 0): RuntimeError" in captured.err
    assert {m for (m,) in sqlite3.connect(store).execute("SELECT model FROM results")} == {"snn"}
    assert _claims(store) == [], "a failed run must release its claim"


def test_a_dead_worker_process_fails_only_its_run() -> None:
    requests = [{"n": n, "die": n == 1, "model": "m", "site": "S", "task": "t", "seed": n} for n in range(4)]
    results, errors = _run_requests(requests, 2, tqdm(disable=True), worker=worker_that_dies)
    assert set(errors) == {1} and "worker process died" in errors[1]
    assert {i: r["n"] for i, r in results.items()} == {0: 0, 2: 2, 3: 3}


def test_embedded_cohort_published_meanwhile_by_another_process_is_used(rcc_cohort: Path, tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from bench.data import synth

    target = runner.default_cohort_dir("tiny")
    real = synth.generate_cohort

    def racing(out, scale="tiny", seed=0, sites=None):
        shutil.copytree(rcc_cohort, target)  # the other process finishes first and publishes
        return real(out, scale=scale, seed=seed, sites=["RCC"])

    monkeypatch.setattr(synth, "generate_cohort", racing)
    cohort = runner.ensure_cohort(None, "tiny")
    assert cohort.root.resolve() == target.resolve()
    assert cohort.fingerprint == Cohort.load(rcc_cohort).fingerprint
    assert sorted(p.name for p in target.parent.iterdir()) == [target.name], "the private copy must be removed"


def test_embedded_cohort_dir_that_is_not_a_cohort_is_refused(tmp_path: Path) -> None:
    target = runner.default_cohort_dir("tiny")
    target.mkdir(parents=True)
    (target / "notes.txt").write_text("mine")
    with pytest.raises(BenchError, match="without cohort.json"):
        runner.ensure_cohort(None, "tiny")
    assert (target / "notes.txt").read_text() == "mine"
