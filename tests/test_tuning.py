"""Optuna tuning (``bench tune``): search spaces declared beside the registrations, tuned values in the
run id, validation data only (a cohort whose test features are gone still tunes), pruning from the
Lightning loop, a killed search resumed by two local workers on one storage, ``--params best``
reproducing the best trial, and the rendered table marking the tuned rows."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from bench.cli import main
from bench.data.cohort import Cohort
from bench.errors import BenchError
from bench.registry import all_models
from bench.reporting import render_table
from bench.results import ResultRow, ResultStore
from bench.runner import RunRequest, plan_run, run_config
from bench.tuning import Objective, prepare_study, run_studies, validation_view
from models.search import TRAINING_SPACE, Param, check_space, log_uniform, uniform

REPO = Path(__file__).resolve().parents[1]
SNN_TRIAL = {"lr": 1e-3, "weight_decay": 1e-5, "epochs": 5, "dropout": 0.25, "width": 128}


def test_search_spaces_are_declared_beside_the_registrations_and_checked() -> None:
    registry = all_models()
    assert [p.name for p in registry["abmil"].tuning_space()] == ["lr", "weight_decay", "epochs", "dropout",
                                                                  "hidden_dim"]
    assert [p.target for p in registry["snn"].tuning_space()] == ["train"] * 3 + ["model"] * 2
    assert registry["abmil_cat"].tuning_space() == TRAINING_SPACE  # no declaration: the regime's default
    assert registry["gigapath_lp"].tuning_space() == ()  # a frozen encoder's probes: nothing to tune
    epochs = next(p for p in TRAINING_SPACE if p.name == "epochs")
    assert epochs.bounds(10) == (5, 20) and epochs.bounds(1) == (1, 2)
    with pytest.raises(ValueError, match="dropout, which the builder does not take"):
        check_space("x", (uniform("dropout", 0.0, 0.5),), accepted={"width"})
    with pytest.raises(ValueError, match="names a more than once"):
        check_space("x", (uniform("a", 0, 1), uniform("a", 0, 1)), accepted=None)
    with pytest.raises(ValueError, match="low > 0"):
        log_uniform("lr", 0.0, 1.0)
    with pytest.raises(ValueError, match="target must be one of"):
        Param("lr", "optimizer", "float", 0.0, 1.0)


def test_tuned_values_change_training_and_enter_the_run_id(rcc_cohort: Path) -> None:
    cohort = Cohort.load(rcc_cohort)
    base = RunRequest(model="snn", site="rcc", task="survival", profile="tiny")
    default = plan_run(base, cohort)
    tuned = plan_run(replace(base, training={"lr": 3e-4, "epochs": 4}, overrides={"dropout": 0.1}), cohort)
    assert (tuned.profile.lr, tuned.profile.epochs, default.profile.lr) == (3e-4, 4, 1e-3)
    assert tuned.build_model(4).encoder[0][2].p == 0.1
    studied = plan_run(replace(base, training={"lr": 3e-4, "epochs": 4}, overrides={"dropout": 0.1},
                               tuning={"study": "s", "trials": 8}), cohort)
    assert run_config(studied).options == {"tuned_study": "s", "tuned_trials": 8}
    assert len({run_config(p).run_id() for p in (default, tuned, studied)}) == 3
    distill = plan_run(RunRequest(model="modaltune", site="rcc", task="multitask", profile="tiny",
                                  training={"lr": 2e-4}), cohort)
    assert distill.profile.distill.lr == 2e-4 and distill.profile.lr == default.profile.lr
    with pytest.raises(BenchError, match="no training setting momentum; it has lr, weight_decay"):
        plan_run(replace(base, training={"momentum": 0.9}), cohort)
    with pytest.raises(BenchError, match="lr: Input should be greater than 0"):
        plan_run(replace(base, training={"lr": -1.0}), cohort)
    with pytest.raises(BenchError, match="has nothing to tune"):
        plan_run(RunRequest(model="gigapath_lp", site="rcc", task="subtype", profile="tiny", params="best"), cohort)


def test_a_search_never_reads_the_test_split(rcc_copy: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Every test patient's feature files are deleted: a run fails for it, a search does not."""
    cohort = Cohort.load(rcc_copy)
    test = cohort.patients[cohort.patients["split"] == "test"]
    for slide in (s for ids in test["slide_ids"] for s in str(ids).split(";") if s):
        (rcc_copy / "features" / f"{slide}.h5").unlink()
    view = validation_view(cohort).site_patients("RCC")
    assert not set(view["case_id"]) & set(test["case_id"])
    assert sorted(view.loc[view["split"] == "test", "case_id"]) == sorted(view.loc[view["split"] == "val", "case_id"])

    assert main(["run", "--model", "abmil", "--site", "rcc", "--task", "subtype", "--profile", "tiny", "--cohort",
                 str(rcc_copy), "--wandb", "disabled"]) == 2
    assert "is missing" in capsys.readouterr().err

    spec = prepare_study(RunRequest(model="abmil", site="rcc", task="subtype", profile="tiny", cohort=str(rcc_copy),
                                    wandb="disabled"), trials=1, storage=f"sqlite:///{tmp_path / 'optuna.sqlite'}")
    optuna.load_study(study_name=spec["study"], storage=spec["storage"]).enqueue_trial(
        {"lr": 1e-3, "weight_decay": 1e-5, "epochs": 5, "dropout": 0.25, "hidden_dim": 128})
    [summary] = run_studies([spec])
    assert summary["complete"] == 1 and 0.0 <= summary["best"]["value"] <= 1.0
    assert summary["best"]["value"] == summary["best"]["val_metrics"]["RCC/subtype/val_balanced_accuracy"]
    assert all(key.split("/")[-1].startswith("val_") for key in summary["best"]["val_metrics"])


def test_an_unpromising_trial_is_pruned_after_its_first_epoch(rcc_cohort: Path, tmp_path: Path) -> None:
    spec = prepare_study(RunRequest(model="snn", site="rcc", task="survival", profile="tiny", cohort=str(rcc_cohort),
                                    wandb="disabled"), trials=1, storage=f"sqlite:///{tmp_path / 'optuna.sqlite'}")
    # A C-index never reaches 2: this pruner stops every trial at its first report.
    study = optuna.load_study(study_name=spec["study"], storage=spec["storage"],
                              pruner=optuna.pruners.ThresholdPruner(lower=2.0))
    study.enqueue_trial(SNN_TRIAL)
    study.optimize(Objective(spec), n_trials=1)
    trial = study.trials[0]
    assert trial.state == TrialState.PRUNED and list(trial.intermediate_values) == [0]
    [metrics] = (tmp_path / "runs" / "tune" / spec["study"] / "trial-0").glob("attempt-*/csv/metrics.csv")
    epochs = {row["epoch"] for row in csv.DictReader(metrics.open()) if row.get("val_metric")}
    assert epochs == {"0"}, "training went on after the trial was pruned"


def _states(storage: Path) -> list[tuple[int, str, bool]]:
    """(number, state, has a worker) of every trial in an Optuna SQLite file, read without Optuna (which
    would create the tables while the search creates them); [] while they do not exist yet."""
    import sqlite3

    if not storage.is_file():
        return []
    try:
        with sqlite3.connect(f"{storage.as_uri()}?mode=ro", uri=True) as conn:
            return conn.execute("SELECT number, state, EXISTS (SELECT 1 FROM trial_user_attributes a WHERE "
                                "a.trial_id = t.trial_id AND a.key = 'worker') FROM trials t").fetchall()
    except sqlite3.Error:
        return []


def test_a_killed_search_resumes_with_two_local_workers_and_params_best_reproduces_it(
        rcc_cohort: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tune = ["tune", "--model", "snn", "--site", "rcc", "--task", "survival", "--profile", "tiny", "--cohort",
            str(rcc_cohort), "--trials", "2"]
    storage = tmp_path / "optuna.sqlite"  # the default: beside the results store ($BENCH_STORE)
    proc = subprocess.Popen([sys.executable, "-m", "bench", *tune], cwd=tmp_path,
                            env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 600
    while proc.poll() is None and time.time() < deadline:
        states = _states(storage)
        if any(state == "COMPLETE" for _, state, _ in states) and any(
                state == "RUNNING" and worker for _, state, worker in states):
            break
        time.sleep(0.2)
    assert proc.poll() is None, f"the search ended before it was killed: {proc.communicate()[1][-3000:]}"
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    url = f"sqlite:///{storage}"
    before = {t.number: (t.state, t.value) for t in
              optuna.load_study(study_name=optuna.get_all_study_names(url)[0], storage=url).trials}

    assert main([*tune, "--executor", "local", "--workers", "2", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    after = optuna.load_study(study_name=summary["study"], storage=url).trials
    assert [t.number for t in after] == list(range(len(after)))
    killed = [n for n, (state, _) in before.items() if state == TrialState.RUNNING]
    assert [after[n].state for n in killed] == [TrialState.FAIL], "the killed trial is marked failed"
    assert all(after[n].value == value for n, (state, value) in before.items() if state == TrialState.COMPLETE)
    assert summary["complete"] in (2, 3) and summary["running"] == 0  # two workers may finish one trial more
    assert summary["best"]["of_trials"] == 2 and summary["failed_workers"] == []
    workers = summary["workers"]
    assert len(workers) == 2 and len({w["worker"] for w in workers}) == 2
    assert sorted(n for w in workers for n in w["ran"]) == [t.number for t in after if t.number not in before]

    run = ["run", "--model", "snn", "--site", "rcc", "--task", "survival", "--profile", "tiny", "--cohort",
           str(rcc_cohort), "--wandb", "disabled", "--json"]
    assert main([*run, "--params", "best"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["metrics"]["val_c_index"] == summary["best"]["value"], "the best trial's values were not used"
    default = run_config(plan_run(RunRequest(model="snn", site="rcc", task="survival", profile="tiny"),
                                  Cohort.load(rcc_cohort))).run_id()
    assert result["run_id"] != default
    with ResultStore(tmp_path / "results.sqlite") as store:
        [row] = store.get(result["run_id"])
    assert row.config["options"] == {"tuned_study": summary["study"], "tuned_trials": 2}
    assert row.config["profile"]["lr"] == pytest.approx(summary["best"]["params"]["lr"])


def test_table_prefers_and_marks_tuned_rows(tmp_path: Path) -> None:
    def row(run_id: str, value: float, trials: int | None, finished: float) -> ResultRow:
        options = {"tuned_study": "s", "tuned_trials": trials} if trials else {}
        return ResultRow(run_id=run_id, task="survival", model="snn", site="RCC", seed=0, profile="tiny", cohort="c",
                         cohort_fingerprint="f", regime="supervised", metrics={"test_c_index": value},
                         config={"options": options}, n_train=1, n_val=1, n_test=1, n_excluded=0, seconds=1.0,
                         finished_at=finished)

    store = tmp_path / "results.sqlite"
    with ResultStore(store) as s:
        for r in (row("tuned8", 0.7, 8, 0), row("default", 0.5, None, 0), row("tuned3", 0.6, 3, 0)):
            s.write([r])
            time.sleep(0.01)
    text = render_table("table2", store=store, profile="tiny")
    assert "‡ tuned with Optuna on validation data only" in text and "SNN: 8 trials" in text
    snn = [line for line in text.splitlines() if line.startswith("| SNN ‡ ")]
    assert len(snn) == 2 and ["0.700 / " in line for line in snn] == [False, True]  # subtype, survival
    assert not any("0.500 / " in line or "0.600 / " in line for line in snn), "the default or 3-trial run was shown"
    assert "| MLP " in text and "MLP ‡" not in text


def test_tune_refuses_bad_requests(rcc_cohort: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = ["tune", "--site", "rcc", "--profile", "tiny", "--cohort", str(rcc_cohort), "--trials", "2"]
    cases = [(["--model", "gigapath_lp"], "has nothing to tune"),
             (["--model", "snn", "--task", "survival", "--storage", "optuna.sqlite"], "is not a URL"),
             (["--model", "snn", "--task", "survival", "--workers", "2"], "add --executor local"),
             (["--grid", "table2", "--model", "snn"], "drop --model/--site/--task"),
             (["--model", "snn", "--task", "survival", "--executor", "local", "--slurm-mem", "8G"],
              "--slurm-mem set the SLURM jobs of --executor slurm")]
    for extra, message in cases:
        assert main([*base, *extra]) == 2, extra
        assert message in capsys.readouterr().err, extra
    assert main(["grid", "table2", "--profile", "tiny", "--models", "snn", "--sites", "rcc", "--seeds", "0",
                 "--cohort", str(rcc_cohort), "--params", "best"]) == 2
    err = capsys.readouterr().err
    assert "no tuning study snn.RCC.subtype.tiny.seed0." in err and "python -m bench tune --model snn" in err
