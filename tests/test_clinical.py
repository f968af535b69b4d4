"""Table 10 (clinical data): the synthetic BRCA clinical columns and their planted signal, the importer's
``--clinical CSV``, the encoded clinical vector, ModalTune w/ Clinical (a registered variant, its
parameter count against the formula) and the Table 10 grid and rendering."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from test_import_modaltune import full_import, read_patients, release  # noqa: F401 (release is a fixture)

from bench.cli import main
from bench.data import synth_patients
from bench.data.clinical import encode_clinical
from bench.data.cohort import Cohort
from bench.data.importers import CohortImportError
from bench.errors import BenchError, CohortError
from bench.grids import TABLE2, get_grid, grid_cells
from bench.registry import get_model, paper_context
from bench.reporting import render_table
from bench.results import ResultRow, ResultStore
from models.base import count_parameters
from models.clinical import CLINICAL_COLUMNS, encoded_width, variables, variables_for
from models.modaltune.clinical import ClinicalTokens, clinical_token_parameters
from models.paper.reference import paper_reference

D, OUT = 768, 256  # Prov-GigaPath / TITAN width, ModalTune output width
PAPER_TRAINABLE = 33_524_890 + 1_028  # the release model + the contract's head (models/modaltune/model.py)


def _offsets() -> dict[str, int]:
    """Start of each variable's block in the encoded vector."""
    out, start = {}, 0
    for v in variables():
        out[v.name] = start
        start += v.width
    return out


# ------------------------------------------------------------------------------------------- variables
def test_variables_per_site_and_the_fixed_width() -> None:
    assert encoded_width() == 2 + 6 + 7 + 6 + 4 + 6 + 4 + 4 + 5 == 44
    assert [v.name for v in variables_for("gbmlgg")] == ["age"]
    assert [v.name for v in variables_for("NSCLC")] == ["age", "stage", "t", "n", "m"]
    assert [v.name for v in variables_for("BRCA")] == ["age", "stage", "t", "n", "m", *CLINICAL_COLUMNS]
    stage, tumour = variables()[1], variables()[2]
    assert stage.category("Stage IIIA") == "Stage III" and tumour.category("T1b") == "T1"
    assert tumour.category("Tis") == "T0" and tumour.category("  ") is None
    with pytest.raises(ValueError, match="t value 'T9' is not one of T0, T1"):
        tumour.category("T9")


# ------------------------------------------------------------------------------------------- synthetic cohort
@pytest.fixture(scope="module")
def small() -> synth_patients.SyntheticPatients:
    return synth_patients.simulate_patients("small", 0)


def test_synthetic_brca_has_the_columns_other_sites_leave_them_empty(small) -> None:
    table = small.table
    assert list(table.columns[-4:]) == list(CLINICAL_COLUMNS)
    brca, others = table[table["site"] == "BRCA"], table[table["site"] != "BRCA"]
    assert (others[list(CLINICAL_COLUMNS)] == "").all().all(), "not applicable outside BRCA"
    for column in CLINICAL_COLUMNS:
        empty = (brca[column] == "").mean()
        assert 0.02 < empty < 0.10, f"{column}: about 5 % not recorded, got {empty:.3f}"
        assert {v.category(x) for v in variables() if v.column == column for x in brca[column]} - {None}


def test_synthetic_planted_signal(small) -> None:
    """Receptor status follows the subtype (lobular carcinomas are nearly all ER+), and treatment the
    survival risk (chemotherapy for the high-risk patients, none for the low-risk ones)."""
    table, latents = small.table, small.latents
    brca = table["site"] == "BRCA"
    er = table.loc[brca, "er_status"].to_numpy()
    group, risk = latents.loc[brca, "group"].to_numpy(), latents.loc[brca, "risk"].to_numpy()
    er_ductal, er_lobular = (er[group == 0] == "positive").mean(), (er[group == 1] == "positive").mean()
    assert er_lobular > er_ductal + 0.15
    treatment = table.loc[brca, "treatment_type"].to_numpy()
    assert risk[treatment == "chemotherapy"].mean() > risk[treatment == "none"].mean() + 1.0
    her2 = table.loc[brca, "her2_status"].to_numpy()
    assert (her2[group == 0] == "positive").mean() > (her2[group == 1] == "positive").mean()


def test_new_columns_come_from_their_own_stream(monkeypatch: pytest.MonkeyPatch) -> None:
    """Another seed of the clinical stream redraws the four columns and nothing else: adding them left
    every other value of the cohort (and so every metric) as it was."""
    before = synth_patients.simulate_patients("tiny", 0).table
    monkeypatch.setattr(synth_patients, "STREAM_CLINICAL", 99)
    after = synth_patients.simulate_patients("tiny", 0).table
    rest = [c for c in before.columns if c not in CLINICAL_COLUMNS]
    pd.testing.assert_frame_equal(before[rest], after[rest])
    assert not before[list(CLINICAL_COLUMNS)].equals(after[list(CLINICAL_COLUMNS)])


# ------------------------------------------------------------------------------------------- encoding
def _rows() -> pd.DataFrame:
    return pd.DataFrame({
        "case_id": ["P1", "P2", "P3", "P4"], "split": ["train", "train", "test", "train"],
        "age": [50.0, 70.0, 100.0, np.nan], "stage": ["Stage IIA", "", "Stage X", "Stage IV"],
        "t": ["T2b", "T1", "", "TX"], "n": ["N0 (i+)", "N1", "N2", ""], "m": ["M0", "M1", "MX", ""],
        "treatment_type": ["chemotherapy", "", "none", "targeted therapy"],
        "er_status": ["positive", "negative", "", "indeterminate"], "pr_status": ["negative"] * 4,
        "her2_status": ["equivocal", "", "positive", "negative"]})


def test_encoding_standardises_on_training_patients_and_marks_missing_values() -> None:
    rows = _rows()
    x = encode_clinical(rows, "BRCA", (rows["split"] == "train").to_numpy(), Path("c"))
    at = _offsets()
    assert x.shape == (4, 44) and x.dtype == np.float32
    # age: train ages 50, 70 (P4 has none) -> mean 60, std 10; the test patient's 100 never enters them
    assert x[:, at["age"]].tolist() == pytest.approx([-1.0, 1.0, 4.0, 0.0])
    assert x[:, at["age"] + 1].tolist() == [0, 0, 0, 1]
    stage = x[:, at["stage"]:at["stage"] + 6]  # Stage I, II, III, IV, X, missing
    assert stage.tolist() == [[0, 1, 0, 0, 0, 0], [0, 0, 0, 0, 0, 1], [0, 0, 0, 0, 1, 0], [0, 0, 0, 1, 0, 0]]
    assert x[0, at["t"] + 2] == 1 and x[0, at["n"]] == 1  # T2b -> T2, N0 (i+) -> N0
    # none, chemotherapy, hormone, targeted, radiation therapy, missing
    treatment = x[:, at["treatment_type"]:at["treatment_type"] + 6]
    assert treatment.argmax(axis=1).tolist() == [1, 5, 0, 3]
    assert x[:, at["her2_status"]:at["her2_status"] + 5].argmax(axis=1).tolist() == [2, 4, 0, 1]
    for v in variables()[1:]:
        assert (x[:, at[v.name]:at[v.name] + v.width].sum(axis=1) == 1).all(), f"{v.name}: one category or missing"


def test_variables_that_do_not_apply_are_zero_not_missing() -> None:
    rows = _rows()
    x = encode_clinical(rows, "GBMLGG", np.array([True, True, False, True]), Path("c"))
    at = _offsets()
    assert (x[:, at["stage"]:] == 0).all(), "staging, treatment and receptors do not apply at GBMLGG"
    assert x[3, at["age"] + 1] == 1
    rcc = encode_clinical(rows.drop(columns=list(CLINICAL_COLUMNS)), "RCC", np.ones(4, bool), Path("c"))
    assert (rcc[:, at["treatment_type"]:] == 0).all() and rcc[:, at["stage"]:at["treatment_type"]].sum() == 4 * 4


def test_encoding_errors_name_the_patient_field_and_fix() -> None:
    rows = _rows()
    train = np.ones(4, bool)
    with pytest.raises(BenchError, match=r"patients.csv has no column her2_status.*--clinical CSV"):
        encode_clinical(rows.drop(columns="her2_status"), "BRCA", train, Path("c"))
    bad = rows.assign(m=["M0", "M7", "", ""])
    with pytest.raises(BenchError, match=r"patient P2: m value 'M7' is not one of M0, M1, MX"):
        encode_clinical(bad, "NSCLC", train, Path("c"))
    with pytest.raises(BenchError, match="no training patient of BRCA has an age"):
        encode_clinical(rows.assign(age=np.nan), "BRCA", train, Path("c"))


def test_cohort_load_refuses_an_unknown_receptor_value(rcc_copy: Path) -> None:
    path = rcc_copy / "patients.csv"
    table = pd.read_csv(path, keep_default_na=False, dtype=str)
    table["her2_status"] = ""
    table.loc[1, "her2_status"] = "weakly positive"
    table.to_csv(path, index=False)
    with pytest.raises(CohortError, match=rf"patient {table.loc[1, 'case_id']}: her2_status 'weakly positive' is not "
                                          "one of positive, negative, equivocal, indeterminate"):
        Cohort.load(rcc_copy)


# ------------------------------------------------------------------------------------------- importer
def _write_clinical(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


def test_import_reads_the_clinical_csv(release, tmp_path: Path) -> None:  # noqa: F811
    csv_path = _write_clinical(tmp_path / "clinical.csv", [
        "case_submitter_id,treatment_type,er_status,her2_status",
        "TCGA-AA-0001-01A-11R,Chemotherapy,Positive,Neg",          # sample barcode -> patient, synonyms
        "TCGA-AA-0002,Targeted Molecular Therapy,[Not Evaluated],Equivocal",
        "tcga-aa-0003,,NA,positive",                                # lower case barcode, missing markers
        "TCGA-AA-0003,,NA,positive",                                # the same again: kept once
        "TCGA-ZZ-0009,none,negative,negative",                      # not in the cohort: dropped
        'TCGA-BB-0001,"Radiation Therapy, NOS",,',                  # RCC: kept, noted
    ])
    report = full_import(release, clinical_csv=csv_path)
    patients = read_patients(release["out"])
    assert list(patients.columns[-3:]) == ["treatment_type", "er_status", "her2_status"]
    assert "pr_status" not in patients.columns, "a column the CSV lacks is not written"
    assert patients.loc["TCGA-AA-0001", ["treatment_type", "er_status", "her2_status"]].tolist() == [
        "chemotherapy", "positive", "negative"]
    assert patients.loc["TCGA-AA-0002", ["treatment_type", "er_status"]].tolist() == ["targeted therapy", ""]
    assert patients.loc["TCGA-AA-0003", ["treatment_type", "er_status", "her2_status"]].tolist() == [
        "", "", "positive"]
    assert patients.loc["TCGA-AA-0005", "treatment_type"] == ""
    assert patients.loc["TCGA-BB-0001", "treatment_type"] == "radiation therapy"
    notes = "\n".join(report.notes)
    for fragment in ("1 barcodes longer than a patient's cut to their first 12 characters "
                     "(e.g. TCGA-AA-0001-01A-11R -> TCGA-AA-0001)",
                     "1 patients listed on several agreeing rows kept once (e.g. TCGA-AA-0003)",
                     "1 patients not in the imported cohort dropped (e.g. TCGA-ZZ-0009)",
                     "BRCA: 2 patients have no row", "1 patients outside BRCA have treatment / receptor values"):
        assert fragment in notes, fragment
    manifest = json.loads((release["out"] / "cohort.json").read_text())
    assert manifest["provenance"]["source_paths"]["clinical"] == str(csv_path.resolve())
    assert Cohort.load(release["out"]).patients.loc[0, "er_status"] == "positive"


@pytest.mark.parametrize(("lines", "message"), [
    (["case_submitter_id,er_status", "TCGA-AA-0001,weak"],
     r"clinical.csv: line 2, patient TCGA-AA-0001: er_status 'weak' is not one of positive, negative, indeterminate"),
    (["case_submitter_id,er_status", "0b5a0b1e-1234-4c2d-9e3f-00aa11bb22cc,positive"],
     r"line 2: .* is not a TCGA patient barcode \(TCGA-XX-XXXX\) \(a GDC uuid"),
    (["case_id,er_status", "TCGA-AA-0001,positive", "TCGA-AA-0001-01A,negative"],
     r"patient TCGA-AA-0001 is on lines 2, 3 with different er_status \('positive', 'negative'\)"),
    (["case_submitter_id,her2", "TCGA-AA-0001,positive"], r"unknown column\(s\) 'her2'.*her2_status"),
    (["barcode,er_status", "TCGA-AA-0001,positive"], r"has neither of the patient columns case_submitter_id / case_id"),
    (["case_submitter_id", "TCGA-AA-0001"], r"no value column"),
])
def test_import_refuses_a_bad_clinical_csv(release, tmp_path: Path, lines, message, capsys) -> None:  # noqa: F811
    csv_path = _write_clinical(tmp_path / "clinical.csv", lines)
    with pytest.raises(CohortImportError, match=message):
        full_import(release, clinical_csv=csv_path)
    assert not release["out"].exists(), "nothing is written"
    code = main(["data", "import", "modaltune", "--splits", str(release["splits"]), "--out", str(release["out"]),
                 "--clinical", str(csv_path)])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and "clinical.csv" in err


# ------------------------------------------------------------------------------------------- the model
def test_clinical_token_parameter_count_follows_the_formula() -> None:
    """The release's clinical MLP: ``C (D/2) + D/2 + (D/2) D + D + 2 D``; TITAN's "cat" fusion widens
    final_norm and final_project to four D-wide parts (image, task, pathway mean, clinical)."""
    mlp = clinical_token_parameters(44, D)
    assert mlp == 44 * 384 + 384 + 384 * 768 + 768 + 2 * 768 == 314_496
    assert count_parameters(ClinicalTokens(44, D)) == mlp
    entry = get_model("modaltune_titan")
    ctx = paper_context(entry)  # on the CPU: its lazy facts (pathway memberships) are real data
    with torch.device("meta"):
        titan = entry.build(ctx, clinical=True)
    groups = titan.parameter_groups()
    assert groups["clinical"] == mlp and groups["final"] == 2 * 4 * D + 4 * D * OUT + OUT
    assert groups["gene_pe"] == (1 + 1 + 64) * D, "task prompt, clinical token, 64 pathway tokens"


def test_models_reports_the_paper_parameter_count(capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    """``bench models``: ModalTune's trainable parameters plus the clinical MLP and one more adapter-token
    position; the frozen Prov-GigaPath unchanged."""
    import bench.registry

    entry = bench.registry.all_models()["modaltune_clinical"]
    monkeypatch.setattr(bench.registry, "all_models", lambda: {"modaltune_clinical": entry})
    assert main(["models", "--json", "--profile", "tiny"]) == 0
    row = json.loads(capsys.readouterr().out)["models"][0]
    assert (row["label"], row["base"], row["overrides"]) == ("ModalTune w/ Clinical", "modaltune", {"clinical": True})
    assert row["modalities"] == ["wsi", "rna", "clinical"] and row["regime"] == "text_distill"
    assert row["trainable_params_paper"] == PAPER_TRAINABLE + clinical_token_parameters(44, D) + D == 33_841_182
    assert row["params_paper"] - row["trainable_params_paper"] == 86_330_880


def _tiny_clinical_model(**overrides):
    from bench.runner import synthetic_context

    torch.manual_seed(0)
    return get_model("modaltune_clinical").build(synthetic_context("tiny", 4, "tiny"), **overrides)


def _batch(ctx_genes: int, clinical: torch.Tensor) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    cells = torch.randperm(64, generator=g)[:10]
    return {"features": torch.randn(2, 10, 32, generator=g), "coords": torch.stack([cells // 8, cells % 8], -1)
            .float().expand(2, -1, -1) * 256, "mask": torch.ones(2, 10, dtype=torch.bool),
            "rna": torch.randn(2, ctx_genes, generator=g), "clinical": clinical}


def test_clinical_token_joins_the_adapter_tokens_and_learns() -> None:
    from bench.runner import synthetic_context

    model = _tiny_clinical_model().train()
    n_genes = synthetic_context("tiny", 4, "tiny").n_genes
    clinical = torch.zeros(2, 44)
    clinical[:, [0, 2]] = torch.tensor([[1.5, 1.0], [-0.5, 1.0]])
    batch = _batch(n_genes, clinical)
    tokens = model.adapter_tokens(batch["rna"], [0, 1, 2], clinical)
    assert tokens.shape[1] == 1 + 1 + model.gene_encoder.n_tokens == model.gene_pe.shape[0]
    out = model.forward_tasks(batch)
    out.square().sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.clinical_tokens.parameters())
    with torch.no_grad():
        other = model.forward_tasks({**batch, "clinical": clinical.flip(0)})
    assert not torch.allclose(out.detach(), other), "the embedding depends on the clinical variables"
    with pytest.raises(ValueError, match=r"encoded clinical vectors \[B, 44\]"):
        model.forward_tasks({**batch, "clinical": torch.zeros(2, 5)})
    with pytest.raises(ValueError, match="reads batch\\['clinical'\\]"):
        model.forward_tasks({k: v for k, v in batch.items() if k != "clinical"})
    with pytest.raises(ValueError, match="clinical token is an adapter token of the Modal Adapter"):
        _tiny_clinical_model(adapter="lora")


def test_clinical_enters_the_run_id_and_leaves_modaltunes_unchanged(rcc_cohort: Path) -> None:
    from bench.runner import RunRequest, plan_run, run_config

    cohort = Cohort.load(rcc_cohort)
    plans = {m: plan_run(RunRequest(model=m, site="rcc", profile="tiny"), cohort)
             for m in ("modaltune", "modaltune_clinical")}
    configs = {m: run_config(p) for m, p in plans.items()}
    assert configs["modaltune"].run_id() != configs["modaltune_clinical"].run_id()
    assert configs["modaltune_clinical"].resolved_model["config"]["clinical"] is True
    assert "clinical" not in configs["modaltune"].resolved_model["config"], "earlier ModalTune run ids still hold"


def test_the_regime_hands_the_model_the_encoded_vector(rcc_cohort: Path) -> None:
    """Through the text_distill regime's data and model: at RCC the model gets age (standardised on the
    training split) and staging, zeros for the BRCA-only variables, and embeds every task."""
    from bench.data.dataset import collate
    from bench.regimes.text_distill import TextDistill, build_for_text
    from bench.runner import RunRequest, plan_run

    plan = plan_run(RunRequest(model="modaltune_clinical", site="rcc", profile="tiny", cohort=rcc_cohort))
    data = TextDistill().prepare(plan)["RCC"]
    at = _offsets()
    train = data.splits["train"].clinical
    assert train.shape[1] == 44 and (train[:, at["treatment_type"]:] == 0).all()
    assert (train[:, at["stage"]:at["treatment_type"]].sum(axis=1) == 4).all(), "stage, T, N, M: one number each"
    known = train[train[:, at["age"] + 1] == 0, at["age"]]
    assert abs(known.mean()) < 1e-5 and known.std() == pytest.approx(1.0, abs=1e-4)
    model = build_for_text(plan, int(data.splits["train"].text.shape[-1])).eval()
    batch = collate([data.splits["test"][i] for i in range(2)])
    assert batch["clinical"].shape == (2, 44)
    with torch.no_grad():
        out = model.forward_tasks(batch)
    assert out.shape == (2, 3, model.embed_dim) and torch.isfinite(out).all()


# ------------------------------------------------------------------------------------------- Table 10
def test_table10_rows_follow_the_paper_and_share_modaltune_with_table2() -> None:
    grid = get_grid("table10")
    assert [label for _, label in grid.rows] == paper_reference()["table10_clinical_known"]["rows"]
    cells = grid_cells(grid)
    shared = [c for c in cells if c.model == "modaltune"]
    assert shared and set(shared) <= set(grid_cells(TABLE2)), "the ModalTune row is Table 2's runs"
    assert {c.model for c in cells} == {"modaltune", "modaltune_clinical"} and len(cells) == 2 * 4 * 3


def _row(model: str, site: str, task: str, value: float, seed: int) -> ResultRow:
    metric = "test_balanced_accuracy" if task == "subtype" else "test_c_index"
    return ResultRow(run_id=f"{model}{site}{seed}", task=task, model=model, site=site, seed=seed, profile="tiny",
                     cohort="c", cohort_fingerprint="f", regime="text_distill", metrics={metric: value}, config={},
                     n_train=1, n_val=1, n_test=1, n_excluded=0, seconds=1.0)


def test_table10_renders_ours_beside_the_published_overall(tmp_path: Path) -> None:
    values = {"modaltune": (0.8, 0.6), "modaltune_clinical": (0.9, 0.7)}
    rows = [_row(m, site, task, v, seed) for m, pair in values.items() for site in ("BRCA", "GBMLGG", "NSCLC", "RCC")
            for task, v in zip(("subtype", "survival"), pair) for seed in (0, 1, 2)]
    store = tmp_path / "s.sqlite"
    with ResultStore(store) as results:
        results.write(rows)
    md = render_table("table10", store=store, profile="tiny")
    lines = {task: [line for line in md[md.index(head):].splitlines() if line.startswith("| ModalTune")][:2]
             for task, head in (("subtype", "### Cancer subtype"), ("survival", "### Survival"))}
    assert lines["subtype"][0].rstrip(" |").endswith("0.800 / 0.954")
    assert lines["subtype"][1].rstrip(" |").endswith("0.900 / n/a"), "the paper gives no subtype figure"
    assert lines["survival"][0].rstrip(" |").endswith("0.600 / 0.750")
    assert lines["survival"][1].rstrip(" |").endswith("0.700 / 0.755")
    assert "| 0.800 ± 0.000 / n/a" in lines["subtype"][0], "per-site cells: not published"
