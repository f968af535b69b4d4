"""The linear_probe regime: cached embeddings, probes with a known answer, weights in the run id."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from bench.cli import main
from bench.data.cohort import Cohort
from bench.data.dataset import prepare_site
from bench.train.probe import probe_subtype, probe_survival


def _json(capsys, *argv: str) -> tuple[int, dict]:
    code = main(list(argv))
    out = capsys.readouterr().out
    return code, (json.loads(out) if out.strip() else {})


def test_probes_recover_a_planted_embedding(rcc_cohort: Path) -> None:
    """Embeddings that encode the label / the survival time are probed to near-perfect scores."""
    cohort = Cohort.load(rcc_cohort)
    data = prepare_site(cohort, "RCC", "subtype", ("rna",), "probe-test")
    rng = np.random.default_rng(0)
    x = {s: np.eye(3)[ds.labels] * 3 + rng.normal(0, 0.1, (len(ds), 3)) for s, ds in data.splits.items()}
    assert probe_subtype(x, data)["test_balanced_accuracy"] == 1.0
    x_noise = {s: rng.normal(size=(len(ds), 3)) for s, ds in data.splits.items()}
    assert probe_subtype(x_noise, data)["test_balanced_accuracy"] < 0.8
    surv = prepare_site(cohort, "RCC", "survival", ("rna",), "probe-test")
    x = {s: -np.log(ds.months[:, None] + 1.0) + rng.normal(0, 0.01, (len(ds), 1)) for s, ds in surv.splits.items()}
    assert probe_survival(x, surv)["test_c_index"] > 0.9  # higher embedding = shorter time = higher hazard


def test_embed_then_probe_reuses_the_cache(capsys, rcc_cohort: Path, tmp_path: Path) -> None:
    code, emb = _json(capsys, "embed", "--model", "gigapath", "--cohort", str(rcc_cohort), "--profile", "tiny", "--json")
    assert code == 0 and emb["patients"]["RCC"] > 0
    cache = Path(emb["cache"])
    stamp = cache.stat().st_mtime_ns
    code, run = _json(capsys, "run", "--model", "gigapath_lp", "--site", "rcc", "--task", "survival", "--profile",
                      "tiny", "--cohort", str(rcc_cohort), "--wandb", "disabled", "--json")
    assert code == 0 and 0.0 <= run["metrics"]["test_c_index"] <= 1.0
    assert cache.stat().st_mtime_ns == stamp, "the probe must read the cached embeddings, not recompute them"


def test_weights_file_changes_the_run_and_missing_weights_are_an_error(capsys, rcc_cohort: Path) -> None:
    from models.gigapath import GigaPathConfig, GigaPathSlideEncoder

    cfg = GigaPathConfig.for_profile("tiny", feature_dim=json.loads((rcc_cohort / "cohort.json").read_text())["feature_dim"])
    torch.manual_seed(5)
    path = Path("slide_encoder.pth")
    torch.save(GigaPathSlideEncoder(cfg).state_dict(), path)
    base = ["run", "--model", "gigapath_lp", "--site", "rcc", "--task", "subtype", "--profile", "tiny", "--cohort",
            str(rcc_cohort), "--wandb", "disabled", "--json"]
    code, random_init = _json(capsys, *base)
    code, loaded = _json(capsys, *base, "--weights", str(path))
    assert code == 0 and loaded["run_id"] != random_init["run_id"]
    assert main([*base, "--weights", "nowhere.pth"]) == 2
    assert "nowhere.pth does not exist" in capsys.readouterr().err


@pytest.mark.parametrize("model", ["gigapath_tuned", "gigapath_cat", "gigapath_kp"])
def test_tuned_slide_encoder_rows_run(capsys, model: str, rcc_cohort: Path) -> None:
    code, out = _json(capsys, "run", "--model", model, "--site", "rcc", "--task", "survival", "--profile", "tiny",
                      "--cohort", str(rcc_cohort), "--wandb", "disabled", "--json")
    assert code == 0 and out["status"] == "ran" and 0.0 <= out["metrics"]["test_c_index"] <= 1.0


@pytest.mark.parametrize("model", ["titan_lp", "titan_tuned", "titan_cat", "titan_kp"])
def test_titan_rows_run(capsys, model: str, rcc_cohort: Path) -> None:
    code, out = _json(capsys, "run", "--model", model, "--site", "rcc", "--task", "subtype", "--profile", "tiny",
                      "--cohort", str(rcc_cohort), "--wandb", "disabled", "--json")
    assert code == 0 and 0.0 <= out["metrics"]["test_balanced_accuracy"] <= 1.0
