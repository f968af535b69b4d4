"""The supervised harness end to end on the tiny synthetic cohort: CLI contract, caching,
determinism, logging, metric sign conventions and the survival loss."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from bench.cli import main
from bench.metrics import c_index, subtype_metrics, survival_metrics
from bench.results import ResultStore
from models.tasks import survival_nll, survival_risk


def run_json(capsys, *argv: str) -> tuple[int, dict]:
    code = main(list(argv))
    out = capsys.readouterr().out
    return code, (json.loads(out) if out.strip() else {})


def test_run_json_contract_cache_and_force(capsys, rcc_cohort: Path, tmp_path: Path) -> None:
    store = tmp_path / "s.sqlite"
    args = ["run", "--model", "ABMIL", "--site", "rcc", "--task", "subtype", "--profile", "tiny",
            "--cohort", str(rcc_cohort), "--store", str(store), "--wandb", "disabled", "--json"]
    code, first = run_json(capsys, *args)
    assert code == 0
    assert set(first) >= {"run_id", "status", "model", "site", "task", "seed", "profile", "metrics", "n_train",
                          "n_val", "n_test", "n_excluded", "seconds"}
    assert (first["status"], first["model"], first["site"], first["task"]) == ("ran", "abmil", "RCC", "subtype")
    assert {"test_balanced_accuracy", "val_balanced_accuracy", "test_auc"} <= set(first["metrics"])
    assert 0.0 <= first["metrics"]["test_balanced_accuracy"] <= 1.0
    code, second = run_json(capsys, *args)
    assert second["status"] == "cached" and second["run_id"] == first["run_id"]
    assert second["metrics"] == first["metrics"]
    code, third = run_json(capsys, *args, "--force")
    assert third["status"] == "ran"
    with ResultStore(store) as s:
        assert len(s.get(first["run_id"])) == 1


def test_same_seed_same_metrics_different_seed_differs(capsys, rcc_cohort: Path, tmp_path: Path) -> None:
    def once(store: str, seed: int) -> dict:
        code, out = run_json(capsys, "run", "--model", "snn", "--site", "RCC", "--task", "survival", "--seed",
                             str(seed), "--profile", "tiny", "--cohort", str(rcc_cohort), "--store", store,
                             "--wandb", "disabled", "--json")
        assert code == 0 and out["status"] == "ran"
        return out

    a, b = once(str(tmp_path / "a.sqlite"), 0), once(str(tmp_path / "b.sqlite"), 0)
    assert a["run_id"] == b["run_id"]
    assert a["metrics"] == b["metrics"]
    c = once(str(tmp_path / "c.sqlite"), 1)
    assert c["run_id"] != a["run_id"]
    assert c["metrics"] != a["metrics"]


def test_rna_model_excludes_patients_without_rna(capsys, tiny_cohort: Path) -> None:
    import pandas as pd

    patients = pd.read_csv(tiny_cohort / "patients.csv")
    brca = patients[patients["site"] == "BRCA"]
    code, out = run_json(capsys, "run", "--model", "snn", "--site", "brca", "--task", "subtype", "--profile", "tiny",
                         "--cohort", str(tiny_cohort), "--wandb", "disabled", "--json")
    assert code == 0
    expected_excluded = int((brca["label"] == -1).sum() + ((brca["label"] != -1) & (brca["has_rna"] == 0)).sum())
    assert out["n_excluded"] == expected_excluded > 0
    assert out["n_train"] + out["n_val"] + out["n_test"] + out["n_excluded"] == len(brca)


def test_loggers_write_csv_and_one_offline_wandb_run_per_run(capsys, rcc_cohort: Path, tmp_path: Path) -> None:
    ids = []
    for seed in ("0", "1"):  # two runs in one process (as a grid worker does) must not share a W&B run
        code, out = run_json(capsys, "run", "--model", "snn", "--site", "rcc", "--task", "subtype", "--profile",
                             "tiny", "--seed", seed, "--cohort", str(rcc_cohort), "--wandb", "offline", "--json")
        assert code == 0
        ids.append(out["run_id"])
    for run_id in ids:
        (run_dir,) = (tmp_path / "runs" / "snn").glob(f"*-{run_id}/attempt-*")
        metrics_csv = run_dir / "csv" / "metrics.csv"
        assert metrics_csv.is_file() and "val_metric" in metrics_csv.read_text()
        assert list(run_dir.glob(f"wandb/offline-run-*-{run_id}")), f"W&B offline run of {run_id} missing"


def test_c_index_sign_on_known_case() -> None:
    time_ = np.array([1.0, 2.0, 3.0, 4.0])
    event = np.array([1, 1, 1, 1])
    risk = np.array([4.0, 3.0, 2.0, 1.0])  # earliest death has the highest risk: perfect ordering
    assert c_index(event, time_, risk) == pytest.approx(1.0)
    assert c_index(event, time_, -risk) == pytest.approx(0.0)
    # the models' risk: a patient predicted to die in bin 0 is riskier than one surviving every bin
    logits = torch.tensor([[5.0, 5.0, 5.0, 5.0], [-5.0, -5.0, -5.0, -5.0]])
    r = survival_risk(logits).numpy()
    assert r[0] > r[1]
    assert survival_metrics(np.array([1, 1]), np.array([1.0, 10.0]), r)["c_index"] == pytest.approx(1.0)


def test_subtype_metrics_ignore_rare_set() -> None:
    labels = np.array([0, 1, -1, -1])
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.9, 0.1], [0.9, 0.1]])
    assert subtype_metrics(labels, probs)["balanced_accuracy"] == 1.0


def test_survival_nll_prefers_the_right_bin() -> None:
    right = torch.tensor([[-4.0, 4.0, 0.0, 0.0]])  # event in bin 1
    wrong = torch.tensor([[4.0, -4.0, 0.0, 0.0]])
    y, dead, alive = torch.tensor([1]), torch.tensor([1]), torch.tensor([0])
    assert survival_nll(right, y, dead) < survival_nll(wrong, y, dead)
    # censored in bin 1: surviving bins 0 and 1 must be likely — low hazards win
    low = torch.full((1, 4), -4.0)
    high = torch.full((1, 4), 4.0)
    assert survival_nll(low, y, alive) < survival_nll(high, y, alive)
    # alpha = 1 keeps only the uncensored term: a censored patient contributes nothing
    assert survival_nll(high, y, alive, alpha=1.0) == 0.0


def test_data_stats_shape(capsys, tiny_cohort: Path) -> None:
    code, stats = run_json(capsys, "data", "stats", str(tiny_cohort), "--json")
    assert code == 0
    brca = stats["sites"]["BRCA"]
    assert set(brca) >= {"train", "val", "test", "events", "censored", "classes", "bin_upper_months", "has_rna",
                         "has_wsi"}
    assert brca["bin_upper_months"] == [15.0, 27.0, 55.0, 283.0]
    assert set(brca["classes"]) == {"-1", "0", "1"}
    total = brca["train"] + brca["val"] + brca["test"]
    assert brca["events"] + brca["censored"] == total == sum(brca["classes"].values())


def test_run_without_task_runs_every_task_of_the_model(capsys, tmp_path: Path) -> None:
    """The design card's command: no --task, no --cohort. Each task is its own run and stored row, printed
    together; the embedded cohort and the store land where BENCH_COHORTS / BENCH_STORE point."""
    args = ["run", "--model", "survpath", "--site", "rcc", "--profile", "tiny", "--wandb", "disabled"]
    code, out = run_json(capsys, *args, "--json")
    assert code == 0
    assert (out["model"], out["site"], out["seed"], out["profile"]) == ("survpath", "RCC", 0, "tiny")
    assert out["tasks"] == ["subtype", "survival"]
    assert [(r["task"], r["status"]) for r in out["runs"]] == [("subtype", "ran"), ("survival", "ran")]
    assert "test_balanced_accuracy" in out["runs"][0]["metrics"] and "test_c_index" in out["runs"][1]["metrics"]
    assert (tmp_path / "default-cohorts" / "synthetic-tiny" / "cohort.json").is_file()
    with ResultStore(tmp_path / "results.sqlite") as store:
        rows = store.rows(profile="tiny")
    assert sorted((r.model, r.site, r.task, r.run_id) for r in rows) == sorted(
        ("survpath", "RCC", r["task"], r["run_id"]) for r in out["runs"])
    # --task keeps the single-run object, and is the same run as the matching entry of "runs"
    code, single = run_json(capsys, *args, "--task", "survival", "--json")
    assert code == 0 and single["status"] == "cached" and single["run_id"] == out["runs"][1]["run_id"]
    assert single["metrics"] == out["runs"][1]["metrics"]
    # without --json: one line per run
    assert main(args) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[:4] for line in lines] == [["cached:", "survpath", "RCC", "subtype"],
                                                   ["cached:", "survpath", "RCC", "survival"]]


def _row(site: str, task: str, config_site: str, value: float):
    from bench.results import ResultRow

    return ResultRow(run_id="r", task=task, model="modaltune", site=site, seed=0, profile="tiny", cohort="c",
                     cohort_fingerprint="f", regime="text_distill", metrics={f"test_{task}": value},
                     config={"site": config_site, "task": "multitask"}, n_train=10, n_val=2, n_test=3,
                     n_excluded=0, seconds=1.0)


def test_run_report_keeps_the_trained_site_and_nests_deployed_sites() -> None:
    """A BRCA ModalTune run also stores COADREAD/BLCA rows: it reports BRCA, not a pan-cancer run."""
    from bench.runner import _report

    rows = [_row(s, t, "BRCA", v) for s, v in (("BRCA", 0.8), ("COADREAD", 0.6), ("BLCA", 0.55))
            for t in ("subtype", "survival")]
    out = _report(rows, "ran")
    assert out["site"] == "BRCA"
    assert out["metrics"]["test_subtype"] == 0.8
    assert set(out["metrics"]["deployed"]) == {"COADREAD", "BLCA"}
    assert out["n_test"] == 3
    pan = _report([_row(s, "subtype", "PANCANCER", 0.7) for s in ("BRCA", "RCC")], "ran")
    assert pan["site"] == "PANCANCER" and set(pan["metrics"]["sites"]) == {"BRCA", "RCC"}
