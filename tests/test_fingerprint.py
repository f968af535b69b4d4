"""Tests of the cohort content fingerprint (bench.data.fingerprint) and its check in ``data validate``.

The fingerprint must survive any rewrite that keeps the decoded content (other parquet / HDF5 codecs,
chunking, dtypes, CSV number formatting and quoting, .h5 vs .pt, provenance) and change with any value
a run can read.
"""

from __future__ import annotations

import csv
import json
import logging
import re
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from bench.cli import main
from bench.data import format as fmt
from bench.data.cohort import Cohort
from bench.data.fingerprint import content_fingerprint
from bench.errors import CohortError


def _stored(root: Path) -> str:
    return json.loads((root / fmt.MANIFEST).read_text())["fingerprint"]


def _patients(root: Path) -> pd.DataFrame:
    return pd.read_csv(root / fmt.PATIENTS, dtype=str, keep_default_na=False)


def _write_patients(root: Path, df: pd.DataFrame) -> None:
    df.to_csv(root / fmt.PATIENTS, index=False, lineterminator="\n")


def _h5_files(root: Path) -> list[Path]:
    return sorted((root / fmt.FEATURES_DIR).glob("*.h5"))


# ---------------------------------------------------------------------------------------------- stored value
def test_generation_stores_the_recomputed_fingerprint(rcc_cohort: Path) -> None:
    stored = _stored(rcc_cohort)
    assert re.fullmatch(r"[0-9a-f]{16}", stored)
    assert content_fingerprint(rcc_cohort) == stored
    assert Cohort.load(rcc_cohort).fingerprint == stored


def test_loading_reads_the_stored_value_without_recomputing(rcc_copy: Path) -> None:
    manifest = json.loads((rcc_copy / fmt.MANIFEST).read_text())
    manifest["fingerprint"] = "0123456789abcdef"
    (rcc_copy / fmt.MANIFEST).write_text(json.dumps(manifest))
    assert Cohort.load(rcc_copy).fingerprint == "0123456789abcdef"


def test_cohort_without_stored_fingerprint_computes_it_and_hints(rcc_copy: Path, caplog, capsys) -> None:
    expected = _stored(rcc_copy)
    manifest = json.loads((rcc_copy / fmt.MANIFEST).read_text())
    del manifest["fingerprint"]
    (rcc_copy / fmt.MANIFEST).write_text(json.dumps(manifest))
    with caplog.at_level(logging.WARNING, logger="bench.data.cohort"):
        assert Cohort.load(rcc_copy).fingerprint == expected
    assert "--refresh-fingerprint" in caplog.text
    assert main(["data", "validate", str(rcc_copy)]) == 0  # an older cohort is not broken
    assert main(["data", "validate", str(rcc_copy), "--refresh-fingerprint"]) == 0
    assert _stored(rcc_copy) == expected


# ---------------------------------------------------------------------------------------------- same content
def test_other_parquet_codecs_layouts_and_dtypes_keep_the_fingerprint(rcc_copy: Path) -> None:
    before = _stored(rcc_copy)
    path = rcc_copy / fmt.RNA
    rna = pd.read_parquet(path)
    for compression in ("snappy", "zstd", "gzip", None):
        rna.to_parquet(path, compression=compression, index=False)
        assert content_fingerprint(rcc_copy) == before, compression
    genes = rna.columns[1:]
    shuffled = rna.astype({g: np.float64 for g in genes}).sample(frac=1.0, random_state=0)
    shuffled.to_parquet(path)  # float64 values, rows out of order, the shuffled index stored as a column
    assert content_fingerprint(rcc_copy) == before
    table = pa.Table.from_pandas(rna, preserve_index=False)
    pq.write_table(table, path, row_group_size=7, use_dictionary=True, compression="brotli", data_page_version="2.0")
    assert content_fingerprint(rcc_copy) == before


def test_other_hdf5_chunking_compression_dtypes_and_pt_keep_the_fingerprint(rcc_copy: Path) -> None:
    before = _stored(rcc_copy)
    files = _h5_files(rcc_copy)
    as_pt, *rest = files
    with h5py.File(as_pt, "r") as f:
        feats, coords = f["features"][()], f["coords"][()]
    as_pt.unlink()
    torch.save({"features": torch.from_numpy(feats), "coords": torch.from_numpy(coords).float()},
               as_pt.with_suffix(".pt"))
    for i, path in enumerate(rest):
        with h5py.File(path, "r") as f:
            feats, coords = f["features"][()], f["coords"][()]
        with h5py.File(path, "w") as f:
            if i % 2:
                f.create_dataset("features", data=feats[None].astype(np.float64), chunks=(1, 3, feats.shape[1]))
                f.create_dataset("coords", data=coords.astype(np.int32))
            else:
                f.create_dataset("features", data=feats, chunks=(5, 7), compression="gzip", compression_opts=9,
                                 shuffle=True)
                f.create_dataset("coords", data=coords.astype(">i8"), compression="gzip")
    assert content_fingerprint(rcc_copy) == before


def test_csv_number_formatting_quoting_and_row_order_of_lookup_tables_keep_the_fingerprint(rcc_copy: Path) -> None:
    before = _stored(rcc_copy)
    df = pd.read_csv(rcc_copy / fmt.PATIENTS)  # pandas' own inference: ints, floats, NaN for empty fields
    assert df["stage"].isna().any() and df["age"].isna().any()
    for col in ("label", "event", "survival_bin", "has_rna", "has_wsi"):
        df[col] = df[col].astype(float)  # written as "1.0"
    df["age"] = df["age"].map(lambda a: "" if pd.isna(a) else f"{a:.6f}")  # "45.400000"
    df.to_csv(rcc_copy / fmt.PATIENTS, index=False, quoting=csv.QUOTE_ALL, lineterminator="\r\n")
    assert content_fingerprint(rcc_copy) == before

    pathways = pd.read_csv(rcc_copy / fmt.PATHWAYS)
    pathways = pathways.astype({c: float for c in pathways.columns[1:]}).sample(frac=1.0, random_state=1)
    pathways.to_csv(rcc_copy / fmt.PATHWAYS, index=False)  # "1.0", rows out of order
    families = pd.read_csv(rcc_copy / fmt.FAMILIES).sample(frac=1.0, random_state=2)
    families.to_csv(rcc_copy / fmt.FAMILIES, index=False)
    assert content_fingerprint(rcc_copy) == before


def test_provenance_name_and_manifest_layout_do_not_enter(rcc_copy: Path) -> None:
    before = _stored(rcc_copy)
    manifest = json.loads((rcc_copy / fmt.MANIFEST).read_text())
    manifest["provenance"] = {"kind": "imported", "source_paths": {"splits": "/elsewhere/json_splits"}}
    manifest["name"] = "renamed"
    manifest["text_encoders"] = ["bow"]
    manifest["sites"]["RCC"]["bin_upper_months"] = [int(x) if x == int(x) else x
                                                    for x in manifest["sites"]["RCC"]["bin_upper_months"]]
    (rcc_copy / fmt.MANIFEST).write_text(json.dumps(manifest, indent=None))
    assert content_fingerprint(rcc_copy) == before


# ---------------------------------------------------------------------------------------------- other content
def _nudge_rna(root: Path) -> None:
    rna = pd.read_parquet(root / fmt.RNA)
    gene = rna.columns[5]
    rna.loc[3, gene] = np.nextafter(rna.loc[3, gene], np.float32(np.inf), dtype=np.float32)  # one float32 ulp
    rna.to_parquet(root / fmt.RNA, index=False)


def _nudge_feature(root: Path) -> None:
    with h5py.File(_h5_files(root)[2], "r+") as f:
        f["features"][4, 1] = np.nextafter(f["features"][4, 1], np.float32(np.inf), dtype=np.float32)


def _move_coord(root: Path) -> None:
    with h5py.File(_h5_files(root)[2], "r+") as f:
        f["coords"][0, 1] = f["coords"][0, 1] + 1


def _move_patient_to_test(root: Path) -> None:
    df = _patients(root)
    row = int(np.flatnonzero(df["split"] == "train")[0])
    df.loc[row, "split"] = "test"
    _write_patients(root, df)


def _swap_patient_rows(root: Path) -> None:
    """Runs iterate patients in file order, so the order is content."""
    df = _patients(root)
    _write_patients(root, df.iloc[[1, 0, *range(2, len(df))]])


def _move_bin_edge(root: Path) -> None:
    manifest = json.loads((root / fmt.MANIFEST).read_text())
    manifest["sites"]["RCC"]["bin_upper_months"][0] += 0.5
    (root / fmt.MANIFEST).write_text(json.dumps(manifest))


def _drop_pathway_membership(root: Path) -> None:
    pathways = pd.read_csv(root / fmt.PATHWAYS)
    column = pathways.columns[1]
    pathways.loc[int(np.flatnonzero(pathways[column] == 1)[0]), column] = 0
    pathways.to_csv(root / fmt.PATHWAYS, index=False)


EDITS: dict[str, Callable[[Path], None]] = {
    "rna value": _nudge_rna,
    "feature value": _nudge_feature,
    "coord": _move_coord,
    "split": _move_patient_to_test,
    "patient order": _swap_patient_rows,
    "bin edge": _move_bin_edge,
    "pathway membership": _drop_pathway_membership,
}


@pytest.mark.parametrize("edit", list(EDITS))
def test_changed_content_changes_the_fingerprint(rcc_copy: Path, edit: str) -> None:
    before = _stored(rcc_copy)
    EDITS[edit](rcc_copy)
    after = content_fingerprint(rcc_copy)
    assert re.fullmatch(r"[0-9a-f]{16}", after) and after != before


def test_undecodable_value_names_file_patient_and_column(rcc_copy: Path) -> None:
    df = _patients(rcc_copy)
    df.loc[2, "event"] = "dead"
    _write_patients(rcc_copy, df)
    with pytest.raises(CohortError, match=rf"patients\.csv: patient {df.loc[2, 'case_id']}, column event: 'dead'"):
        content_fingerprint(rcc_copy)


# ---------------------------------------------------------------------------------------------- validate
def test_validate_reports_an_edit_and_refresh_stores_the_new_fingerprint(rcc_copy: Path, capsys) -> None:
    before = _stored(rcc_copy)
    _nudge_feature(rcc_copy)
    assert main(["data", "validate", str(rcc_copy)]) == 1
    err = capsys.readouterr().err
    assert "1 problems" in err and f"stored fingerprint '{before}'" in err
    assert "changed after it was written" in err and "--refresh-fingerprint" in err

    assert main(["data", "validate", str(rcc_copy), "--refresh-fingerprint", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["fingerprint_refreshed"] and report["fingerprint"] == content_fingerprint(rcc_copy) != before
    assert _stored(rcc_copy) == report["fingerprint"]
    assert not [p.name for p in rcc_copy.iterdir() if p.name.startswith(".")]  # no temp file left behind
    assert main(["data", "validate", str(rcc_copy)]) == 0


def test_refresh_refuses_while_other_problems_remain(rcc_copy: Path, capsys) -> None:
    manifest_bytes = (rcc_copy / fmt.MANIFEST).read_bytes()
    missing = _h5_files(rcc_copy)[0]
    missing.unlink()
    assert main(["data", "validate", str(rcc_copy), "--refresh-fingerprint"]) == 1
    err = capsys.readouterr().err
    assert missing.stem in err and "fingerprint not refreshed" in err
    assert (rcc_copy / fmt.MANIFEST).read_bytes() == manifest_bytes
