"""Every bad input of issue 3 section 5: a specific message (file / patient / field and what to do),
a non-zero exit, and no row in the results store."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest

from bench.cli import main


def _first_slide(cohort: Path) -> tuple[str, str]:
    patients = pd.read_csv(cohort / "patients.csv", dtype=str, keep_default_na=False)
    row = patients.iloc[0]
    return row["case_id"], row["slide_ids"].split(";")[0]


def _rewrite_h5(path: Path, features: np.ndarray, coords: np.ndarray | None = None) -> None:
    path.unlink()
    with h5py.File(path, "w") as f:
        f["features"] = features
        f["coords"] = coords if coords is not None else np.zeros((len(features), 2), dtype=np.int64)


def _edit_patients(cohort: Path, edit: Callable[[pd.DataFrame], pd.DataFrame]) -> None:
    df = pd.read_csv(cohort / "patients.csv", dtype=str, keep_default_na=False)
    edit(df).to_csv(cohort / "patients.csv", index=False)


def _dim(cohort: Path) -> int:
    import json

    return json.loads((cohort / "cohort.json").read_text())["feature_dim"]


def break_missing_feature(c: Path) -> list[str]:
    case, slide = _first_slide(c)
    (c / "features" / f"{slide}.h5").unlink()
    return [case, slide, "missing"]


def break_unreadable_feature(c: Path) -> list[str]:
    case, slide = _first_slide(c)
    (c / "features" / f"{slide}.h5").write_bytes(b"this is not HDF5")
    return [case, f"{slide}.h5", "unreadable"]


def break_nan_features(c: Path) -> list[str]:
    case, slide = _first_slide(c)
    feats = np.ones((5, _dim(c)), dtype=np.float32)
    feats[2, 3] = np.nan
    _rewrite_h5(c / "features" / f"{slide}.h5", feats)
    return [case, f"{slide}.h5", "NaN/Inf"]


def break_feature_dim(c: Path) -> list[str]:
    case, slide = _first_slide(c)
    _rewrite_h5(c / "features" / f"{slide}.h5", np.ones((5, _dim(c) + 3), dtype=np.float32))
    return [case, f"{slide}.h5", f"feature dimension {_dim(c) + 3}", f"cohort's is {_dim(c)}"]


def break_empty_bag(c: Path) -> list[str]:
    case, slide = _first_slide(c)
    _rewrite_h5(c / "features" / f"{slide}.h5", np.zeros((0, _dim(c)), dtype=np.float32))
    return [case, "empty bag"]


def break_duplicate_case(c: Path) -> list[str]:
    case, _ = _first_slide(c)
    _edit_patients(c, lambda df: pd.concat([df, df.iloc[[0]]]))
    return [case, "duplicate case_id", "patients.csv"]


def break_two_splits(c: Path) -> list[str]:
    case, _ = _first_slide(c)

    def edit(df: pd.DataFrame) -> pd.DataFrame:
        extra = df.iloc[[0]].copy()
        extra["split"] = "test" if df.iloc[0]["split"] != "test" else "train"
        return pd.concat([df, extra])

    _edit_patients(c, edit)
    return [case, "two splits"]


def break_missing_time(c: Path) -> list[str]:
    case, _ = _first_slide(c)
    _edit_patients(c, lambda df: df.assign(survival_months=[""] + list(df["survival_months"][1:])))
    return [case, "survival_months is missing"]


def break_missing_event(c: Path) -> list[str]:
    case, _ = _first_slide(c)
    _edit_patients(c, lambda df: df.assign(event=[""] + list(df["event"][1:])))
    return [case, "event is missing"]


def break_event_code(c: Path) -> list[str]:
    case, _ = _first_slide(c)
    _edit_patients(c, lambda df: df.assign(event=["2"] + list(df["event"][1:])))
    return [case, "event 2 is outside {0, 1}"]


def break_label(c: Path) -> list[str]:
    case, _ = _first_slide(c)
    _edit_patients(c, lambda df: df.assign(label=["7"] + list(df["label"][1:])))
    return [case, "label 7 is outside site RCC's classes"]


def break_rna_non_numeric(c: Path) -> list[str]:
    rna = pd.read_parquet(c / "rna.parquet")
    gene = rna.columns[5]
    case = rna.iloc[3]["case_id"]
    rna[gene] = rna[gene].astype(str)
    rna.loc[3, gene] = "high"
    rna.to_parquet(c / "rna.parquet", index=False)
    return ["rna.parquet", "non-numeric", case, gene]


def break_rna_genes(c: Path) -> list[str]:
    rna = pd.read_parquet(c / "rna.parquet")
    gene = rna.columns[-1]
    rna.drop(columns=[gene]).to_parquet(c / "rna.parquet", index=False)
    return ["rna.parquet", "gene list does not match", gene]


WSI_BREAKS = [break_missing_feature, break_unreadable_feature, break_nan_features, break_feature_dim, break_empty_bag]
TABLE_BREAKS = [break_duplicate_case, break_two_splits, break_missing_time, break_missing_event, break_event_code,
                break_label]
RNA_BREAKS = [break_rna_non_numeric, break_rna_genes]


def _run(capsys, cohort: Path, store: Path, model: str, site: str = "rcc") -> tuple[int, str]:
    code = main(["run", "--model", model, "--site", site, "--task", "subtype", "--profile", "tiny", "--cohort",
                 str(cohort), "--store", str(store), "--wandb", "disabled", "--json"])
    captured = capsys.readouterr()
    assert captured.out == "", "nothing may be printed on stdout for a failed --json run"
    return code, captured.err


def _rows(store: Path) -> int:
    if not store.exists():
        return 0
    with sqlite3.connect(store) as conn:
        return conn.execute("SELECT COUNT(*) FROM results").fetchone()[0]


@pytest.mark.parametrize("breaker", WSI_BREAKS + TABLE_BREAKS + RNA_BREAKS, ids=lambda f: f.__name__[6:])
def test_bad_input_is_named_and_nothing_is_stored(breaker, capsys, rcc_copy: Path, tmp_path: Path) -> None:
    needles = breaker(rcc_copy)
    store = tmp_path / "store.sqlite"
    model = "snn" if breaker in RNA_BREAKS else "abmil"
    code, err = _run(capsys, rcc_copy, store, model)
    assert code == 2, err
    for needle in needles:
        assert needle in err, f"{needle!r} not in error message:\n{err}"
    assert _rows(store) == 0


def test_unknown_site_and_model_list_valid_names(capsys, rcc_cohort: Path, tmp_path: Path) -> None:
    code, err = _run(capsys, rcc_cohort, tmp_path / "s.sqlite", "abmil", site="lung")
    assert code == 2 and "unknown site 'lung'" in err and "rcc" in err
    code, err = _run(capsys, rcc_cohort, tmp_path / "s.sqlite", "resnet")
    assert code == 2 and "unknown model 'resnet'" in err and "abmil" in err and "snn" in err


def test_directory_that_is_not_a_cohort(capsys, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    code, err = _run(capsys, empty, tmp_path / "s.sqlite", "abmil")
    assert code == 2 and "is not a cohort" in err and "cohort.json" in err


def test_validate_lists_every_problem_and_exits_1(capsys, rcc_copy: Path) -> None:
    missing = break_missing_feature(rcc_copy)
    _, other_slide = pd.read_csv(rcc_copy / "patients.csv", dtype=str).iloc[1][["case_id", "slide_ids"]]
    _rewrite_h5(rcc_copy / "features" / f"{other_slide.split(';')[0]}.h5", np.full((4, _dim(rcc_copy)), np.inf,
                                                                                      dtype=np.float32))
    code = main(["data", "validate", str(rcc_copy)])
    err = capsys.readouterr().err
    assert code == 1
    assert missing[1] in err and "NaN/Inf" in err and "3 problems" in err
    assert "does not match the cohort's content" in err  # the edits also changed the content fingerprint


def test_valid_cohort_validates(capsys, rcc_cohort: Path) -> None:
    assert main(["data", "validate", str(rcc_cohort)]) == 0


def test_cohort_without_features_serves_rna_models_and_refuses_wsi_models(capsys, rcc_copy: Path,
                                                                          tmp_path: Path) -> None:
    import json
    import shutil

    shutil.rmtree(rcc_copy / "features")
    manifest = json.loads((rcc_copy / "cohort.json").read_text())
    manifest["feature_dim"] = None
    (rcc_copy / "cohort.json").write_text(json.dumps(manifest))
    _edit_patients(rcc_copy, lambda df: df.assign(has_wsi="0", slide_ids=""))
    store = tmp_path / "s.sqlite"
    assert main(["run", "--model", "snn", "--site", "rcc", "--task", "subtype", "--profile", "tiny", "--cohort",
                 str(rcc_copy), "--store", str(store), "--wandb", "disabled", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["status"] == "ran"
    code, err = _run(capsys, rcc_copy, store, "abmil")
    assert code == 2 and "reads WSI patch features" in err and "--features-root" in err
    assert _rows(store) == 1


def test_text_prompts_command(capsys, rcc_cohort: Path) -> None:
    import json

    case = pd.read_csv(rcc_cohort / "patients.csv", dtype=str).iloc[0]["case_id"]
    assert main(["text", "prompts", "--cohort", str(rcc_cohort), "--case", case, "--json"]) == 0
    prompts = json.loads(capsys.readouterr().out)
    assert set(prompts) == {"general", "diagnosis", "stage", "survival"}
    assert prompts["diagnosis"].startswith("Cancer location: kidney;")
    assert main(["text", "prompts", "--cohort", str(rcc_cohort), "--case", "TCGA-XX-9999", "--json"]) == 2
    assert "TCGA-XX-9999" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- every CLI option
# Each option that takes a path or a number, given a missing file, a directory where a file is expected
# (or the reverse), a garbage file, or a number out of range: `error: ...` naming the value on stderr,
# exit 2, no traceback, and nothing heavy run first (each case takes well under a second).
_RUN = ["run", "--model", "abmil", "--site", "rcc", "--profile", "tiny", "--wandb", "disabled"]
_RUN_GP = ["run", "--model", "gigapath_tuned", "--site", "rcc", "--profile", "tiny", "--wandb", "disabled"]
_EMBED = ["embed", "--model", "gigapath", "--profile", "tiny"]
_IMPORT = ["data", "import", "modaltune", "--splits", "{splits}", "--out", "{new}"]
_CONCH = ["text", "embed", "--cohort", "{cohort}", "--encoder", "conch"]

BAD_OPTIONS = {
    # numbers
    "run-seed-negative": (_RUN + ["--seed", "-3"], ["-3"]),
    "synth-seed-negative": (["data", "synth", "--out", "{new}", "--seed", "-1"], ["-1"]),
    "embed-seed-negative": (_EMBED + ["--seed", "-2"], ["-2"]),
    "text-embed-seed-negative": (["text", "embed", "--cohort", "{cohort}", "--seed", "-4"], ["-4"]),
    "grid-seeds-negative": (["grid", "table2", "--seeds", "0,-1"], ["-1"]),
    "grid-seeds-empty": (["grid", "table2", "--seeds", ","], ["','"]),
    "grid-jobs-zero": (["grid", "table2", "--jobs", "0"], ["--jobs", "got 0"]),
    "grid-jobs-negative": (["grid", "table2", "--jobs", "-2"], ["--jobs", "-2"]),
    "drift-tolerance-negative": (["drift", "check", "--tolerance", "-0.5"], ["-0.5"]),
    "drift-tolerance-nan": (["drift", "check", "--tolerance", "nan"], ["--tolerance", "nan"]),
    "perf-steps-zero": (["perf", "harness", "--steps", "0"], ["--steps", "got 0"]),
    "perf-patches-negative": (["perf", "harness", "--patches", "-8"], ["--patches", "-8"]),
    "perf-dim-zero": (["perf", "models", "--dim", "0"], ["--dim", "got 0"]),
    "perf-layers-zero": (["perf", "gigapath", "--layers", "0"], ["--layers", "got 0"]),
    "perf-tokens-zero": (["perf", "titan", "--tokens", "1024,0"], ["1024,0"]),
    "perf-tokens-text": (["perf", "gigapath", "--tokens", "many"], ["many"]),
    # run
    "run-cohort-missing": (_RUN + ["--cohort", "{missing}"], ["{missing}"]),
    "run-cohort-file": (_RUN + ["--cohort", "{garbage}"], ["{garbage}"]),
    "run-store-dir": (_RUN + ["--store", "{dir}"], ["{dir}", "directory"]),
    "run-store-garbage": (_RUN + ["--store", "{garbage}"], ["{garbage}", "not a results store"]),
    "run-store-foreign-db": (_RUN + ["--store", "{foreign_db}"], ["{foreign_db}", "no 'results' table"]),
    "run-store-newer-schema": (_RUN + ["--store", "{newer_store}"], ["{newer_store}", "newer modaltune-bench",
                                                                     "schema 99 > 2", "upgrade"]),
    "run-store-under-a-file": (_RUN + ["--store", "{garbage}/results.sqlite"], ["{garbage}", "cannot be created"]),
    "run-weights-missing": (_RUN_GP + ["--weights", "{missing}"], ["{missing}"]),
    "run-weights-dir": (_RUN_GP + ["--weights", "{dir}"], ["{dir}"]),
    "run-weights-garbage": (_RUN_GP + ["--weights", "{garbage}"], ["{garbage}", "not a readable checkpoint"]),
    "run-weights-not-a-state-dict": (_RUN_GP + ["--weights", "{tensor_pt}"], ["{tensor_pt}", "Tensor"]),
    # embed, grid, models
    "embed-cohort-missing": (_EMBED + ["--cohort", "{missing}"], ["{missing}"]),
    "embed-weights-missing": (_EMBED + ["--weights", "{missing}"], ["{missing}"]),
    "embed-weights-dir": (_EMBED + ["--weights", "{dir}"], ["{dir}"]),
    "embed-weights-garbage": (_EMBED + ["--weights", "{garbage}"], ["{garbage}", "not a readable checkpoint"]),
    "grid-cohort-missing": (["grid", "table2", "--profile", "tiny", "--cohort", "{missing}"], ["{missing}"]),
    "grid-store-garbage": (["grid", "table2", "--profile", "tiny", "--store", "{garbage}"], ["{garbage}"]),
    "models-cohort-missing": (["models", "--cohort", "{missing}"], ["{missing}"]),
    # table
    "table-store-missing": (["table", "table2", "--store", "{missing}"], ["{missing}", "does not exist"]),
    "table-store-dir": (["table", "table2", "--store", "{dir}"], ["{dir}", "directory"]),
    "table-store-garbage": (["table", "table2", "--store", "{garbage}"], ["{garbage}", "not a results store"]),
    "table-store-foreign-db": (["table", "table2", "--store", "{foreign_db}"], ["{foreign_db}", "no 'results' table"]),
    "table-store-newer-schema": (["table", "table2", "--store", "{newer_store}"], ["{newer_store}", "schema 99 > 2"]),
    "table-out-dir": (["table", "table2", "--store", "{store}", "--out", "{dir}"], ["{dir}", "directory"]),
    "table-out-under-a-file": (["table", "table2", "--store", "{store}", "--out", "{garbage}/t.md"], ["{garbage}"]),
    # data
    "stats-cohort-missing": (["data", "stats", "{missing}"], ["{missing}"]),
    "validate-cohort-file": (["data", "validate", "{garbage}"], ["{garbage}"]),
    "synth-out-file": (["data", "synth", "--out", "{garbage}"], ["{garbage}", "expected a directory"]),
    "synth-out-foreign-dir": (["data", "synth", "--out", "{foreign_dir}"], ["{foreign_dir}", "not a cohort"]),
    "synth-out-under-a-file": (["data", "synth", "--out", "{garbage}/c"], ["{garbage}"]),
    "import-splits-missing": (["data", "import", "modaltune", "--splits", "{missing}", "--out", "{new}"], ["{missing}"]),
    "import-splits-file": (["data", "import", "modaltune", "--splits", "{garbage}", "--out", "{new}"], ["{garbage}"]),
    "import-out-file": (["data", "import", "modaltune", "--splits", "{splits}", "--out", "{garbage}"], ["{garbage}"]),
    "import-out-foreign-dir": (["data", "import", "modaltune", "--splits", "{splits}", "--out", "{foreign_dir}"],
                               ["{foreign_dir}"]),
    "import-features-root-missing": (_IMPORT + ["--features-root", "{missing}"], ["{missing}"]),
    "import-features-root-file": (_IMPORT + ["--features-root", "{garbage}"], ["{garbage}"]),
    "import-rna-missing": (_IMPORT + ["--rna", "{missing}"], ["{missing}"]),
    "import-rna-dir": (_IMPORT + ["--rna", "{dir}"], ["{dir}"]),
    "import-rna-garbage": (_IMPORT + ["--rna", "{garbage}"], ["{garbage}", "--rna", "not a readable CSV"]),
    "import-rna-empty": (_IMPORT + ["--rna", "{empty}"], ["{empty}"]),
    "import-pathways-missing": (_IMPORT + ["--pathways", "{missing}"], ["{missing}"]),
    "import-pathways-dir": (_IMPORT + ["--pathways", "{dir}"], ["{dir}"]),
    "import-pathways-garbage": (_IMPORT + ["--pathways", "{garbage}"], ["{garbage}", "--pathways"]),
    "import-pathways-empty": (_IMPORT + ["--pathways", "{empty}"], ["{empty}"]),
    "import-families-missing": (_IMPORT + ["--families", "{missing}"], ["{missing}"]),
    "import-families-dir": (_IMPORT + ["--families", "{dir}"], ["{dir}"]),
    "import-families-garbage": (_IMPORT + ["--families", "{garbage}"], ["{garbage}", "--families"]),
    # text
    "prompts-cohort-missing": (["text", "prompts", "--cohort", "{missing}", "--case", "TCGA-XX-0001"], ["{missing}"]),
    "text-embed-cohort-missing": (["text", "embed", "--cohort", "{missing}"], ["{missing}"]),
    "text-weights-missing": (_CONCH + ["--text-weights", "{missing}"], ["{missing}"]),
    "text-weights-dir": (_CONCH + ["--text-weights", "{dir}"], ["{dir}"]),
    "text-weights-garbage": (_CONCH + ["--text-weights", "{garbage}"], ["{garbage}", "CONCH"]),
    "text-tokenizer-missing": (_CONCH + ["--text-weights", "{conch}", "--text-tokenizer", "{missing}"], ["{missing}"]),
    "text-tokenizer-dir": (_CONCH + ["--text-weights", "{conch}", "--text-tokenizer", "{dir}"], ["{dir}"]),
    "text-tokenizer-garbage": (_CONCH + ["--text-weights", "{conch}", "--text-tokenizer", "{garbage}"],
                               ["{garbage}", "tokenizer"]),
    "text-weights-without-conch": (["text", "embed", "--cohort", "{cohort}", "--text-weights", "{conch}"],
                                   ["'bow'", "--encoder conch"]),
    # drift
    "drift-expected-missing": (["drift", "check", "--expected", "{missing}"], ["{missing}"]),
    "drift-expected-dir": (["drift", "check", "--expected", "{dir}"], ["{dir}"]),
    "drift-expected-garbage": (["drift", "check", "--expected", "{garbage}"], ["{garbage}", "not a drift record"]),
    "drift-expected-not-a-record": (["drift", "check", "--expected", "{json_list}"], ["{json_list}", "'metrics'"]),
    "drift-record-expected-dir": (["drift", "record", "--expected", "{dir}"], ["{dir}", "directory"]),
    "drift-record-expected-under-a-file": (["drift", "record", "--expected", "{garbage}/e.json"], ["{garbage}"]),
    "drift-cohort-missing": (["drift", "check", "--expected", "{drift_record}", "--cohort", "{missing}"], ["{missing}"]),
}


@pytest.fixture(scope="module")
def bad_inputs(tmp_path_factory: pytest.TempPathFactory, rcc_cohort: Path) -> dict[str, str]:
    """Every kind of wrong file the catalogue passes, plus the valid inputs its commands need to get that far."""
    import json

    import torch
    from test_import_modaltune import RCC, slide_records, write_split
    from test_text_encoders import random_tower, save_conch_checkpoint

    from bench.results import ResultStore

    root = tmp_path_factory.mktemp("bad-inputs")
    (root / "garbage.bin").write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe\x00 not what the option expects " * 8)
    (root / "empty.csv").write_bytes(b"")
    (root / "a-directory").mkdir()
    (root / "foreign-dir").mkdir()
    (root / "foreign-dir" / "notes.txt").write_text("someone else's files")
    with sqlite3.connect(root / "foreign.sqlite") as conn:
        conn.execute("CREATE TABLE other (x INTEGER)")
    conn.close()
    ResultStore(root / "store.sqlite").close()
    ResultStore(root / "newer.sqlite").close()
    with sqlite3.connect(root / "newer.sqlite") as conn:
        conn.execute("PRAGMA user_version = 99")
    conn.close()
    torch.save(torch.zeros(3), root / "tensor.pt")
    (root / "list.json").write_text("[1, 2]")
    (root / "drift.json").write_text(json.dumps({"metrics": {}, "tolerance": 0.001}))
    for split, records in slide_records(RCC, "TCGA-KIRC").items():
        write_split(root / "splits" / "tcga_rcc" / f"{split}_rcc_cls_feat.json", records)
    conch = save_conch_checkpoint(root / "conch", random_tower())
    return {"garbage": str(root / "garbage.bin"), "empty": str(root / "empty.csv"), "dir": str(root / "a-directory"),
            "missing": str(root / "absent" / "nothing-here"), "foreign_dir": str(root / "foreign-dir"),
            "foreign_db": str(root / "foreign.sqlite"), "store": str(root / "store.sqlite"),
            "newer_store": str(root / "newer.sqlite"), "tensor_pt": str(root / "tensor.pt"),
            "json_list": str(root / "list.json"), "drift_record": str(root / "drift.json"),
            "splits": str(root / "splits"), "conch": str(conch), "cohort": str(rcc_cohort),
            "new": str(root / "new-output")}


def _rc(argv: list[str]) -> int:
    """``main(argv)``'s exit status, whether it returns it or argparse exits with it."""
    try:
        return main(argv)
    except SystemExit as stop:
        return int(stop.code)


@pytest.mark.parametrize("case", list(BAD_OPTIONS))
def test_every_option_rejects_bad_input_with_a_named_error(case: str, bad_inputs: dict[str, str], capsys,
                                                           tmp_path: Path) -> None:
    argv, needles = BAD_OPTIONS[case]
    code = _rc([a.format(**bad_inputs) for a in argv])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "error: " in err and "Traceback" not in err, err
    for needle in needles:
        assert needle.format(**bad_inputs) in err, f"{needle!r} not in:\n{err}"
    assert not Path(bad_inputs["new"]).exists(), "a refused command wrote its output"
    assert list(tmp_path.iterdir()) == [], "a refused command wrote into the working directory"


@pytest.mark.parametrize(("argv", "needle"), [
    (["--model", "resnet", "--site", "rcc"], "unknown model 'resnet'"),
    (["--model", "survpath", "--site", "lung"], "unknown site 'lung'"),
    (["--model", "survpath", "--site", "rcc", "--task", "multitask"], "does not support task 'multitask'"),
    (["--model", "modaltune", "--site", "rcc", "--task", "survival"], "does not support task 'survival'"),
    (["--model", "modaltune", "--site", "blca"], "deployed out of distribution"),
    (["--model", "gigapath_cat_cls", "--site", "rcc"], "--site brca"),
    (["--model", "survpath", "--site", "rcc", "--seed", "-1"], "got -1"),
], ids=["model", "site", "task", "multitask-model-task", "ood-site", "transfer-site", "seed"])
def test_bad_run_request_writes_nothing(argv: list[str], needle: str, capsys, tmp_path: Path) -> None:
    """Without --cohort a run would generate the embedded cohort, create the store and a run directory:
    a bad argument is refused before any of them (the test's working directory holds all three)."""
    code = _rc(["run", *argv, "--profile", "tiny", "--wandb", "disabled"])
    err = capsys.readouterr().err
    assert code == 2 and needle in err and "Traceback" not in err, err
    assert list(tmp_path.iterdir()) == []


def test_store_schema_version_is_recorded_and_checked(tmp_path: Path) -> None:
    """A new store carries this code's schema version; a pre-versioning store (version 0) is read and stamped."""
    from bench.errors import BenchError
    from bench.results import SCHEMA_VERSION, ResultStore

    ResultStore(tmp_path / "new.sqlite").close()
    with sqlite3.connect(tmp_path / "new.sqlite") as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        conn.execute("PRAGMA user_version = 0")
    conn.close()
    ResultStore(tmp_path / "new.sqlite").close()
    with sqlite3.connect(tmp_path / "new.sqlite") as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(BenchError, match=f"schema {SCHEMA_VERSION + 1} > {SCHEMA_VERSION}"):
        ResultStore(tmp_path / "new.sqlite")
