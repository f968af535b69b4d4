"""The ablation tables' rows (Tables 7, 8, 11): each new registration builds and reports its parameters,
is scheduled the way its table needs, and the tables follow the paper's row order."""

from __future__ import annotations

import torch

from pathlib import Path

from bench.grids import get_grid, grid_cells
from bench.registry import create_model, get_model, params_paper
from bench.reporting import render_table
from bench.results import ResultRow, ResultStore
from bench.runner import synthetic_context
from models.paper.reference import paper_reference, published_deltas
from reports.tables import BEYOND_HEADING

SITES = ("BRCA", "GBMLGG", "NSCLC", "RCC")


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
    beyond = [get_model(name).beyond_paper for name, _ in grid.rows]
    assert [label for (_, label), b in zip(grid.rows, beyond) if not b] == \
        paper_reference()["table8_ablations_known"]["rows"]
    assert sum(beyond) == 5 and beyond == sorted(beyond), "the rows beyond the paper come last, in a block"
    assert all("[beyond the paper]" in label for (_, label), b in zip(grid.rows, beyond) if b)
    cells = grid_cells(grid, models=["modaltune_no_text", "modaltune"], sites=["RCC"], seeds=[0])
    assert {(c.model, c.task) for c in cells} == {("modaltune_no_text", "subtype"),
                                                   ("modaltune_no_text", "survival"), ("modaltune", "multitask")}


def _row(model: str, site: str, task: str, value: float, seed: int = 0) -> ResultRow:
    metric = "test_balanced_accuracy" if task == "subtype" else "test_c_index"
    return ResultRow(run_id=f"{model}{site}{task}{seed}", task=task, model=model, site=site, seed=seed,
                     profile="tiny", cohort="c", cohort_fingerprint="f", regime="x", metrics={metric: value},
                     config={}, n_train=1, n_val=1, n_test=1, n_excluded=0, seconds=1.0)


def _line(text: str, label: str, after: str) -> str:
    """The Markdown table line of ``label`` after the heading ``after``."""
    tail = text[text.index(after):]
    return next(line for line in tail.splitlines() if line.startswith("|") and line.split("|")[1].strip() == label)


def test_paper_changes_are_read_with_their_reference() -> None:
    deltas = published_deltas("table8")
    assert deltas["ModalTune w/ LoRA"] == ("ModalTune", {"subtype": -0.015, "survival": -0.008})
    assert deltas["Single Modal"] == ("Prov-Gigapath (Tuned)", {"subtype": 0.009, "survival": 0.034})
    assert deltas["ABMIL (cat) w/ text emb."] == ("ABMIL (cat)", {"subtype": -0.016})
    assert "Trainable Projector" not in deltas and published_deltas("table2") == {}


def test_table8_renders_ours_and_the_papers_relative_change(tmp_path: Path) -> None:
    values = {"modaltune": (0.80, 0.70), "modaltune_lora": (0.76, 0.70), "modaltune_trainable_projector": (0.40, 0.63),
              "gigapath_tuned": (0.50, 0.50), "modaltune_single_modal": (0.55, 0.60)}
    rows = [_row(m, site, task, v) for m, pair in values.items() for site in SITES
            for task, v in zip(("subtype", "survival"), pair)]
    rows.append(_row("modaltune_no_projector", "RCC", "subtype", 0.9))  # one site only: no Overall, no change
    store = tmp_path / "s.sqlite"
    with ResultStore(store) as results:
        results.write(rows)
    md = render_table("table8", store=store, profile="tiny")
    after = "### Change vs the reference row"
    assert [c.strip() for c in _line(md, "ModalTune w/ LoRA", after).split("|")[2:5]] == [
        "ModalTune", "-5.0 % / -1.5 %", "+0.0 % / -0.8 %"]
    assert "+10.0 % / +0.9 %" in _line(md, "Single Modal", after)  # vs Prov-Gigapath (Tuned), as the paper
    assert "Prov-Gigapath (Tuned)" in _line(md, "Single Modal", after)
    trainable = _line(md, "Trainable Projector", after)
    assert "-50.0 % / not published" in trainable and "-10.0 % / not published" in trainable
    assert "— / -0.7 %" in _line(md, "No Projector", after)
    abmil_text = _line(md, "ABMIL (cat) w/ text emb.", after)
    assert "ABMIL (cat)" in abmil_text and "— / -1.6 %" in abmil_text and "— / not published" in abmil_text
    assert "0.954 / 0.912 - 1" in md, "the note says the paper's percentages are relative"
    assert "not yet implemented" not in md, "every row of Table 8 is registered"
    assert ("ModalTune w/ MedLlama v3.1 (—): not run: needs a local MedLlama directory "
            "(TsinghuaC3I/Llama-3-8B-UltraMedical) (set MEDLLAMA_DIR=DIR)") in md
    assert "0.800 / 0.954" in _line(md, "ModalTune", "### Cancer subtype")
    subtype = md[md.index("### Cancer subtype"):md.index("### Survival")]
    heading = subtype.index(BEYOND_HEADING)
    assert subtype.index("| ModalTune w/ LoRA") < heading < subtype.index("| ModalTune, centred targets [beyond")
    csv_text = render_table("table8", store=store, profile="tiny", fmt="csv")
    assert "subtype,modaltune_lora,ModalTune w/ LoRA,delta_vs_modaltune,-0.050000,,,-0.015," in csv_text


def test_titan_transfer_rows_are_registered_like_gigapaths_and_report_params() -> None:
    for name, task in (("titan_cat_cls", "subtype"), ("titan_cat_surv", "survival")):
        entry, gigapath = get_model(name), get_model(name.replace("titan", "gigapath"))
        assert (entry.regime, entry.source_task, entry.tasks) == ("transfer", task, ("multitask",))
        assert entry.modalities == gigapath.modalities
        assert params_paper(entry) == params_paper(get_model("titan_cat")), "TITAN (cat), tuned on one BRCA task"


def test_table11_deploys_titan_rows_by_the_table3_rule() -> None:
    grid = get_grid("table11")
    assert [label for _, label in grid.rows] == paper_reference()["table11_titan_ood_known"]["rows"]
    cells = {(c.model, c.site, c.task) for c in grid_cells(grid, seeds=[0])}
    assert cells == {("titan_lp", s, t) for s in ("COADREAD", "BLCA") for t in ("subtype", "survival")} | {
        ("titan_cat", s, t) for s in ("COADREAD", "BLCA") for t in ("subtype", "survival")} | {
        ("titan_cat_cls", "BRCA", "multitask"), ("titan_cat_surv", "BRCA", "multitask"),
        ("modaltune_titan", "BRCA", "multitask")}
    table9 = grid_cells(get_grid("table9"), models=["modaltune_titan"], sites=["BRCA"], seeds=[0])
    assert table9 == grid_cells(grid, models=["modaltune_titan"], seeds=[0]), "one run for Tables 9 and 11"


def test_a_tiny_table11_transfer_cell_runs_and_stores_the_ood_sites(tiny_cohort: Path, tmp_path: Path) -> None:
    from bench.grids import run_grid

    store = tmp_path / "t11.sqlite"
    summary = run_grid(get_grid("table11"), profile="tiny", cohort_dir=tiny_cohort, store=store,
                       models=["titan_cat_surv"], seeds=[0], jobs=1, wandb="disabled", progress=False)
    assert (summary["runs"], summary["ran"], summary["failed"]) == (1, 1, [])
    with ResultStore(store) as results:
        stored = {(r.model, r.site, r.task) for r in results.rows(profile="tiny")}
    assert stored == {("titan_cat_surv", s, t) for s in ("COADREAD", "BLCA") for t in ("subtype", "survival")}
    md = render_table("table11", store=store, profile="tiny")
    assert "| TITAN Surv. (cat)" in md and "Overall" not in md


def test_text_probes_embed_the_general_text_row_as_is_and_projected() -> None:
    ctx = synthetic_context("tiny", 4, "tiny")
    text = torch.nn.functional.normalize(torch.randn(3, 4, ctx.text_dim), dim=-1)
    plain = create_model("text_probe", ctx)
    assert torch.equal(plain.forward_features({"text": text}), text[:, 0]), "the general prompt's embedding"
    torch.manual_seed(0)
    projected = create_model("text_probe_projected", ctx)
    torch.manual_seed(0)
    again, other = create_model("text_probe_projected", ctx), create_model("text_probe_projected", ctx)
    z = projected.forward_features({"text": text})
    assert z.shape == (3, 256) and torch.equal(z, again.forward_features({"text": text})), "seeded by the run"
    assert not torch.allclose(z, other.forward_features({"text": text})), "another seed, another projector"
    assert params_paper(get_model("text_probe")) == {"all": 512 * 4 + 4, "trainable": 0}
    assert params_paper(get_model("text_probe_projected"))["trainable"] == 0


def test_table7_probes_every_seed_and_a_tiny_cell_runs(rcc_cohort: Path, tmp_path: Path) -> None:
    from bench.grids import run_grid

    grid = get_grid("table7")
    cells = grid_cells(grid, models=["text_probe_projected"], sites=["RCC"], seeds=[0, 1])
    assert [(c.task, c.seed) for c in cells] == [("subtype", 0), ("subtype", 1), ("survival", 0), ("survival", 1)]
    assert [c.seed for c in grid_cells(get_grid("table2"), models=["gigapath_lp"], sites=["RCC"])] == [0, 0]
    store = tmp_path / "t7.sqlite"
    summary = run_grid(grid, profile="tiny", cohort_dir=rcc_cohort, store=store, models=["text_probe"], seeds=[0],
                       jobs=1, wandb="disabled", progress=False)
    assert (summary["ran"], summary["failed"]) == (2, [])
    with ResultStore(store) as results:
        metrics = {r.task: r.metrics for r in results.rows(profile="tiny")}
    assert metrics["survival"]["test_c_index"] > 0.75, "the general text states the survival bin and event"
    assert metrics["subtype"]["test_auc"] > 0.9, "the general text states the subtype"
    assert metrics["survival"]["test_bins_balanced_accuracy"] > 0.75, "the general text states the bin (chance 0.25)"
    assert metrics["survival"]["test_nostage_c_index"] > 0.75, "without stage, the text still states bin and event"
    assert (rcc_cohort / "text" / "bow-nostage.pt").is_file()
