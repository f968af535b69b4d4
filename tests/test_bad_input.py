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
