"""Grids as jobs through submitit: the local executor's real subprocesses give exactly the in-process
grid's rows, a killed driver's grid resumes without losing or duplicating anything, and the SLURM
settings reach submitit's SLURM executor as its own parameters."""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.cli import main
from bench.errors import BenchError
from bench.executors import Ledger, load_slurm_settings, make_executor, slurm_minutes, slurm_parameters
from bench.grids import TABLE2, run_grid

REPO = Path(__file__).resolve().parents[1]


def _rows(store: Path) -> dict[tuple[str, str, str], tuple]:
    """(run id, site, task) -> what a run computed (metrics, config, counts); never the finishing time."""
    with sqlite3.connect(store) as conn:
        rows = conn.execute("SELECT run_id, site, task, model, seed, metrics, config, n_train, n_val, n_test, "
                            "n_excluded FROM results").fetchall()
    return {r[:3]: r[3:] for r in rows}


def _stored(store: Path) -> int:
    """Rows in ``store`` so far (0 while the driver is still creating it)."""
    try:
        return len(_rows(store)) if store.is_file() else 0
    except sqlite3.OperationalError:
        return 0


def test_slurm_settings_map_onto_submitit_slurm_parameters(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import submitit
    from submitit.slurm.slurm import _make_sbatch_string

    config = tmp_path / "slurm.yaml"
    config.write_text("partition: cpu\ngpus: 1\ntime: '1-00:00:00'\nmem: 16GB\ncpus_per_task: 8\naccount: lab\n"
                      "setup: ['source .venv/bin/activate']\nadditional: {mail-type: END}\n")
    settings = load_slurm_settings(config, partition="gpu", gpus=2, time="02:30:00", mem=None)
    params = slurm_parameters(settings)
    assert params == {"nodes": 1, "ntasks_per_node": 1, "partition": "gpu", "gpus_per_node": 2, "time": 150,
                      "mem": "16G", "cpus_per_task": 8, "account": "lab", "setup": ["source .venv/bin/activate"],
                      "additional_parameters": {"mail-type": "END"}}
    # submitit's own validation and sbatch rendering (no srun here: pretend the cluster is reachable)
    monkeypatch.setattr(submitit.SlurmExecutor, "affinity", classmethod(lambda cls: 2))
    executor = make_executor("slurm", tmp_path / "jobs", settings, "bench-abmil-RCC-survival-s0")
    assert {k: executor.parameters[k] for k in params} == params
    sbatch = _make_sbatch_string(command="python -m job", folder=tmp_path / "jobs", **executor.parameters)
    for line in ("#SBATCH --partition=gpu", "#SBATCH --gpus-per-node=2", "#SBATCH --time=150", "#SBATCH --mem=16G",
                 "#SBATCH --cpus-per-task=8", "#SBATCH --account=lab", "#SBATCH --mail-type=END",
                 "#SBATCH --job-name=bench-abmil-RCC-survival-s0", "source .venv/bin/activate"):
        assert line in sbatch, f"{line!r} missing from\n{sbatch}"


def test_slurm_times_and_bad_settings(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert [slurm_minutes(t) for t in ("90", "1:30", "02:00:00", "1-12", "2-00:30", "0-0:0:59")] == [90, 2, 120, 2160,
                                                                                                   2910, 1]
    for bad in ("0", "1h", "", "1:2:3:4"):
        with pytest.raises(ValueError, match="SLURM's formats|positive"):
            slurm_minutes(bad)
    config = tmp_path / "slurm.yaml"
    config.write_text("partition: gpu\ngpu: 2\n")
    with pytest.raises(BenchError, match=r"slurm.yaml: gpu: Extra inputs.*valid keys: partition, gpus"):
        load_slurm_settings(config)
    with pytest.raises(BenchError, match="mem: .*whole number"):
        load_slurm_settings(None, mem="lots")
    with pytest.raises(BenchError, match="time: .*SLURM's formats"):
        load_slurm_settings(None, time="two hours")
    config.write_text("- not a mapping\n")
    with pytest.raises(BenchError, match="expected a mapping"):
        load_slurm_settings(config)
    assert main(["grid", "table2", "--profile", "tiny", "--slurm-partition", "gpu"]) == 2
    assert "--slurm-partition set the SLURM jobs of --executor slurm" in capsys.readouterr().err
    if shutil.which("sbatch") is None:  # this machine (CI) has no SLURM: refused before anything is planned
        assert main(["grid", "table2", "--profile", "tiny", "--executor", "slurm", "--slurm-time", "1:00:00"]) == 2
        assert "no `sbatch`/`srun` on this machine" in capsys.readouterr().err


def test_a_job_is_found_again_without_its_ledger_and_forgotten_once_stored(tmp_path: Path) -> None:
    """A driver killed between submitting a job and writing its ledger: the submission file names the job."""
    folder = tmp_path / "run"
    folder.mkdir()
    for name in ("4242_submitted.pkl", "4242_0_result.pkl", "4242_0_log.err"):
        (folder / name).write_text("x")
    ledger = Ledger.read(folder, "local")
    assert (ledger.executor, ledger.job_id) == ("local", "4242")
    Ledger(folder, "slurm", "77", 0.0, "login1").write()
    assert (Ledger.read(folder, "local").executor, Ledger.read(folder, "local").job_id) == ("slurm", "77")
    ledger.remove()
    assert sorted(p.name for p in folder.iterdir()) == ["4242_0_log.err"]
    assert Ledger.read(folder, "local") is None


def test_local_executor_grid_equals_in_process_and_survives_a_killed_driver(
        rcc_cohort: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A four-run grid through submitit's local executor, its driver killed (SIGKILL) once a row is
    stored and rerun: every row stored once, each run trained once, and the rows are the in-process grid's."""
    store = tmp_path / "jobs.sqlite"
    args = ["grid", "table2", "--profile", "tiny", "--models", "snn,mlp", "--sites", "rcc", "--seeds", "0",
            "--cohort", str(rcc_cohort), "--wandb", "disabled"]
    driver = subprocess.Popen([sys.executable, "-m", "bench", *args, "--store", str(store), "--executor", "local",
                               "--jobs", "2"],
                              cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO)},
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 600
    while not _stored(store) and driver.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    assert driver.poll() is None, f"the driver ended before it was killed: {driver.communicate()[1][-3000:]}"
    driver.send_signal(signal.SIGKILL)
    driver.communicate()
    stored_before = set(_rows(store))
    assert 1 <= len(stored_before) < 4

    summary = run_grid(TABLE2, profile="tiny", cohort_dir=rcc_cohort, store=store, models=["snn", "mlp"],
                       sites=["rcc"], seeds=[0], jobs=2, wandb="disabled", progress=False, executor="local")
    assert summary["failed"] == [] and summary["runs"] == 4
    assert summary["cached"] >= len(stored_before) and summary["ran"] + summary["cached"] == 4
    rows = _rows(store)
    assert len(rows) == 4 and stored_before <= set(rows)
    attempts = list((tmp_path / "runs").glob("*/*/attempt-*"))
    assert len(attempts) == 4 and len({a.parent for a in attempts}) == 4, f"a run was trained twice: {attempts}"
    assert not list((tmp_path / "jobs").glob("*/job.json")) and not list((tmp_path / "jobs").glob("*/*.pkl")), \
        "every collected job is forgotten (its logs stay)"
    with sqlite3.connect(store) as conn:
        assert conn.execute("SELECT COUNT(*) FROM claims").fetchone()[0] == 0

    in_process = tmp_path / "in-process"
    in_process.mkdir()
    monkeypatch.chdir(in_process)
    assert main([*args, "--store", str(in_process / "results.sqlite"), "--jobs", "1"]) == 0
    assert _rows(in_process / "results.sqlite") == rows
