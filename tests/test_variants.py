"""An ablation is a configuration: registered variants build their base with overrides, are listed
with them, and the resolved configuration enters the run id (a changed variant never reuses a result)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.cli import main
from bench.data.cohort import Cohort
from bench.errors import BenchError
from bench.registry import all_models, create_model, get_model
from bench.runner import RunRequest, execute, plan_run, run_config, synthetic_context
from models.registry import register_variant


def _run_id(cohort: Path, model: str, **overrides) -> str:
    plan = plan_run(RunRequest(model=model, site="RCC", profile="tiny", overrides=overrides), Cohort.load(cohort))
    return run_config(plan).run_id()


def test_a_variant_builds_its_base_with_its_overrides() -> None:
    ctx = synthetic_context("tiny", 4, "tiny")
    variant = create_model("modaltune_single_task", ctx)
    assert variant.task_names == ("general",) and variant.text_rows == (0,)
    assert create_model("modaltune", ctx).task_names == ("general", "diagnosis", "survival")
    assert create_model("modaltune", ctx, tasks=("general",)).task_names == ("general",)
    entry = get_model("modaltune_lora")
    assert entry.base == "modaltune" and dict(entry.overrides) == {"adapter": "lora"}
    assert entry.regime == "text_distill" and entry.label == "ModalTune w/ LoRA"


def test_models_lists_every_variant_with_its_overrides(capsys) -> None:
    assert main(["models", "--json", "--profile", "tiny"]) == 0
    listing = {m["name"]: m for m in json.loads(capsys.readouterr().out)["models"]}
    variants = {name for name, entry in all_models().items() if entry.base}
    assert variants and variants <= set(listing)
    assert listing["modaltune_single_modal"]["base"] == "modaltune"
    assert listing["modaltune_single_modal"]["overrides"] == {"gene_tokens": "learned"}
    assert listing["modaltune"]["base"] is None and listing["modaltune"]["overrides"] == {}


def test_changing_an_override_changes_the_run_id(rcc_cohort: Path) -> None:
    base = _run_id(rcc_cohort, "modaltune")
    assert _run_id(rcc_cohort, "modaltune") == base, "an unchanged configuration keeps its id"
    assert _run_id(rcc_cohort, "modaltune", projector="trainable") != base
    assert _run_id(rcc_cohort, "modaltune", projector="trainable") != _run_id(rcc_cohort, "modaltune", projector="none")
    assert _run_id(rcc_cohort, "modaltune_trainable_projector") != _run_id(rcc_cohort, "modaltune_no_projector")


def test_unknown_override_is_refused_by_name(rcc_cohort: Path) -> None:
    with pytest.raises(BenchError, match="warp_drive"):
        _run_id(rcc_cohort, "modaltune", warp_drive=True)
    with pytest.raises(ValueError, match=r"does not take the override\(s\) attn_dim; it takes dropout, hidden_dim"):
        get_model("abmil").build(synthetic_context("tiny", 2, "tiny"), attn_dim=64)
    with pytest.raises(ValueError, match="not registered"):
        register_variant("nonsense_variant", "no_such_base", label="x", overrides={}, description="x")


def test_an_unchanged_variant_hits_the_cache_and_a_changed_one_runs(rcc_cohort: Path, tmp_path: Path) -> None:
    request = dict(model="modaltune_single_task", site="RCC", profile="tiny", store=tmp_path / "s.sqlite",
                   wandb="disabled", runs_dir=tmp_path / "runs")
    cohort = Cohort.load(rcc_cohort)
    first = execute(RunRequest(**request), cohort)
    again = execute(RunRequest(**request), cohort)
    changed = execute(RunRequest(**request, overrides={"projector": "trainable"}), cohort)
    assert (first["status"], again["status"], changed["status"]) == ("ran", "cached", "ran")
    assert again["run_id"] == first["run_id"] != changed["run_id"]
    assert again["metrics"] == first["metrics"]
