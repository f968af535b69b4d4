"""Issue 12 (ModalTune must learn): the release's tie-break, collapse diagnostics and flag, the probe
preprocessing setting, run options and the variants beyond the paper, the text-encoder options."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from bench.cli import main
from bench.config import PROFILES
from bench.data.cohort import Cohort
from bench.data.dataset import prepare_site
from bench.results import ResultRow, ResultStore
from bench.runner import RunRequest, ensure_text_cache, plan_run, run_config


def _json(capsys, *argv: str) -> tuple[int, dict]:
    code = main(list(argv))
    out = capsys.readouterr().out
    return code, (json.loads(out) if out.strip() else {})


def _train_tiny(rcc_cohort: Path, epochs: int, **kwargs):
    """A tiny ModalTune distillation on RCC (seeded): the outcome of :func:`train_distill`."""
    import lightning as L

    import bench.train.distill as distill
    from bench.registry import get_model
    from bench.runner import model_context
    from models.text.projector import TextProjector

    cohort = Cohort.load(rcc_cohort)
    text = ensure_text_cache(cohort, "bow")
    data = prepare_site(cohort, "RCC", "multitask", ("wsi", "rna"), "modaltune", 64, text=text)
    L.seed_everything(0, workers=True, verbose=False)
    model = get_model("modaltune").build(model_context(cohort, 4, "tiny"))
    settings = PROFILES["tiny"].distill.model_copy(update={"epochs": epochs})
    return distill.train_distill(model, TextProjector(text.dim, model.embed_dim), {"RCC": data}, settings,
                                 run_dir=Path("."), loggers=[], **kwargs)


# ------------------------------------------------------------------------------------------- selection
def test_a_flat_validation_curve_selects_the_last_epoch(rcc_cohort: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The release keeps a new best model on ``>=``: with equal scores the trained model wins, not epoch 0."""
    import bench.train.distill as distill

    monkeypatch.setattr(distill, "probe_subtype", lambda *a, **k: {"val_balanced_accuracy": 0.5})
    outcome = _train_tiny(rcc_cohort, 3)
    assert outcome.val_history == [0.5, 0.5, 0.5]
    assert outcome.best_epoch == 2


# ------------------------------------------------------------------------------------------- loss and diagnostics
def test_loss_floor_and_centring() -> None:
    """The floor is the KL of predicting the mean target distribution; centring subtracts the mean target."""
    from bench.train.distill import DistillLoss, distillation_loss

    torch.manual_seed(0)
    y = torch.randn(6, 3, 16)
    loss = DistillLoss()
    assert float(loss.floor(y[:1].expand(6, 3, 16), y[:1])) == pytest.approx(0.0, abs=1e-7)  # one shared target
    q = torch.softmax(torch.nn.functional.normalize(y, dim=-1), -1)
    q_mean = q.mean(0, keepdim=True)
    by_hand = 10 * (q * (q.log() - q_mean.log())).sum() / 6
    assert float(loss.floor(y, y)) == pytest.approx(float(by_hand), rel=1e-5)
    z = torch.randn(6, 3, 16)
    centred = DistillLoss(center=True)
    centred.target_mean = torch.nn.functional.normalize(y, dim=-1).mean(0)
    expected = distillation_loss(z, torch.nn.functional.normalize(y, dim=-1) - centred.target_mean)
    assert torch.allclose(centred(z, y), expected)
    assert not torch.allclose(centred(z, y), loss(z, y))
    shared = y[:1].expand(6, 3, 16) + 0.01 * torch.randn(6, 3, 16)  # targets that differ little between patients
    centred.target_mean = torch.nn.functional.normalize(shared, dim=-1).mean(0)
    assert float(centred.floor(shared, shared)) > 100 * float(loss.floor(shared, shared))  # what differs, at full scale
    cold = DistillLoss(temperature=0.07)
    assert torch.allclose(cold(z, y), distillation_loss(z, y, 0.07)) and not torch.allclose(cold(z, y), loss(z, y))
    with pytest.raises(RuntimeError, match="TargetCentring"):
        DistillLoss(center=True)(z, y)


@pytest.mark.parametrize(("cosine", "floor_ratio", "collapsed"), [
    (0.17, 0.86, False), (0.1, 0.999, False), (0.09, 0.5, True), (0.3, 1.0, True), (0.014, 1.006, True),
    (math.nan, 0.5, True), (0.5, math.nan, True)])
def test_collapse_rule(cosine: float, floor_ratio: float, collapsed: bool) -> None:
    from bench.train.collapse import is_collapsed

    assert is_collapsed(cosine, floor_ratio) is collapsed


def test_diagnostics_are_logged_per_epoch_and_stored(capsys, rcc_cohort: Path, tmp_path: Path) -> None:
    store = tmp_path / "mt.sqlite"
    code, out = _json(capsys, "run", "--model", "modaltune", "--site", "rcc", "--profile", "tiny", "--cohort",
                      str(rcc_cohort), "--store", str(store), "--wandb", "disabled", "--json")
    assert code == 0
    metrics = out["runs"][0]["metrics"]
    for key in ("diag_general_std", "diag_centered_cosine", "diag_val_kl", "diag_val_kl_floor", "diag_kl_floor_ratio",
                "diag_general_std_init", "diag_centered_cosine_init", "diag_std_ratio", "init_val_balanced_accuracy"):
        assert math.isfinite(metrics[key]), key
    assert metrics["diag_std_ratio"] == pytest.approx(metrics["diag_general_std"] / metrics["diag_general_std_init"])
    assert metrics["diag_val_kl_floor"] > 0
    from bench.train.collapse import is_collapsed

    assert metrics["collapsed"] == float(is_collapsed(metrics["diag_centered_cosine"], metrics["diag_kl_floor_ratio"]))
    assert metrics["diag_kl_floor_ratio"] == pytest.approx(metrics["diag_val_kl"] / metrics["diag_val_kl_floor"])
    with ResultStore(store) as s:
        rows = s.get(out["runs"][0]["run_id"])
    assert all(r.metrics["collapsed"] == metrics["collapsed"] for r in rows)
    logged = next(Path("runs").glob("modaltune/*/attempt-*/csv/metrics.csv"))
    with open(logged) as f:
        table = list(csv.DictReader(f))
    per_epoch = [r for r in table if r.get("diag_general_std")]
    assert len(per_epoch) == PROFILES["tiny"].distill.epochs
    assert sum(1 for r in table if r.get("init/diag_general_std")) == 1


def test_table_marks_collapsed_rows_and_names_the_settings(capsys, tmp_path: Path) -> None:
    def row(model: str, seed: int, collapsed: float, probe: str) -> ResultRow:
        config = {"resolved_model": {"run_options": {"probe": probe}, "config": {"text_encoder": "bow"}}}
        return ResultRow(run_id=f"{model}{seed}", task="subtype", model=model, site="BRCA", seed=seed, profile="tiny",
                         cohort="c", cohort_fingerprint="f", regime="text_distill",
                         metrics={"test_balanced_accuracy": 0.6, "collapsed": collapsed}, config=config,
                         n_train=1, n_val=1, n_test=1, n_excluded=0, seconds=1.0)

    store = tmp_path / "t.sqlite"
    with ResultStore(store) as s:
        s.write([row("modaltune", 0, 1.0, "raw"), row("modaltune", 1, 0.0, "raw"),
                 row("modaltune_pancancer", 0, 0.0, "standardized")])
    assert main(["table", "table2", "--store", str(store)]) == 0
    out = capsys.readouterr().out
    marked = [line for line in out.splitlines() if line.startswith("| ModalTune")]
    assert any("ModalTune (Ours) †" in line for line in marked)
    assert not any("Pan-Cancer (Ours) †" in line for line in marked)
    assert "† ended collapsed (ModalTune (Ours): 1 of 2 runs)" in out
    assert "raw (as the ModalTune release" in out and "standardized (z-scored" in out and "modaltune_pancancer" in out
    assert "ModalTune text targets embedded by: bow" in out


# ------------------------------------------------------------------------------------------- probe preprocessing
def test_standardized_probe_differs_from_raw_on_a_scaled_feature(rcc_cohort: Path) -> None:
    """A label-carrying feature scaled by 1e-4 is invisible to the L2-penalised raw probe; standardising
    recovers it. The Cox probe is unchanged (lifelines standardises covariates itself)."""
    from bench.train.probe import preprocess, probe_subtype, probe_survival

    cohort = Cohort.load(rcc_cohort)
    data = prepare_site(cohort, "RCC", "subtype", ("rna",), "probe-test")
    rng = np.random.default_rng(0)
    x = {s: (np.eye(3)[ds.labels] * 3 + rng.normal(0, 0.1, (len(ds), 3))) * 1e-4 for s, ds in data.splits.items()}
    raw = probe_subtype(x, data)["test_balanced_accuracy"]
    standardized = probe_subtype(x, data, preprocessing="standardized")["test_balanced_accuracy"]
    assert standardized == 1.0 and raw < 0.6
    z = preprocess(x, "standardized")
    np.testing.assert_allclose(z["train"].mean(0), 0, atol=1e-5)
    np.testing.assert_allclose(z["train"].std(0), 1, atol=1e-4)
    surv = prepare_site(cohort, "RCC", "survival", ("rna",), "probe-test")
    xs = {s: np.c_[-np.log(ds.months + 1.0), rng.normal(size=len(ds))] * 1e-3 for s, ds in surv.splits.items()}
    assert probe_survival(xs, surv)["test_c_index"] == pytest.approx(
        probe_survival(xs, surv, preprocessing="standardized")["test_c_index"], abs=1e-6)
    with pytest.raises(ValueError, match="unknown probe preprocessing"):
        preprocess(x, "whitened")


def test_probe_setting_enters_the_run_id_but_not_the_embedding_cache(capsys, rcc_cohort: Path) -> None:
    base = ["run", "--model", "gigapath_lp", "--site", "rcc", "--task", "subtype", "--profile", "tiny", "--cohort",
            str(rcc_cohort), "--wandb", "disabled", "--json"]
    code, raw = _json(capsys, *base)
    assert code == 0
    cache = next(Path(rcc_cohort, ".cache").glob("embeddings-gigapath_lp-*.npz"))
    stamp = cache.stat().st_mtime_ns
    code, standardized = _json(capsys, *base, "--probe", "standardized")
    assert code == 0 and standardized["status"] == "ran" and standardized["run_id"] != raw["run_id"]
    assert cache.stat().st_mtime_ns == stamp, "the standardized probe must read the same cached embeddings"
    with ResultStore(Path("results.sqlite")) as s:
        stored = s.get(standardized["run_id"])[0]
    assert stored.config["resolved_model"]["run_options"] == {"probe": "standardized"}
    assert main(["run", "--model", "abmil", "--site", "rcc", "--task", "subtype", "--profile", "tiny",
                 "--cohort", str(rcc_cohort), "--probe", "standardized"]) == 2
    assert "does not read the run option(s) probe" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------- variants
def test_variants_beyond_the_paper_are_registered_configurations() -> None:
    from bench.registry import all_models
    from bench.runner import synthetic_context

    models = all_models()
    expected = {"modaltune_centered": {"distill_center": True}, "modaltune_t007": {"distill_temperature": 0.07},
                "modaltune_std_probe": {"probe": "standardized"},
                "modaltune_centered_std": {"distill_center": True, "probe": "standardized"}}
    ctx = synthetic_context("tiny", 4, "tiny")
    base = models["modaltune"].resolve(ctx)
    for name, options in expected.items():
        entry = models[name]
        assert entry.base == "modaltune" and entry.beyond_paper and "beyond the paper" in entry.label
        assert dict(entry.run_options) == options and entry.regime == "text_distill"
        resolved = entry.resolve(ctx)
        assert resolved["config"] == base["config"], "a run option never changes the model"
        assert resolved["run_options"] == {**base["run_options"], **options}


def test_register_variant_refuses_bad_run_options() -> None:
    from bench.registry import all_models
    from models.registry import register_variant

    all_models()
    with pytest.raises(ValueError, match="does not read the run option"):
        register_variant("x_lp_center", "gigapath_lp", label="x", overrides={}, description="x",
                         run_options={"distill_center": True})
    with pytest.raises(ValueError, match="must be a finite number > 0"):
        register_variant("x_mt_temp", "modaltune", label="x", overrides={}, description="x",
                         run_options={"distill_temperature": 0})
    with pytest.raises(ValueError, match="must be one of raw, standardized"):
        register_variant("x_mt_probe", "modaltune", label="x", overrides={}, description="x",
                         run_options={"probe": "whitened"})
    assert not {"x_lp_center", "x_mt_temp", "x_mt_probe"} & set(all_models())


def test_models_listing_shows_run_options(capsys) -> None:
    code, out = _json(capsys, "models", "--profile", "tiny", "--json")
    assert code == 0
    entry = next(m for m in out["models"] if m["name"] == "modaltune_centered")
    assert entry["run_options"] == {"distill_center": True} and entry["beyond_paper"] is True


# ------------------------------------------------------------------------------------------- text encoder
def test_text_encoder_option_is_checked_and_enters_the_run_id(capsys, rcc_cohort: Path, tmp_path: Path) -> None:
    base = ["run", "--model", "modaltune", "--site", "rcc", "--profile", "tiny", "--cohort", str(rcc_cohort),
            "--wandb", "disabled"]
    with pytest.raises(SystemExit) as exit_info:
        main([*base, "--text-encoder", "gpt"])
    assert exit_info.value.code == 2 and "expected bow, conch or hf:DIR" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([*base, "--text-encoder", f"hf:{tmp_path / 'nowhere'}"])
    assert "no such directory" in capsys.readouterr().err
    weights = tmp_path / "conch.pt"
    weights.write_bytes(b"not a checkpoint")
    assert main([*base, "--text-weights", str(weights)]) == 2
    assert "--text-weights is read by --text-encoder conch only" in capsys.readouterr().err
    assert main(["run", "--model", "abmil", "--site", "rcc", "--task", "subtype", "--profile", "tiny", "--cohort",
                 str(rcc_cohort), "--text-encoder", "conch"]) == 2
    assert "takes no text encoder" in capsys.readouterr().err
    assert main([*base, "--text-encoder", "conch"]) == 2  # no cached CONCH embeddings and no weights to make them
    assert "text embed" in capsys.readouterr().err

    cohort = Cohort.load(rcc_cohort)
    model_dir = tmp_path / "My Model"
    model_dir.mkdir()

    def run_id(**fields) -> tuple[str, dict]:
        config = run_config(plan_run(RunRequest(model="modaltune", site="rcc", task="multitask", profile="tiny",
                                                **fields), cohort))
        return config.run_id(), config.model_dump(mode="json")

    default, _ = run_id()
    conch, conch_config = run_id(overrides={"text_encoder": "conch"}, text_spec="conch", text_weights=str(weights))
    hf, hf_config = run_id(overrides={"text_encoder": "hf-My_Model"}, text_spec=f"hf:{model_dir}")
    assert len({default, conch, hf}) == 3
    assert conch_config["resolved_model"]["config"]["text_encoder"] == "conch"
    assert conch_config["options"]["text_weights"].startswith("conch.pt:")
    assert hf_config["resolved_model"]["config"]["text_encoder"] == "hf-My_Model"


def test_grid_applies_evaluation_settings_to_the_rows_that_read_them() -> None:
    from bench.grids import cell_evaluation

    settings = {"text_spec": "conch", "text_weights": "w.pt", "overrides": {"text_encoder": "conch"},
                "run_options": {"probe": "standardized"}}
    assert cell_evaluation("text_distill", settings) == settings
    assert cell_evaluation("linear_probe", settings) == {"run_options": {"probe": "standardized"}}
    assert cell_evaluation("transfer", settings) == {"run_options": {"probe": "standardized"}}
    assert cell_evaluation("supervised", settings) == {}


def test_a_cache_embedded_with_other_weights_is_refused(rcc_copy: Path) -> None:
    from bench.errors import BenchError
    from bench.text_cache import TextSource, cache_path, write_text_cache

    write_text_cache(rcc_copy, "bow", weights_tag="a.pt:0000")
    cache_path(rcc_copy, "bow").rename(cache_path(rcc_copy, "conch"))
    cohort = Cohort.load(rcc_copy)
    assert ensure_text_cache(cohort, "conch", TextSource("conch", "a.pt", "a.pt:0000")).weights == "a.pt:0000"
    with pytest.raises(BenchError, match="was embedded with a.pt:0000, not --text-weights b.pt:1111"):
        ensure_text_cache(cohort, "conch", TextSource("conch", "b.pt", "b.pt:1111"))


# ------------------------------------------------------------------------------------------- learning curve
def test_learning_curve_script_writes_a_row_per_epoch(rcc_cohort: Path, tmp_path: Path, capsys) -> None:
    from bench.perf.distill_curve import main as curve_main

    out = tmp_path / "curve"
    assert curve_main(["--site", "rcc", "--profile", "tiny", "--cohort", str(rcc_cohort), "--epochs", "2",
                       "--out", str(out)]) == 0
    with open(out / "curve.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["epoch"] for r in rows] == ["0", "1", "2"]
    assert {"raw_val_balanced_accuracy", "standardized_test_balanced_accuracy", "raw_test_c_index",
            "diag_centered_cosine", "train_kl"} <= set(rows[0])
    record = json.loads((out / "curve.json").read_text())
    assert record["settings"]["epochs"] == 2 and record["selected_epoch"] in (1, 2)
    assert curve_main(["--model", "abmil", "--site", "rcc", "--profile", "tiny", "--cohort", str(rcc_cohort),
                       "--out", str(tmp_path / "x")]) == 2
    assert "not a text_distill model" in capsys.readouterr().err
