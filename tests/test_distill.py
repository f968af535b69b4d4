"""The text_distill regime (ModalTune) and the release defects it must not reproduce."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from bench.cli import main
from bench.config import PROFILES
from bench.data.cohort import Cohort
from bench.data.dataset import prepare_site
from bench.results import ResultStore
from bench.runner import ensure_text_cache
from bench.train.distill import distillation_loss
from bench.train.probe import embed


def _json(capsys, *argv: str) -> tuple[int, dict]:
    code = main(list(argv))
    out = capsys.readouterr().out
    return code, (json.loads(out) if out.strip() else {})


def test_distillation_loss_is_the_release_kl() -> None:
    """10 * KL(softmax(y) || softmax(z)) of L2-normalised vectors, summed over tasks and features."""
    torch.manual_seed(0)
    z, y = torch.randn(1, 3, 8), torch.randn(1, 3, 8)
    zn, yn = torch.nn.functional.normalize(z, dim=-1), torch.nn.functional.normalize(y, dim=-1)
    p, q = torch.softmax(zn, -1), torch.softmax(yn, -1)
    expected = 10 * (q * (q.log() - p.log())).sum()
    assert torch.allclose(distillation_loss(z, y), expected, atol=1e-6)
    assert distillation_loss(y, y).abs() < 1e-6  # identical embeddings: no loss
    two = distillation_loss(torch.cat([z, z]), torch.cat([y, y]))
    assert torch.allclose(two, expected, atol=1e-6), "the loss is a per-patient mean over the batch"


def test_paper_schedule_is_the_papers() -> None:
    """The release's script defaults to 1 epoch; the paper (Table 6) trains 30 with 10 warm-up epochs."""
    d = PROFILES["paper"].distill
    assert (d.epochs, d.warmup_epochs, d.lr, d.weight_decay, d.batch_size) == (30, 10, 1e-4, 5e-4, 1)


def test_modaltune_run_stores_both_tasks_under_one_run_id(capsys, rcc_cohort: Path, tmp_path: Path) -> None:
    store = tmp_path / "mt.sqlite"
    args = ["run", "--model", "modaltune", "--site", "rcc", "--task", "multitask", "--profile", "tiny", "--cohort",
            str(rcc_cohort), "--store", str(store), "--wandb", "disabled", "--json"]
    code, out = _json(capsys, *args)
    assert code == 0 and out["task"] == "multitask"
    assert {"test_balanced_accuracy", "test_c_index", "val_balanced_accuracy", "best_epoch",
            "init_test_balanced_accuracy", "init_test_c_index"} <= set(out["metrics"])
    with ResultStore(store) as s:
        rows = s.get(out["run_id"])
    assert sorted((r.site, r.task) for r in rows) == [("RCC", "subtype"), ("RCC", "survival")]
    assert rows[0].n_excluded == rows[1].n_excluded  # the rare set trains through text; only missing RNA/WSI is excluded
    code, again = _json(capsys, *args)
    assert again["status"] == "cached" and again["metrics"] == out["metrics"]
    code, _ = _json(capsys, "run", "--model", "modaltune", "--site", "coadread", "--profile", "tiny",
                    "--cohort", str(rcc_cohort), "--store", str(store), "--wandb", "disabled", "--json")
    assert code == 2


def test_an_epoch_sees_every_training_patient(rcc_cohort: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The release stops each epoch after 5 iterations; ours trains on every training patient."""
    import bench.train.distill as distill
    from bench.registry import get_model
    from bench.runner import model_context
    from models.text.projector import TextProjector

    cohort = Cohort.load(rcc_cohort)
    text = ensure_text_cache(cohort, "bow")
    data = prepare_site(cohort, "RCC", "multitask", ("wsi", "rna"), "modaltune", 64, text=text)
    seen: list[str] = []
    original = distill.DistillModule.training_step

    def spy(self, batch, batch_idx):
        seen.extend(batch["case_id"])
        return original(self, batch, batch_idx)

    monkeypatch.setattr(distill.DistillModule, "training_step", spy)
    model = get_model("modaltune").build(model_context(cohort, 4, "tiny"))
    settings = PROFILES["tiny"].distill.model_copy(update={"epochs": 1})
    distill.train_distill(model, TextProjector(text.dim, model.embed_dim), {"RCC": data}, settings,
                          run_dir=Path("."), loggers=[])
    assert sorted(seen) == sorted(data.splits["train"].case_ids)


def test_the_untrained_models_probe_draws_nothing_from_training(rcc_cohort: Path) -> None:
    """The init probe embeds the training split, whose bags are sampled: it must restore the generator."""
    from bench.registry import get_model
    from bench.runner import model_context
    from bench.train.distill import initial_test_metrics, probe_sites

    cohort = Cohort.load(rcc_cohort)
    data = prepare_site(cohort, "RCC", "multitask", ("wsi", "rna"), "modaltune", 16, text=ensure_text_cache(cohort, "bow"))
    torch.manual_seed(0)
    model = get_model("modaltune").build(model_context(cohort, 4, "tiny"))
    state = torch.get_rng_state()
    initial = initial_test_metrics(model, {"RCC": data})
    assert torch.equal(torch.get_rng_state(), state)
    torch.set_rng_state(state)
    direct = probe_sites(model, {"RCC": data})["RCC"]
    assert initial["RCC"]["subtype"] == {f"init_{k}": v for k, v in direct["subtype"].metrics.items() if k.startswith("test_")}
    assert set(initial["RCC"]["survival"]) >= {"init_test_c_index"}


def test_evaluation_embeddings_are_deterministic(rcc_cohort: Path) -> None:
    """The release subsamples tiles at random when it evaluates; ours embeds whole bags."""
    from bench.registry import get_model
    from bench.runner import model_context

    cohort = Cohort.load(rcc_cohort)
    data = prepare_site(cohort, "RCC", "multitask", ("wsi", "rna"), "modaltune", 16)
    torch.manual_seed(0)
    model = get_model("modaltune").build(model_context(cohort, 4, "tiny"))
    first = embed(model, data.splits["test"])
    torch.manual_seed(123)
    np.testing.assert_array_equal(first, embed(model, data.splits["test"]))


def test_pancancer_run_trains_once_and_stores_every_site(capsys, tiny_cohort: Path, tmp_path: Path) -> None:
    """One pan-cancer model, probed per in-domain site and deployed to the OOD sites (the release's
    pan-cancer test path raises a TypeError)."""
    store = tmp_path / "pc.sqlite"
    code, runs = _json(capsys, "run", "--model", "modaltune_pancancer", "--site", "brca", "--profile", "tiny",
                       "--cohort", str(tiny_cohort), "--store", str(store), "--wandb", "disabled", "--json")
    assert code == 0 and runs["tasks"] == ["multitask"] and len(runs["runs"]) == 1  # without --task: every run
    out = runs["runs"][0]
    assert out["site"] == runs["site"] == "PANCANCER"
    assert set(out["metrics"]["sites"]) == {"BRCA", "GBMLGG", "NSCLC", "RCC", "COADREAD", "BLCA"}
    with ResultStore(store) as s:
        assert len(s.get(out["run_id"])) == 12
