"""Tests of the ModalTune release importer on a small fake release written here.

The fake release copies the real files' quirks (martellab-sri/ModalTune ``dataset/json_splits``,
SurvPath ``rna_clean.csv`` / ``combine_comps.csv``, MCAT ``signatures.csv``): bare NaN tokens,
one record per slide with multi-slide patients, a rare-set patient, gene_availability 0 patients,
an unnamed first RNA column, an extra RNA patient, a gene missing from the pathway file and a pathway
left empty, and .h5 / .pt (dict and bare tensor) feature files in nested folders.
"""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import torch

from bench.cli import main
from bench.data import format as fmt
from bench.data.importers import CohortImportError, import_modaltune

DIM = 8
# barcode, split, slide suffixes, class, diagnosis, vital_status, durations, gene_availability, stage
BRCA = [
    ("TCGA-AA-0001", "train", ["DX1", "DX2"], 0, "infiltrating duct carcinoma", 1, 10.0, 1, float("nan")),
    ("TCGA-AA-0002", "train", ["DX1"], 1, "lobular carcinoma", 0, 20.0, 1, "Stage IIA"),
    ("TCGA-AA-0003", "train", ["DX1"], -1, "mucinous adenocarcinoma", 0, 30.0, 1, "Stage I"),
    ("TCGA-AA-0004", "train", ["DX1"], 0, "infiltrating duct carcinoma", 1, 100.0, 0, "Stage III"),
    ("TCGA-AA-0005", "val", ["DX1", "DX2", "DX3"], 0, "infiltrating duct carcinoma", 1, 40.0, 1, "Stage IIB"),
    ("TCGA-AA-0006", "test", ["DX1"], 1, "lobular carcinoma", 0, 50.0, 1, "Stage IV"),
    ("TCGA-AA-0007", "test", ["DX1"], 0, "infiltrating duct carcinoma", 0, 5.0, 0, "Stage I"),
]
RCC = [
    ("TCGA-BB-0001", "train", ["DX1"], 2, "chromophobe renal cell carcinoma", 0, 12.0, 1, "Stage I"),
    ("TCGA-BB-0002", "val", ["DX1"], 0, "papillary renal cell carcinoma", 1, 8.0, 1, "Stage II"),
    ("TCGA-BB-0003", "test", ["DX1"], 1, "renal clear cell carcinoma", 0, 30.0, 1, float("nan")),
]
RNA_GENES = ["GA", "GB", "GX", "GC"]  # GX is not in the pathway file
PATHWAYS = {"PW1": {"GA", "GB"}, "PW2": {"GC"}, "PW3": {"GZ"}}  # PW3's only gene has no expression


def slide_records(rows: list[tuple], project: str) -> dict[str, list[dict]]:
    """Split-file records (one per slide) of ``rows``, keyed by split."""
    by_split: dict[str, list[dict]] = {s: [] for s in fmt.SPLITS}
    for i, (case, split, slides, cls, diag, vital, months, genes, stage) in enumerate(rows):
        for suffix in slides:
            slide = f"{case}-01Z-00-{suffix}"
            by_split[split].append({
                "case_id": f"uuid-{case}", "age_at_index": 60 + i if i % 2 == 0 else str(60 + i),
                "vital_status": vital, "ajcc_pathologic_m": "M0", "ajcc_pathologic_n": float("nan"),
                "ajcc_pathologic_stage": stage, "ajcc_pathologic_t": "T2", "primary_diagnosis": diag,
                "year_of_diagnosis": "2008", "slide_submitter_id": slide, "durations": months,
                "features_path": f"PATHTODATABASE/feats/{slide}_featvec.pt", "project_id": project,
                "primary_class": cls, "case_submitter_id": case, "gene_availability": genes,
            })
    return by_split


def write_split(path: Path, records: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"data": records}))  # json writes NaN as the bare token, as the release does


def edit_split(path: Path, edit) -> None:
    doc = json.loads(path.read_text())
    edit(doc["data"])
    path.write_text(json.dumps(doc))


def write_h5(path: Path, n: int, dim: int = DIM, seed: int = 0) -> np.ndarray:
    path.parent.mkdir(parents=True, exist_ok=True)
    feats = np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)
    with h5py.File(path, "w") as f:
        f.create_dataset("features", data=feats)
        f.create_dataset("coords", data=np.arange(2 * n).reshape(n, 2) * 256)
    return feats


@pytest.fixture()
def release(tmp_path: Path) -> dict[str, Path]:
    root = tmp_path / "release"
    splits = root / "json_splits"
    for folder, rows, project in (("brca", BRCA, "TCGA-BRCA"), ("rcc", RCC, "TCGA-KIRC")):
        for split, records in slide_records(rows, project).items():
            write_split(splits / f"tcga_{folder}" / f"{split}_{folder}_cls_feat.json", records)
    write_split(splits / "tcga_pancancer" / "train_pancancer_cls_feat.json", [])

    rna_cases = ["TCGA-AA-0001", "TCGA-AA-0002", "TCGA-AA-0003", "TCGA-AA-0005", "TCGA-ZZ-9999",
                 "TCGA-BB-0001", "TCGA-BB-0002", "TCGA-BB-0003"]
    values = np.arange(len(rna_cases) * len(RNA_GENES), dtype=float).reshape(len(rna_cases), -1) / 7
    rna = pd.DataFrame(values, index=rna_cases, columns=RNA_GENES)
    rna.to_csv(root / "rna_clean.csv")  # unnamed first column, as SurvPath's rna_clean.csv

    genes = ["GA", "GB", "GC", "GZ"]
    comps = pd.DataFrame({"gene": genes, **{pw: [int(g in members) for g in genes] for pw, members in PATHWAYS.items()}})
    comps.to_csv(root / "combine_comps.csv", index=False)

    families = {name.title(): [] for name in fmt.GENE_FAMILIES}
    families["Tumor Suppressor Genes"] = ["GA", "GQ"]
    families["Oncogenes"] = ["GC", "GB", "GA"]
    families["Transcription Factors"] = ["GB"]
    longest = max(map(len, families.values()))
    pd.DataFrame({k: v + [None] * (longest - len(v)) for k, v in families.items()}).to_csv(
        root / "signatures.csv", index=False)

    feats = root / "features"
    write_h5(feats / "h5_files" / "TCGA-AA-0001-01Z-00-DX1.0A1B2C3D-UUID.h5", 5)  # full .svs-style name
    (feats / "pt").mkdir()
    torch.save({"features": torch.ones(4, DIM), "coords": torch.tensor([[0, 0], [256, 0], [0, 256], [256, 256]])},
               feats / "pt" / "TCGA-AA-0002-01Z-00-DX1_featvec.pt")  # named like the record's features_path
    torch.save(torch.full((3, DIM), 2.0), feats / "pt" / "TCGA-AA-0003-01Z-00-DX1.pt")  # bare tensor, no coords
    for k, suffix in enumerate(("DX1", "DX2", "DX3")):
        write_h5(feats / "h5_files" / f"TCGA-AA-0005-01Z-00-{suffix}.h5", 2 + k, seed=k)
    torch.save(torch.zeros(2, DIM), feats / "pt" / "TCGA-AA-0005-01Z-00-DX1.pt")  # CLAM also writes .pt: .h5 wins
    write_h5(feats / "rcc" / "TCGA-BB-0001-01Z-00-DX1.h5", 3)
    return {"splits": splits, "rna": root / "rna_clean.csv", "pathways": root / "combine_comps.csv",
            "families": root / "signatures.csv", "features": feats, "out": tmp_path / "cohort"}


def full_import(release: dict[str, Path], **kwargs):
    args = dict(features_root=release["features"], rna_csvs=[release["rna"]], pathways_csv=release["pathways"],
                families_csv=release["families"])
    args.update(kwargs)
    return import_modaltune(release["splits"], release["out"], **args)


def read_patients(out: Path) -> pd.DataFrame:
    return pd.read_csv(out / fmt.PATIENTS, keep_default_na=False, dtype=str).set_index("case_id")


def test_fixture_has_bare_nan_tokens(release):
    text = (release["splits"] / "tcga_brca" / "train_brca_cls_feat.json").read_text()
    assert ": NaN" in text


def test_full_import_tables_bins_flags_and_notes(release):
    report = full_import(release)
    out = release["out"]
    patients = read_patients(out)
    assert list(patients.reset_index().columns) == list(fmt.PATIENT_COLUMNS) + ["case_uuid"]
    # gene_availability 0 patients (0004, 0007) are left out; everything else is one row per patient
    assert list(patients.index) == ["TCGA-AA-0001", "TCGA-AA-0002", "TCGA-AA-0003", "TCGA-AA-0005", "TCGA-AA-0006",
                                    "TCGA-BB-0001", "TCGA-BB-0002", "TCGA-BB-0003"]
    p1, p3, p5 = patients.loc["TCGA-AA-0001"], patients.loc["TCGA-AA-0003"], patients.loc["TCGA-AA-0005"]
    assert (p1["site"], p1["split"], p1["label"], p1["event"], p1["case_uuid"]) == ("BRCA", "train", "0", "1",
                                                                                    "uuid-TCGA-AA-0001")
    assert p3["label"] == "-1" and p3["primary_diagnosis"] == "mucinous adenocarcinoma"
    assert p1["stage"] == "" and p1["n"] == "" and p1["t"] == "T2"  # bare NaN -> empty raw string
    assert patients.loc["TCGA-AA-0002", "age"] == "61" and p1["age"] == "60"  # str and int ages both raw text
    assert patients.loc["TCGA-BB-0001", "label"] == "2"

    manifest = json.loads((out / fmt.MANIFEST).read_text())
    months = [r[6] for r in BRCA]  # all patients of the site in the split files, excluded ones included
    edges = fmt.quartile_edges(months)
    assert manifest["sites"]["BRCA"]["bin_upper_months"] == pytest.approx(edges)
    brca = patients[patients["site"] == "BRCA"]
    expected_bins = fmt.survival_bin(brca["survival_months"].astype(float), edges)
    assert brca["survival_bin"].astype(int).tolist() == expected_bins.tolist()
    assert manifest["sites"]["RCC"]["classes"] == {"0": "papillary renal cell carcinoma",
                                                  "1": "renal clear cell carcinoma",
                                                  "2": "chromophobe renal cell carcinoma"}
    assert manifest["provenance"]["kind"] == "imported"
    assert manifest["provenance"]["source_paths"]["rna"] == [str(release["rna"].resolve())]
    assert (manifest["feature_dim"], manifest["genes"], manifest["n_pathways"]) == (DIM, ["GA", "GB", "GC"], 2)

    assert patients["has_rna"].to_dict() == {c: "0" if c == "TCGA-AA-0006" else "1" for c in patients.index}
    assert p1["slide_ids"] == "TCGA-AA-0001-01Z-00-DX1" and p1["has_wsi"] == "1"  # DX2 has no features
    assert p5["slide_ids"].split(";") == [f"TCGA-AA-0005-01Z-00-DX{k}" for k in (1, 2, 3)]
    assert patients.loc["TCGA-AA-0006", "has_wsi"] == "0" and patients.loc["TCGA-AA-0006", "slide_ids"] == ""
    assert patients.loc["TCGA-BB-0002", "has_wsi"] == "0"

    c = report.sites["BRCA"]
    assert (c.records, c.patients_in_files, c.excluded_no_expression) == (10, 7, 2)
    assert c.splits == {"train": 3, "val": 1, "test": 1}
    assert (c.rare, c.events, c.censored, c.slides, c.with_rna, c.with_wsi) == (1, 2, 3, 6, 4, 4)
    assert (report.n_genes, report.n_pathways, report.feature_dim) == (3, 2, DIM)
    notes = "\n".join(report.notes)
    for fragment in ("skipped folders tcga_pancancer", "2 patients with gene_availability = 0 excluded (BRCA 2)",
                     "1 expression genes absent from the pathway file dropped (e.g. GX)",
                     "1 pathways left with no gene dropped (e.g. PW3)",
                     "1 expression rows for patients not in the imported cohort dropped (e.g. TCGA-ZZ-9999)",
                     "BRCA: 1 patients have no expression row (has_rna = 0; e.g. TCGA-AA-0006)",
                     "BRCA: 1 patients have features for only some of their slides",
                     "BRCA: 1 patients have no feature file for any slide", "RCC: 2 patients have no feature file",
                     "1 slides came from bare-tensor .pt files", "1 gene-family genes not in the cohort dropped"):
        assert fragment in notes, fragment


def test_rna_pathway_family_files(release):
    full_import(release)
    out = release["out"]
    rna = pd.read_parquet(out / fmt.RNA)
    assert list(rna.columns) == ["case_id", "GA", "GB", "GC"]
    assert all(rna[g].dtype == np.float32 for g in ("GA", "GB", "GC"))
    assert "TCGA-AA-0006" not in set(rna["case_id"]) and "TCGA-ZZ-9999" not in set(rna["case_id"])
    source = pd.read_csv(release["rna"], index_col=0)
    mine = rna.set_index("case_id")
    np.testing.assert_allclose(mine.to_numpy(), source.loc[mine.index, ["GA", "GB", "GC"]].to_numpy(), rtol=1e-6)

    pathways = pd.read_csv(out / fmt.PATHWAYS)
    assert list(pathways.columns) == ["gene", "PW1", "PW2"]
    assert pathways.set_index("gene").to_dict("index") == {"GA": {"PW1": 1, "PW2": 0}, "GB": {"PW1": 1, "PW2": 0},
                                                           "GC": {"PW1": 0, "PW2": 1}}
    families = pd.read_csv(out / fmt.FAMILIES)
    assert families.values.tolist() == [["GA", "tumor suppressor genes"], ["GA", "oncogenes"], ["GB", "oncogenes"],
                                        ["GC", "oncogenes"], ["GB", "transcription factors"]]


def test_features_are_linked_or_converted(release):
    full_import(release)
    feats = release["out"] / fmt.FEATURES_DIR
    link = feats / "TCGA-AA-0001-01Z-00-DX1.h5"
    assert link.is_symlink()
    assert link.resolve() == (release["features"] / "h5_files" / "TCGA-AA-0001-01Z-00-DX1.0A1B2C3D-UUID.h5").resolve()
    assert (feats / "TCGA-AA-0005-01Z-00-DX1.h5").is_symlink()  # .h5 preferred over the CLAM .pt twin
    with h5py.File(feats / "TCGA-AA-0002-01Z-00-DX1.h5", "r") as f:  # dict .pt found via features_path's basename
        np.testing.assert_array_equal(f["features"][:], np.ones((4, DIM), np.float32))
        np.testing.assert_array_equal(f["coords"][:], [[0, 0], [256, 0], [0, 256], [256, 256]])
    with h5py.File(feats / "TCGA-AA-0003-01Z-00-DX1.h5", "r") as f:
        np.testing.assert_array_equal(f["features"][:], np.full((3, DIM), 2.0, np.float32))
        # no coords in the bare tensor: the raster runs give such a file (256-px tiles, 1000 per row)
        np.testing.assert_array_equal(f["coords"][:], [[0, 0], [256, 0], [512, 0]])
    assert sorted(p.name for p in feats.iterdir()) == sorted(
        ["TCGA-AA-0001-01Z-00-DX1.h5", "TCGA-AA-0002-01Z-00-DX1.h5", "TCGA-AA-0003-01Z-00-DX1.h5",
         "TCGA-AA-0005-01Z-00-DX1.h5", "TCGA-AA-0005-01Z-00-DX2.h5", "TCGA-AA-0005-01Z-00-DX3.h5",
         "TCGA-BB-0001-01Z-00-DX1.h5"])


def test_importer_and_runtime_reader_agree_on_a_pt_without_coords(release):
    """A coords-less .pt gets the same coords whether a run reads it or the importer converts it."""
    from bench.data.features import RASTER_WIDTH, read_feature_file

    source = release["features"] / "pt" / "TCGA-AA-0003-01Z-00-DX1.pt"
    n = RASTER_WIDTH + 3  # wraps onto a second raster row
    torch.save(torch.arange(n * DIM, dtype=torch.float64).reshape(n, DIM), source)
    full_import(release)
    runtime_feats, runtime_coords = read_feature_file(source)
    imported = release["out"] / fmt.FEATURES_DIR / "TCGA-AA-0003-01Z-00-DX1.h5"
    imported_feats, imported_coords = read_feature_file(imported)
    np.testing.assert_array_equal(imported_feats, runtime_feats)
    np.testing.assert_array_equal(imported_coords, runtime_coords)
    assert runtime_coords.shape == (n, 2) and len(np.unique(runtime_coords, axis=0)) == n  # no two patches stacked
    assert runtime_coords[[1, RASTER_WIDTH, n - 1]].tolist() == [[256, 0], [0, 256], [512, 256]]


def test_import_stores_a_content_fingerprint_independent_of_source_paths(release, tmp_path):
    import shutil

    from bench.data.fingerprint import content_fingerprint

    full_import(release)
    first = json.loads((release["out"] / fmt.MANIFEST).read_text())
    assert first["fingerprint"] == content_fingerprint(release["out"])
    moved = tmp_path / "moved"  # the same release elsewhere: other absolute source paths in the provenance
    shutil.copytree(release["splits"].parent, moved)
    again = tmp_path / "again"
    import_modaltune(moved / "json_splits", again, features_root=moved / "features", rna_csvs=[moved / "rna_clean.csv"],
                     pathways_csv=moved / "combine_comps.csv", families_csv=moved / "signatures.csv")
    second = json.loads((again / fmt.MANIFEST).read_text())
    assert second["provenance"]["source_paths"] != first["provenance"]["source_paths"]
    assert second["fingerprint"] == first["fingerprint"]
    write_h5(moved / "features" / "rcc" / "TCGA-BB-0001-01Z-00-DX1.h5", 3, seed=5)  # the linked file's content counts
    assert content_fingerprint(again) != first["fingerprint"]


def test_all_patients_keeps_patients_without_expression(release):
    report = full_import(release, all_patients=True, features_root=None)
    patients = read_patients(release["out"])
    assert {"TCGA-AA-0004", "TCGA-AA-0007"} <= set(patients.index)
    assert patients.loc["TCGA-AA-0004", "has_rna"] == "0"
    assert report.sites["BRCA"].splits == {"train": 4, "val": 1, "test": 2}
    manifest = json.loads((release["out"] / fmt.MANIFEST).read_text())
    assert manifest["sites"]["BRCA"]["bin_upper_months"] == pytest.approx(fmt.quartile_edges([r[6] for r in BRCA]))


def test_without_optional_inputs(release):
    report = import_modaltune(release["splits"], release["out"], sites="rcc")
    out = release["out"]
    manifest = json.loads((out / fmt.MANIFEST).read_text())
    assert list(manifest["sites"]) == ["RCC"]
    assert (manifest["n_genes"], manifest["genes"], manifest["n_pathways"], manifest["feature_dim"]) == (0, [], 0, None)
    assert not (out / fmt.RNA).exists()
    assert (out / fmt.FAMILIES).read_text().strip() == "gene,family"
    patients = read_patients(out)
    assert set(patients["has_rna"]) == {"0"} and set(patients["has_wsi"]) == {"0"}
    assert patients.loc["TCGA-BB-0001", "slide_ids"] == "TCGA-BB-0001-01Z-00-DX1"
    assert report.sites["RCC"].with_rna == 0 and report.feature_dim is None
    assert "rna_duplicates" not in manifest["provenance"]  # no --rna, nothing to resolve


def test_several_rna_files_suffixes_and_sample_barcodes(release, tmp_path):
    second = pd.DataFrame([[1.0, 2.0, 3.0, 4.0]], columns=["GA_rnaseq", "GB_rnaseq", "GC_rnaseq", "GY_rnaseq"])
    second.insert(0, "case_id", ["TCGA-AA-0006-01"])
    second.to_csv(tmp_path / "extra.csv", index=False)
    report = full_import(release, rna_csvs=[release["rna"], tmp_path / "extra.csv"], features_root=None)
    rna = pd.read_parquet(release["out"] / fmt.RNA).set_index("case_id")
    assert rna.loc["TCGA-AA-0006"].tolist() == [1.0, 2.0, 3.0]
    assert read_patients(release["out"]).loc["TCGA-AA-0006", "has_rna"] == "1"
    notes = "\n".join(report.notes)
    assert "1 sample barcodes cut to the 12-character patient barcode" in notes
    assert "extra.csv: 1 genes absent from another --rna file dropped (e.g. GY)" in notes


def test_reimport_replaces_cohort_and_failure_keeps_it(release):
    full_import(release)
    import_modaltune(release["splits"], release["out"], sites=["rcc"])
    assert set(read_patients(release["out"])["site"]) == {"RCC"}
    edit_split(release["splits"] / "tcga_brca" / "val_brca_cls_feat.json", lambda d: d[1].update(durations=1.0))
    with pytest.raises(CohortImportError):
        full_import(release)
    assert set(read_patients(release["out"])["site"]) == {"RCC"}
    assert sorted(p.name for p in release["out"].parent.iterdir() if p.name.startswith(".")) == []
    assert (release["features"] / "h5_files" / "TCGA-AA-0001-01Z-00-DX1.0A1B2C3D-UUID.h5").is_file()


def _brca(release, split):
    return release["splits"] / "tcga_brca" / f"{split}_brca_cls_feat.json"


def _bad_rna(release):
    df = pd.read_csv(release["rna"], index_col=0)
    df = df.astype(object)
    df.loc["TCGA-AA-0002", "GB"] = "n/a"
    df.to_csv(release["rna"])


def _move_to_test(release):
    records = json.loads(_brca(release, "train").read_text())["data"]
    edit_split(_brca(release, "test"), lambda d: d.append(records[0]))


def _second_owner(release):
    records = json.loads(_brca(release, "train").read_text())["data"]
    stolen = dict(records[3], slide_submitter_id=records[0]["slide_submitter_id"])
    edit_split(_brca(release, "train"), lambda d: d.append(stolen))


def _other_dim(release):
    write_h5(release["features"] / "h5_files" / "TCGA-AA-0005-01Z-00-DX2.h5", 2, dim=DIM + 1)


def _unknown_family(release):
    pd.DataFrame({"gene": ["GA"], "family": ["housekeeping genes"]}).to_csv(release["families"], index=False)


def _foreign_out(release):
    release["out"].mkdir()
    (release["out"] / "notes.txt").write_text("mine")


@pytest.mark.parametrize(("mutate", "kwargs", "fragments"), [
    (lambda r: edit_split(_brca(r, "val"), lambda d: d[1].update(durations=41.0)), {},
     ["val_brca_cls_feat.json", "patient TCGA-AA-0005", "'durations'", "(40, 41)"]),
    (lambda r: edit_split(_brca(r, "val"), lambda d: d[2].update(primary_diagnosis="lobular carcinoma")), {},
     ["val_brca_cls_feat.json", "patient TCGA-AA-0005", "'primary_diagnosis'"]),
    (_move_to_test, {}, ["patient TCGA-AA-0001", "train_brca_cls_feat.json", "test_brca_cls_feat.json"]),
    (lambda r: edit_split(_brca(r, "train"), lambda d: d[2].update(durations=float("nan"))), {},
     ["train_brca_cls_feat.json", "patient TCGA-AA-0002", "'durations'", "missing or NaN"]),
    (lambda r: edit_split(_brca(r, "test"), lambda d: d[0].pop("vital_status")), {},
     ["test_brca_cls_feat.json", "patient TCGA-AA-0006", "'vital_status'"]),
    (lambda r: edit_split(_brca(r, "test"), lambda d: d[0].update(vital_status=2)), {},
     ["test_brca_cls_feat.json", "patient TCGA-AA-0006", "vital_status = 2"]),
    (lambda r: edit_split(_brca(r, "test"), lambda d: d[0].update(primary_class=2)), {},
     ["test_brca_cls_feat.json", "patient TCGA-AA-0006", "primary_class 2", "classes 0..1"]),
    (_second_owner, {}, ["train_brca_cls_feat.json", "slide TCGA-AA-0001-01Z-00-DX1",
                         "TCGA-AA-0001 and TCGA-AA-0003"]),
    (_bad_rna, {}, ["rna_clean.csv", "patient TCGA-AA-0002", "gene GB", "'n/a'"]),
    (_other_dim, {}, ["TCGA-AA-0005-01Z-00-DX2.h5", f"feature dim {DIM + 1} differs from {DIM}"]),
    (_unknown_family, {}, ["signatures.csv", "housekeeping genes", "tumor suppressor genes"]),
    (_foreign_out, {}, ["cohort", "neither empty nor a cohort"]),
    (lambda r: None, {"sites": ["brca", "pancancer"]}, ["unknown site 'pancancer'", "brca, gbmlgg, nsclc, rcc"]),
    (lambda r: None, {"sites": ["blca"]}, ["no folder tcga_blca", "tcga_brca"]),
    (lambda r: None, {"rna_duplicates": "last"}, ["unknown rna_duplicates policy 'last'", "error, mean, first"]),
])
def test_errors_name_file_patient_and_field(release, mutate, kwargs, fragments):
    mutate(release)
    with pytest.raises(CohortImportError) as err:
        full_import(release, **kwargs)
    for fragment in fragments:
        assert fragment in str(err.value), (fragment, str(err.value))
    assert not release["out"].exists() or (release["out"] / "notes.txt").exists()
    assert [p for p in release["out"].parent.iterdir() if p.name.startswith(".cohort")] == []



# ---------------------------------------------------------------------------------------------- repeated RNA rows
DUP_GENES = ["GA", "GB", "GC"]  # the cohort's genes (GX has no pathway)


def _duplicate_rna_rows(release) -> pd.DataFrame:
    """Rewrite rna_clean.csv (unnamed id column) with repeated patients, as SurvPath's COADREAD file has.

    TCGA-AA-0001: its row, then a different one 2 rows later (file lines 2 and 4); TCGA-BB-0002: three
    different rows, the first being a new one; TCGA-AA-0003: repeated with identical values at the end.
    Returns the rows as written (index = barcode, repeats included).
    """
    df = pd.read_csv(release["rna"], index_col=0)
    def row(values, barcode):
        return pd.DataFrame([values], index=[barcode], columns=df.columns)
    rows = pd.concat([df.loc[["TCGA-AA-0001", "TCGA-AA-0002"]], row([1.0, 2.0, 3.0, 4.0], "TCGA-AA-0001"),
                      df.loc[["TCGA-AA-0003", "TCGA-AA-0005", "TCGA-ZZ-9999", "TCGA-BB-0001"]],
                      row([10.0, 20.0, 30.0, 40.0], "TCGA-BB-0002"), df.loc[["TCGA-BB-0002"]],
                      row([5.0, 5.0, 5.0, 5.0], "TCGA-BB-0002"), df.loc[["TCGA-BB-0003", "TCGA-AA-0003"]]])
    rows.to_csv(release["rna"])
    return rows


def _imported_rna(release) -> pd.DataFrame:
    return pd.read_parquet(release["out"] / fmt.RNA).set_index("case_id")


def _cli_import(release, *extra: str) -> int:
    return main(["data", "import", "modaltune", "--splits", str(release["splits"]), "--out", str(release["out"]),
                 "--rna", str(release["rna"]), "--pathways", str(release["pathways"]), *extra])


def test_repeated_rna_rows_are_all_named_in_one_error(release, capsys):
    _duplicate_rna_rows(release)
    with pytest.raises(CohortImportError) as err:
        full_import(release)
    message = str(err.value)
    for fragment in ("rna_clean.csv", "3 patients have more than one expression row",
                     "TCGA-AA-0001 (2 rows; lines 2, 4)", "TCGA-BB-0002 (3 rows; lines 9, 10, 11)",
                     "TCGA-AA-0003 (2 rows, identical; lines 5, 13)", "--rna-duplicates mean",
                     "--rna-duplicates first"):
        assert fragment in message, (fragment, message)
    assert not release["out"].exists()

    capsys.readouterr()
    assert _cli_import(release) == 2
    stderr = capsys.readouterr().err
    assert "TCGA-AA-0001 (2 rows" in stderr and "TCGA-BB-0002 (3 rows" in stderr and "Traceback" not in stderr
    assert not release["out"].exists()


def test_rna_duplicates_mean_averages_and_records_the_patients(release, capsys):
    rows = _duplicate_rna_rows(release)
    assert _cli_import(release, "--rna-duplicates", "mean", "--json") == 0
    report = json.loads(capsys.readouterr().out)
    rna = _imported_rna(release)
    for barcode in ("TCGA-AA-0001", "TCGA-BB-0002"):
        expected = rows.loc[[barcode], DUP_GENES].to_numpy().mean(axis=0)
        np.testing.assert_allclose(rna.loc[barcode, DUP_GENES].to_numpy(), expected, rtol=1e-6)
    assert rna.loc["TCGA-AA-0001", "GA"] == pytest.approx((0.0 + 1.0) / 2)  # the fixture's row is arange / 7
    np.testing.assert_allclose(rna.loc["TCGA-AA-0003", DUP_GENES].to_numpy(),
                               rows.loc[["TCGA-AA-0003"], DUP_GENES].to_numpy()[0], rtol=1e-6)
    assert rna.index.is_unique

    notes = "\n".join(report["notes"])
    for fragment in ("3 patients with several expression rows averaged per gene (--rna-duplicates mean)",
                     "TCGA-AA-0001 (2 rows", "TCGA-BB-0002 (3 rows", "TCGA-AA-0003 (2 rows, identical"):
        assert fragment in notes, (fragment, notes)
    manifest = json.loads((release["out"] / fmt.MANIFEST).read_text())
    assert manifest["provenance"]["rna_duplicates"] == {
        "policy": "mean",
        "files": {str(release["rna"].resolve()): {"TCGA-AA-0001": 2, "TCGA-AA-0003": 2, "TCGA-BB-0002": 3}}}


def test_rna_duplicates_first_keeps_the_first_row_in_file_order(release):
    rows = _duplicate_rna_rows(release)
    report = full_import(release, rna_duplicates="first", features_root=None)
    rna = _imported_rna(release)
    np.testing.assert_allclose(rna.loc["TCGA-AA-0001", DUP_GENES].to_numpy(),
                               rows.iloc[0][DUP_GENES].to_numpy(), rtol=1e-6)  # the fixture's row came first
    assert rows.index[7] == "TCGA-BB-0002" and rows.iloc[7][DUP_GENES].tolist() == [10.0, 20.0, 40.0]
    assert rna.loc["TCGA-BB-0002", DUP_GENES].tolist() == [10.0, 20.0, 40.0]  # the new row, first in file order
    assert rna.index.is_unique
    notes = "\n".join(report.notes)
    assert "3 patients with several expression rows reduced to the first row in file order" in notes
    assert "TCGA-BB-0002 (3 rows; lines 9, 10, 11)" in report.summary()
    manifest = json.loads((release["out"] / fmt.MANIFEST).read_text())
    assert manifest["provenance"]["rna_duplicates"]["policy"] == "first"
    assert manifest["provenance"]["rna_duplicates"]["files"][str(release["rna"].resolve())]["TCGA-BB-0002"] == 3


def test_clean_rna_records_the_policy_and_no_patient(release):
    full_import(release, features_root=None)
    manifest = json.loads((release["out"] / fmt.MANIFEST).read_text())
    assert manifest["provenance"]["rna_duplicates"] == {"policy": "error", "files": {}}


def test_patient_in_two_rna_files_is_an_error_under_every_policy(release, tmp_path):
    extra = pd.DataFrame([[1.0, 2.0, 3.0, 4.0]] * 3, columns=["GA", "GB", "GC", "GX"],
                         index=["TCGA-AA-0001", "TCGA-AA-0006", "TCGA-BB-0003"])
    extra.to_csv(tmp_path / "extra.csv")
    for policy in ("error", "mean", "first"):
        with pytest.raises(CohortImportError) as err:
            full_import(release, rna_csvs=[release["rna"], tmp_path / "extra.csv"], rna_duplicates=policy,
                        features_root=None)
        message = str(err.value)
        assert "2 patients have expression rows in more than one --rna file" in message
        for barcode in ("TCGA-AA-0001", "TCGA-BB-0003"):
            assert f"{barcode} ({release['rna']} and {tmp_path / 'extra.csv'})" in message, message
        assert "TCGA-AA-0006" not in message
        assert not release["out"].exists()
