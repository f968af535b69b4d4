"""The ablation tables' rows (Tables 7, 8, 11): each new registration builds and reports its parameters,
is scheduled the way its table needs, and the tables follow the paper's row order."""

from __future__ import annotations

import torch

from bench.grids import get_grid, grid_cells
from bench.registry import create_model, get_model, params_paper
from bench.runner import synthetic_context
from models.paper.reference import paper_reference


def test_no_text_embedding_is_modaltune_trained_supervised_per_task() -> None:
    entry = get_model("modaltune_no_text")
    assert (entry.base, entry.regime, entry.tasks) == ("modaltune", "supervised", ("subtype", "survival"))
    assert entry.label == "No Text Embedding" and dict(entry.overrides) == {"tasks": ("general",)}
    ctx = synthetic_context("tiny", 4, "tiny")
    torch.manual_seed(0)
    model = create_model("modaltune_no_text", ctx).eval()
    assert model.task_names == ("general",)
    batch = {"features": torch.randn(2, 12, ctx.feature_dim), "coords": torch.rand(2, 12, 2) * 4096,
             "mask": torch.ones(2, 12, dtype=torch.bool), "rna": torch.randn(2, ctx.n_genes)}
    logits = model(batch)
    assert logits.shape == (2, 4), "a supervised head on the general embedding"
    assert torch.allclose(logits, model.head(model.forward_features(batch)))


def test_no_text_embedding_reports_the_single_prompt_parameter_count() -> None:
    counts = params_paper(get_model("modaltune_no_text"))
    assert counts == params_paper(get_model("modaltune_single_task")), "same model, one task prompt"
    assert counts["trainable"] < params_paper(get_model("modaltune"))["trainable"]


def test_table8_rows_follow_the_paper_and_no_text_runs_once_per_task() -> None:
    grid = get_grid("table8")
    assert [label for _, label in grid.rows] == paper_reference()["table8_ablations_known"]["rows"]
    cells = grid_cells(grid, models=["modaltune_no_text", "modaltune"], sites=["RCC"], seeds=[0])
    assert {(c.model, c.task) for c in cells} == {("modaltune_no_text", "subtype"),
                                                   ("modaltune_no_text", "survival"), ("modaltune", "multitask")}
