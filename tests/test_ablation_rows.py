"""Issue 13: Table 8's "ABMIL (cat) w/ text emb." and "ModalTune w/ MedLlama v3.1" rows, and Table 7's
duration-bin and no-stage rows: each built through the real code, counted, and run on the tiny cohort."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from bench.cli import main
from bench.config import PROFILES
from bench.data.cohort import Cohort
from bench.errors import BenchError
from bench.grids import get_grid, grid_cells, run_grid
from bench.registry import create_model, get_model, params_paper
from bench.reporting import render_table
from bench.results import ResultStore
from bench.runner import synthetic_context
from helpers import assert_padding_invariant


# ------------------------------------------------------------------------------------------- ABMIL (cat) w/ text emb.
def test_abmil_cat_text_heads_the_fused_embedding_once_per_task() -> None:
    ctx = synthetic_context("tiny", 4, "tiny")
    torch.manual_seed(0)
    model = create_model("abmil_cat_text", ctx).eval()
    assert model.text_rows == (0, 1, 3) and model.general_index == 0, "general, diagnosis, survival texts"
    rna = torch.randn(2, ctx.n_genes)
    batch = {"features": torch.randn(2, 9, ctx.feature_dim), "rna": rna}
    fused = model.base.forward_features(batch)
    z = model.forward_tasks(batch)
    assert z.shape == (2, 3, 256)
    for t, head in enumerate(model.task_heads):
        torch.testing.assert_close(z[:, t], head(fused))
    torch.testing.assert_close(model.forward_features(batch), z[:, 0])
    assert_padding_invariant(model, ctx.feature_dim, {"rna": rna})
    general_only = create_model("abmil_cat_text", ctx, tasks=("general",))
    assert general_only.text_rows == (0,) and len(general_only.task_heads) == 1
    with pytest.raises(ValueError, match="no setting.*prompt"):
        create_model("abmil_cat_text", ctx, prompt=True)
    with pytest.raises(ValueError, match="projector"):
        create_model("abmil_cat_text", ctx, projector="none")


def test_abmil_cat_text_parameters_are_abmil_cat_plus_one_head_per_task() -> None:
    head = 256 * 256 + 256  # Linear(fusion width 256, ModalTune's output width 256)
    assert params_paper(get_model("abmil_cat_text"))["all"] == params_paper(get_model("abmil_cat"))["all"] + 3 * head
    ctx = synthetic_context("tiny", 4, "tiny")
    tiny = sum(p.numel() for p in create_model("abmil_cat_text", ctx).parameters())
    base = sum(p.numel() for p in create_model("abmil_cat", ctx).parameters())
    assert tiny == base - (32 * 4 + 4) + 3 * (32 * 256 + 256) + (256 * 4 + 4), "tiny fusion width 32"


def test_abmil_cat_text_learns_from_the_text_on_the_planted_signal(rcc_cohort: Path, tmp_path: Path) -> None:
    """Trained by the text_distill regime (Table 8's grid), its general embedding ranks subtypes and
    survival far better than the same model untrained (seed 0: AUC 0.35, C-index 0.48)."""
    import lightning as L

    from bench.runner import ensure_text_cache, model_context
    from bench.data.dataset import prepare_site
    from bench.train.distill import probe_sites

    store = tmp_path / "abmil_text.sqlite"
    summary = run_grid(get_grid("table8"), profile="tiny", cohort_dir=rcc_cohort, store=store,
                       models=["abmil_cat_text"], seeds=[0], jobs=1, wandb="disabled", progress=False)
    assert (summary["ran"], summary["failed"]) == (1, [])
    with ResultStore(store) as results:
        trained = {r.task: r.metrics for r in results.rows(profile="tiny")}
    cohort = Cohort.load(rcc_cohort)
    data = prepare_site(cohort, "RCC", "multitask", ("wsi", "rna"), "abmil_cat_text", 64,
                        text=ensure_text_cache(cohort, "bow"))
    L.seed_everything(0, workers=True, verbose=False)
    probed = probe_sites(create_model("abmil_cat_text", model_context(cohort, 4, "tiny")), {"RCC": data})["RCC"]
    untrained = {task: result.metrics for task, result in probed.items()}
    assert trained["subtype"]["test_auc"] > max(0.7, untrained["subtype"]["test_auc"] + 0.2)
    assert trained["survival"]["test_c_index"] > max(0.65, untrained["survival"]["test_c_index"] + 0.1)
    assert trained["subtype"]["val_balanced_accuracy"] > trained["subtype"]["init_val_balanced_accuracy"]


# ------------------------------------------------------------------------------------------- MedLlama
def tiny_llama(folder: Path, padding_side: str = "right") -> Path:
    """A random 2-layer LlamaForCausalLM (hidden 32) and a word-level tokenizer trained on prompt words,
    saved as a local Hugging Face directory (nothing downloaded)."""
    transformers = pytest.importorskip("transformers")
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    words = ("Cancer location: kidney; breast; lung; brain; Cancer diagnosis: clear cell papillary chromophobe "
             "renal carcinoma; Overall stage: stage one two three four; Tumor stage status: tumor Lymph node "
             "status: node cancer has not spread to lymph nodes; Distant metastasis status: no metastasis "
             "detected; Survival status: The patient died was censored before between and months 0 1 2 3 4 5 6 7 8 9")
    tokenizer = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.train_from_iterator([words], trainers.WordLevelTrainer(special_tokens=["[UNK]", "<s>", "</s>"]))
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="[UNK]", bos_token="<s>",
                                                eos_token="</s>", padding_side=padding_side)
    config = transformers.LlamaConfig(vocab_size=tokenizer.get_vocab_size(), hidden_size=32, intermediate_size=64,
                                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                      max_position_embeddings=256, bos_token_id=1, eos_token_id=2)
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(config).save_pretrained(folder)
    fast.save_pretrained(folder)
    return folder


def test_a_causal_lm_embeds_a_text_alone_as_in_a_batch(tmp_path: Path) -> None:
    """Mean pooling of the base model's last hidden state over the real tokens, right-padded even for a
    tokenizer that pads on the left (left padding would move a causal model's positions)."""
    transformers = pytest.importorskip("transformers")
    from models.text.factory import build_text_encoder

    folder = tiny_llama(tmp_path / "tiny-llama", padding_side="left")
    texts = ["Cancer location: kidney;", "Cancer location: kidney; Survival status: The patient died before 8 months"]
    encoder = build_text_encoder(f"hf:{folder}")
    assert (encoder.name, encoder.dim) == ("hf-tiny-llama", 32)
    batched = encoder.encode(texts)
    alone = torch.cat([encoder.encode([t]) for t in texts])
    torch.testing.assert_close(batched, alone, rtol=1e-5, atol=1e-5)
    model = transformers.LlamaModel.from_pretrained(folder).eval()
    ids = transformers.AutoTokenizer.from_pretrained(folder)(texts[1], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        expected = F.normalize(model(input_ids=ids).last_hidden_state.mean(dim=1), dim=-1)
    torch.testing.assert_close(batched[1:], expected, rtol=1e-5, atol=1e-5)


def test_medllama_row_is_not_run_without_a_local_directory(capsys, rcc_cohort: Path, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MEDLLAMA_DIR", raising=False)
    grid = get_grid("table8")
    assert grid.skipped() == {"modaltune_medllama": "not run: needs a local MedLlama directory "
                                                    "(TsinghuaC3I/Llama-3-8B-UltraMedical) (set MEDLLAMA_DIR=DIR)"}
    assert "modaltune_medllama" not in {c.model for c in grid_cells(grid, sites=["RCC"], seeds=[0])}
    assert main(["run", "--model", "modaltune_medllama", "--site", "rcc", "--profile", "tiny", "--cohort",
                 str(rcc_cohort), "--wandb", "disabled"]) == 2
    assert "needs a local MedLlama directory" in capsys.readouterr().err
    store = tmp_path / "none.sqlite"
    summary = run_grid(grid, profile="tiny", cohort_dir=rcc_cohort, store=store, models=["modaltune_medllama"],
                       seeds=[0], jobs=1, wandb="disabled", progress=False)
    assert (summary["runs"], summary["skipped"][0]["model"]) == (0, "modaltune_medllama")
    (tmp_path / "a-file").write_text("")
    monkeypatch.setenv("MEDLLAMA_DIR", str(tmp_path / "a-file"))
    with pytest.raises(BenchError, match="MEDLLAMA_DIR=.*a-file is not a local model directory"):
        grid.skipped()


def test_medllama_row_distils_a_tiny_llama_directory(rcc_copy: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """The grid's MedLlama row embeds the cohort's prompts with the local causal LM (hf:DIR, built on first
    use) and distils them; its run id names that text encoder, so it never reuses ModalTune's result."""
    folder = tiny_llama(tmp_path / "tiny-llama")
    monkeypatch.setenv("MEDLLAMA_DIR", str(folder))
    tiny = PROFILES["tiny"]
    one_epoch = tiny.model_copy(update={"distill": tiny.distill.model_copy(update={"epochs": 1})})
    monkeypatch.setitem(PROFILES, "tiny", one_epoch)
    store = tmp_path / "medllama.sqlite"
    summary = run_grid(get_grid("table8"), profile="tiny", cohort_dir=rcc_copy, store=store,
                       models=["modaltune_medllama"], seeds=[0], jobs=1, wandb="disabled", progress=False,
                       evaluation={"text_spec": "conch", "text_weights": "w.pt",
                                   "overrides": {"text_encoder": "conch"}})
    assert (summary["ran"], summary["failed"], summary["skipped"]) == (1, [], [])
    with ResultStore(store) as results:
        rows = results.rows(profile="tiny")
    assert {r.task for r in rows} == {"subtype", "survival"}
    assert rows[0].config["resolved_model"]["config"]["text_encoder"] == "hf-tiny-llama", "the grid's CONCH is not its"
    from bench.text_cache import load_text_cache

    cache = load_text_cache(rcc_copy, "hf-tiny-llama")
    assert cache.dim == 32 and "tiny-llama" in cache.label
    md = render_table("table8", store=store, profile="tiny")
    assert "ModalTune text targets embedded by: hf-tiny-llama" in md and "needs a local MedLlama" not in md


def test_new_rows_report_their_parameter_counts() -> None:
    assert params_paper(get_model("modaltune_medllama")) == params_paper(get_model("modaltune")), \
        "the same model: only the text it distils differs (a frozen projector from 4,096-d text)"


# ------------------------------------------------------------------------------------------- Table 7
def test_prompts_without_stage_blank_the_staging_sentences_as_for_an_unknown_stage(rcc_copy: Path) -> None:
    from bench.text_cache import cohort_prompts, load_text_cache, without_stage_name, write_text_cache

    cohort = Cohort.load(rcc_copy)
    staged, unstaged = cohort_prompts(cohort), cohort_prompts(cohort, with_staging=False)
    row = next(r for r in cohort.patients.to_dict("records") if str(r["stage"]).startswith("Stage"))
    case = row["case_id"]
    assert "Overall stage" in staged[case]["general"] and "stage" not in unstaged[case]["general"].lower()
    blank = {**row, "stage": "", "t": "", "n": "", "m": ""}
    from models.text.prompts import build_prompts

    assert unstaged[case] == build_prompts(blank, cohort.site_meta(row["site"])), "the release's unknown-stage text"
    assert unstaged[case]["diagnosis"] == staged[case]["diagnosis"]
    write_text_cache(cohort, "bow")
    write_text_cache(cohort, "bow", with_staging=False)
    full, nostage = load_text_cache(cohort, "bow"), load_text_cache(cohort, without_stage_name("bow"))
    assert torch.equal(full.embeddings[case][1], nostage.embeddings[case][1]), "one fit: the diagnosis text agrees"
    assert not torch.allclose(full.embeddings[case][0], nostage.embeddings[case][0])


def test_table7_renders_the_papers_four_task_rows_in_order(tmp_path: Path) -> None:
    from bench.results import ResultRow

    def row(model: str, task: str, metrics: dict[str, float]) -> ResultRow:
        return ResultRow(run_id=f"{model}{task}", task=task, model=model, site="RCC", seed=0, profile="tiny",
                         cohort="c", cohort_fingerprint="f", regime="linear_probe", metrics=metrics, config={},
                         n_train=1, n_val=1, n_test=1, n_excluded=0, seconds=1.0)

    store = tmp_path / "t7.sqlite"
    with ResultStore(store) as results:
        results.write([row("text_probe", "subtype", {"test_balanced_accuracy": 0.91}),
                       row("text_probe", "survival", {"test_c_index": 0.81, "test_bins_balanced_accuracy": 0.71,
                                                      "test_nostage_c_index": 0.61})])
    md = render_table("table7", store=store, profile="tiny")
    headings = [line for line in md.splitlines() if line.startswith("### ")]
    assert headings == ["### Cancer subtype prediction (balanced accuracy)", "### Duration bins (balanced accuracy)",
                        "### Survival prediction w/o stage (C-index)", "### Survival prediction (C-index)"]
    sections = md.split("### ")[1:]
    for section, value in zip(sections, ("0.910", "0.710", "0.610", "0.810")):
        assert f"| {value} / n/a" in next(line for line in section.splitlines() if line.startswith("| Text Embedding "))
