"""Import the ModalTune code release's split files (+ SurvPath expression and pathway tables) as a cohort.

The release files this reads, and the facts about them this module relies on (facts only, no code
taken from either repository):

- ModalTune (ICCV 2025), github.com/martellab-sri/ModalTune,
  ``dataset/json_splits/tcga_<site>/{train,val,test}_<site>_cls_feat.json``: a JSON object whose
  top-level ``data`` list holds one record per *slide* (``data_utils/make_dataset.py`` dumps pandas
  records with :func:`json.dump`, so missing values are bare ``NaN`` tokens, which Python's
  :mod:`json` reads as ``float('nan')``). ``case_submitter_id`` is the TCGA patient barcode,
  ``case_id`` the GDC uuid, ``vital_status`` 1 = dead, ``durations`` months, ``primary_class`` -1 =
  rare set, ``gene_availability`` 1 when the patient has expression data. ``data_utils/datasets.py``
  bags all slides of a patient and joins expression on ``case_submitter_id``. The ``*_titan.json``
  variants and the ``tcga_pancancer`` folder (the union of the four in-domain sites) are not read.
- SurvPath (Jaume et al., CVPR 2024), github.com/mahmoodlab/SurvPath:
  ``datasets_csv/raw_rna_data/<kind>/<site>/rna_clean.csv`` — an unnamed first column holding the
  12-character TCGA patient barcode, then one float column per gene (read there with
  ``index_col=0``); ModalTune's own expression CSVs name that first column ``case_id``.
  ``datasets_csv/pathway_compositions/combine_comps.csv`` — column ``gene`` then 331 pathway columns
  of 0/1 (the same layout as ModalTune's ``dataset/gene_pathway_processed_v2.csv``).
- MCAT (Chen et al., ICCV 2021), github.com/mahmoodlab/MCAT, ``signatures.csv``: the six gene
  families in wide layout, one column per family (title case), gene names down the column.

Cohort rules (DESIGN.md "Cohort format", paper Tables 1 and 5): a patient's case_id is its TCGA
barcode, its bag is all of its slides; by default only patients with ``gene_availability == 1`` are
kept (as Table 1 counts them); the four survival bins of a site are the quartiles of survival months
over *all* of the site's patients in the split files (this reproduces Table 5). Nothing is imputed:
every gene, pathway, patient or slide that is dropped or flagged is counted in
:attr:`ImportReport.notes`.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import re
import shutil
import tempfile
import uuid
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

import numpy as np
import pandas as pd

from bench.data import format as fmt
from bench.errors import BenchError
from bench.data.sites import ALL_SITES, site_info

log = logging.getLogger(__name__)

SITE_DIR_PREFIX = "tcga_"
SPLIT_FILE = "{split}_{site}_cls_feat.json"
PATIENT_ID = "case_submitter_id"
SLIDE_ID = "slide_submitter_id"
EXTRA_COLUMNS = ("case_uuid",)
RNA_SUFFIX = "_rnaseq"  # MCAT-style expression column suffix ("TP53_rnaseq")
FEATURE_SUFFIXES = (".h5", ".pt")
MANIFEST_NAME = "modaltune-release"

# Record fields describing the patient rather than the slide: every slide record of a patient agrees.
TEXT_FIELDS = ("primary_diagnosis", "ajcc_pathologic_stage", "ajcc_pathologic_t", "ajcc_pathologic_n",
               "ajcc_pathologic_m", "age_at_index")
NUMERIC_FIELDS = ("vital_status", "durations", "primary_class", "gene_availability")
PATIENT_FIELDS = ("case_id",) + NUMERIC_FIELDS + TEXT_FIELDS
REQUIRED_FIELDS = (PATIENT_ID, SLIDE_ID, "case_id") + NUMERIC_FIELDS

_FIX = {
    PATIENT_ID: "every record needs the patient's TCGA barcode (e.g. TCGA-AB-1234)",
    SLIDE_ID: "every record needs its slide's id (e.g. TCGA-AB-1234-01Z-00-DX1)",
    "case_id": "every record needs the patient's GDC case uuid",
    "vital_status": "code 1 = dead, 0 = alive; fill it from the GDC clinical table or remove the patient's records",
    "durations": "every patient needs a follow-up time in months; fill it from the GDC clinical table "
                 "or remove the patient's records",
    "primary_class": "give the subtype class index (-1 for the rare set)",
    "gene_availability": "code 1 = expression data available, 0 = not",
}
_TCGA_PATIENT = re.compile(r"^(TCGA-[A-Za-z0-9]{2}-[A-Za-z0-9]{4})-.+$")
_SAFE_SLIDE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class CohortImportError(BenchError, ValueError):
    """A release file cannot be imported. The message names the file, the patient or row and the field
    at fault, and says how to fix it."""


@dataclass
class SiteCounts:
    """What the import did with one site.

    ``records`` slide records and ``patients_in_files`` patients were read from the split files;
    ``excluded_no_expression`` of those (``gene_availability == 0``) were left out unless
    ``all_patients``; ``splits`` counts the kept patients per split. ``slides`` counts the slides
    listed in the kept patients' ``slide_ids``.
    """

    records: int
    patients_in_files: int
    excluded_no_expression: int
    splits: dict[str, int]
    rare: int
    events: int
    censored: int
    slides: int
    with_rna: int
    with_wsi: int
    bin_upper_months: list[float]

    @property
    def patients(self) -> int:
        return sum(self.splits.values())


@dataclass
class ImportReport:
    """Result of :func:`import_modaltune`: per-site counts and every human-readable note."""

    out_dir: Path
    sites: dict[str, SiteCounts]
    n_genes: int
    n_pathways: int
    n_family_genes: int
    feature_dim: int | None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (the CLI's ``--json`` output)."""
        return {
            "out_dir": str(self.out_dir),
            "sites": {s: {**asdict(c), "patients": c.patients} for s, c in self.sites.items()},
            "n_genes": self.n_genes,
            "n_pathways": self.n_pathways,
            "n_family_genes": self.n_family_genes,
            "feature_dim": self.feature_dim,
            "notes": list(self.notes),
        }

    def summary(self) -> str:
        """A few lines for a terminal: one per site, then the notes."""
        lines = [f"imported {sum(c.patients for c in self.sites.values())} patients into {self.out_dir} "
                 f"({self.n_genes} genes, {self.n_pathways} pathways, feature dim {self.feature_dim})"]
        for site, c in self.sites.items():
            split = "/".join(str(c.splits[s]) for s in fmt.SPLITS)
            lines.append(f"  {site}: {c.patients} patients (train/val/test {split}), {c.slides} slides, "
                         f"{c.events} events, rare {c.rare}, with RNA {c.with_rna}, with WSI {c.with_wsi}")
        lines.extend(f"  note: {n}" for n in self.notes)
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- splits
def _site_folders(splits_dir: Path, sites: Sequence[str] | str | None, notes: list[str]) -> dict[str, Path]:
    """Map each site to import (upper case, in :data:`ALL_SITES` order) to its ``tcga_<site>`` folder."""
    if not splits_dir.is_dir():
        raise CohortImportError(f"{splits_dir} is not a directory; pass the release's dataset/json_splits folder "
                                "(it holds one tcga_<site> folder per site)")
    folders = {p.name[len(SITE_DIR_PREFIX):].upper(): p for p in sorted(splits_dir.iterdir())
               if p.is_dir() and p.name.lower().startswith(SITE_DIR_PREFIX)}
    valid = ", ".join(s.lower() for s in ALL_SITES)
    if sites is None:
        unknown = sorted(set(folders) - set(ALL_SITES))
        if unknown:
            notes.append(f"skipped folders {', '.join(folders[u].name for u in unknown)} (not one of the sites "
                         f"{valid}; tcga_pancancer is their union)")
        chosen = [s for s in ALL_SITES if s in folders]
        if not chosen:
            raise CohortImportError(f"{splits_dir}: no tcga_<site> folder of a known site (valid sites: {valid}); "
                                    "pass the release's dataset/json_splits folder")
        return {s: folders[s] for s in chosen}
    names = [s for s in (sites.split(",") if isinstance(sites, str) else sites) if s.strip()]
    requested = []
    for name in names:
        key = name.strip().upper()
        if key not in ALL_SITES:
            raise CohortImportError(f"unknown site {name!r}; valid sites: {valid}")
        if key not in folders:
            raise CohortImportError(f"{splits_dir}: no folder {SITE_DIR_PREFIX}{key.lower()} for site {key}; "
                                    f"found {', '.join(p.name for p in folders.values()) or 'none'}")
        requested.append(key)
    return {s: folders[s] for s in ALL_SITES if s in requested}


def _raw_text(value: Any) -> str:
    """A record value as the raw string patients.csv stores: missing/NaN -> "", 62.0 -> "62"."""
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def _show(value: Any) -> str:
    """A value for an error message: strings quoted, numbers plain (no numpy reprs), NaN as NaN."""
    return repr(value) if isinstance(value, str) else _raw_text(value) or "NaN"


def _who(row: pd.Series) -> str:
    patient = _raw_text(row.get(PATIENT_ID))
    slide = _raw_text(row.get(SLIDE_ID))
    if patient and slide:
        return f"patient {patient} (slide {slide})"
    return f"patient {patient}" if patient else f"slide {slide}" if slide else f"record {row.name}"


def _read_split_file(path: Path, site: str, split: str) -> pd.DataFrame:
    """One split file as a slide-record table with validated, converted patient fields.

    Adds ``_site``, ``_split`` and ``_file``; numeric fields become int (float for ``durations``),
    text fields raw strings ("" where missing).
    """
    if not path.is_file():
        expected = ", ".join(SPLIT_FILE.format(split=s, site=path.parent.name[len(SITE_DIR_PREFIX):]) for s in fmt.SPLITS)
        raise CohortImportError(f"{path} is missing; a site folder needs the three split files ({expected})")
    try:
        doc = json.loads(path.read_text())  # accepts the release's bare NaN tokens
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CohortImportError(f"{path}: not readable as JSON ({err}); re-download the split file") from err
    if not isinstance(doc, dict) or not isinstance(doc.get("data"), list):
        raise CohortImportError(f"{path}: expected a JSON object with a top-level 'data' list of slide records "
                                "(the ModalTune split layout)")
    bad = next((i for i, r in enumerate(doc["data"]) if not isinstance(r, dict)), None)
    if bad is not None:
        raise CohortImportError(f"{path}: data[{bad}] is not a record (JSON object); every entry describes one slide")
    df = pd.DataFrame.from_records(doc["data"])
    for col in REQUIRED_FIELDS + PATIENT_FIELDS + ("features_path",):
        if col not in df.columns:
            df[col] = np.nan
    for col in (PATIENT_ID, SLIDE_ID, "case_id") + TEXT_FIELDS + ("features_path",):
        df[col] = df[col].map(_raw_text).astype(object)
    for col in REQUIRED_FIELDS:
        missing = df[col].isna() | (df[col].astype(str) == "")
        if missing.any():
            raise CohortImportError(f"{path}: {_who(df[missing].iloc[0])} has no {col!r} (missing or NaN); {_FIX[col]}")
    checks = {
        "vital_status": (lambda v: v.isin([0, 1]), "must be 0 or 1"),
        "durations": (lambda v: np.isfinite(v) & (v >= 0), "must be a finite, non-negative number of months"),
        "primary_class": (lambda v: (v == np.round(v)) & (v >= fmt.RARE_LABEL), "must be an integer >= -1"),
        "gene_availability": (lambda v: v.isin([0, 1]), "must be 0 or 1"),
    }
    for col, (is_ok, expectation) in checks.items():
        values = pd.to_numeric(df[col], errors="coerce").astype(float)
        bad_rows = ~is_ok(values).fillna(False).astype(bool)
        if bad_rows.any():
            row = df[bad_rows].iloc[0]
            raise CohortImportError(f"{path}: {_who(row)} has {col} = {_show(row[col])}, which {expectation}; {_FIX[col]}")
        df[col] = values if col == "durations" else values.astype(int)
    unsafe = ~df[SLIDE_ID].str.match(_SAFE_SLIDE_ID)
    if unsafe.any():
        raise CohortImportError(f"{path}: {_who(df[unsafe].iloc[0])} has a slide id that is not a plain file name "
                                "(letters, digits, '.', '_', '-'); fix slide_submitter_id")
    df["_site"], df["_split"], df["_file"] = site, split, str(path)
    return df


def _check_identity(records: pd.DataFrame, notes: list[str]) -> pd.DataFrame:
    """Refuse patients in two files and slides under two patients; drop repeated slide records."""
    files = records.groupby(PATIENT_ID, sort=False)["_file"].unique()
    multi = files[files.map(len) > 1]
    if len(multi):
        raise CohortImportError(f"patient {multi.index[0]} appears in {' and '.join(multi.iloc[0])}; a patient belongs to "
                                "exactly one split of one site — remove its records from all but one file")
    owners = records.groupby(SLIDE_ID, sort=False)[PATIENT_ID].unique()
    shared = owners[owners.map(len) > 1]
    if len(shared):
        slide = shared.index[0]
        where = records.loc[records[SLIDE_ID] == slide, "_file"].iloc[0]
        raise CohortImportError(f"{where}: slide {slide} is listed under patients {' and '.join(shared.iloc[0])}; "
                                "a slide belongs to one patient — fix the case_submitter_id of its records")
    repeated = records[SLIDE_ID].duplicated()
    if repeated.any():
        first = records[repeated].iloc[0]
        notes.append(f"{int(repeated.sum())} repeated slide records dropped (kept the first; e.g. slide {first[SLIDE_ID]} "
                     f"in {first['_file']})")
    return records[~repeated].reset_index(drop=True)


def _check_patient_fields(records: pd.DataFrame) -> None:
    """Every slide record of a patient must carry the same patient-level values."""
    distinct = records.groupby(PATIENT_ID, sort=False)[list(PATIENT_FIELDS)].nunique(dropna=False)
    conflict = distinct.gt(1)
    if conflict.to_numpy().any():
        patient = conflict.any(axis=1).idxmax()
        col = conflict.loc[patient].idxmax()
        rows = records[records[PATIENT_ID] == patient]
        values = ", ".join(_show(v) for v in pd.unique(rows[col]))
        raise CohortImportError(f"{rows['_file'].iloc[0]}: patient {patient} has conflicting {col!r} across its slides "
                                f"({values}); every slide record of a patient must carry the same value — fix the records")


def _site_classes(site: str, patients: pd.DataFrame, notes: list[str]) -> dict[str, str]:
    """``{"0": "<diagnosis names of class 0, '; '-joined>", ...}`` from Table 4, checked against the records."""
    info = site_info(site)
    rows = patients[patients["_site"] == site]
    too_big = rows["primary_class"] >= info.n_classes
    if too_big.any():
        row = rows[too_big].iloc[0]
        raise CohortImportError(f"{row['_file']}: patient {row[PATIENT_ID]} has primary_class {row['primary_class']} but "
                                f"site {site} has classes 0..{info.n_classes - 1} (Table 4) and -1 for the rare set; "
                                "fix the record")
    known = {k: {n.lower() for n in names} for k, names in enumerate(info.class_names)}
    labelled = rows[rows["primary_class"] >= 0]
    off = [(r.primary_diagnosis, r.primary_class) for r in labelled.itertuples()
           if r.primary_diagnosis.lower() not in known[r.primary_class]]
    if off:
        notes.append(f"{site}: {len(off)} patients have a primary_diagnosis outside Table 4's names for their class "
                     f"(e.g. {off[0][0]!r} in class {off[0][1]}); labels kept as in the split files")
    return {str(k): "; ".join(names) for k, names in enumerate(info.class_names)}


def _site_bins(site: str, patients: pd.DataFrame, notes: list[str]) -> list[float]:
    """Quartile edges of survival months over all of ``site``'s patients in the split files (Table 5)."""
    months = patients.loc[patients["_site"] == site, "durations"].to_numpy()
    if months.size == 0:
        raise CohortImportError(f"site {site}: its split files hold no slide record; import it with data or leave it "
                                "out with --sites")
    edges = fmt.quartile_edges(months)
    published = np.asarray(site_info(site).bin_upper_months)
    if np.any(np.abs(np.asarray(edges) - published) > 1.0):
        notes.append(f"{site}: bin edges from the split files {[round(e, 2) for e in edges]} differ from Table 5 "
                     f"{published.tolist()} by more than a month")
    return edges


# ---------------------------------------------------------------------------------------------- RNA
_CSV_ERRORS = (UnicodeDecodeError, csv.Error, pd.errors.ParserError, pd.errors.EmptyDataError)


def _unreadable_csv(path: Path, option: str, err: Exception) -> CohortImportError:
    """The error for a file that is no text CSV at all (binary, another encoding, empty, unparseable)."""
    return CohortImportError(f"{path}: not a readable CSV ({type(err).__name__}: {err}); {option} takes a UTF-8 "
                             "CSV file")


def _read_rna_csv(path: Path, notes: list[str]) -> pd.DataFrame:
    """One expression CSV as float32 ``[patients, genes]`` indexed by TCGA patient barcode.

    The id column is ``case_id`` if present, else the first column (SurvPath leaves its header
    empty). Gene columns lose a trailing ``_rnaseq``; sample barcodes (``TCGA-AB-1234-01``) are cut
    to the patient barcode. Duplicate genes or patients, non-numeric and empty cells are errors.
    """
    if not path.is_file():
        raise CohortImportError(f"{path}: expression CSV not found (--rna)")
    try:
        with path.open(newline="") as f:
            header = [h.strip() for h in next(csv.reader(f), [])]
        if len(header) < 2:
            raise CohortImportError(f"{path}: expected a patient id column then one column per gene "
                                    "(rna_clean.csv layout)")
        # Only an empty cell is missing: text such as "NA" or "n/a" is reported as the non-number it is.
        df = pd.read_csv(path, low_memory=False, keep_default_na=False, na_values=[""])
    except _CSV_ERRORS as err:
        raise _unreadable_csv(path, "--rna", err) from err
    id_pos = header.index("case_id") if "case_id" in header else 0
    if df.shape[1] != len(header):
        raise CohortImportError(f"{path}: rows have {df.shape[1]} fields but the header {len(header)}; "
                                "write the file without a separate index column")
    genes = [h[: -len(RNA_SUFFIX)] if h.endswith(RNA_SUFFIX) else h for i, h in enumerate(header) if i != id_pos]
    dup = pd.Index(genes)[pd.Index(genes).duplicated()]
    if len(dup):
        raise CohortImportError(f"{path}: gene {dup[0]!r} has more than one column; keep one column per gene")
    if any(not g for g in genes):
        raise CohortImportError(f"{path}: a gene column has an empty header; name every gene column")
    ids = df.iloc[:, id_pos].map(_raw_text)
    if (ids == "").any():
        row = int(np.flatnonzero((ids == "").to_numpy())[0]) + 2
        raise CohortImportError(f"{path}: line {row} has no patient id in column {header[id_pos] or 1}; "
                                "every row needs the patient's TCGA barcode")
    patients = ids.str.replace(_TCGA_PATIENT, r"\1", regex=True)
    cut = int((patients != ids).sum())
    if cut:
        notes.append(f"{path}: {cut} sample barcodes cut to the 12-character patient barcode (e.g. "
                     f"{ids[patients != ids].iloc[0]} -> {patients[patients != ids].iloc[0]})")
    repeated = patients[patients.duplicated()]
    if len(repeated):
        raise CohortImportError(f"{path}: patient {repeated.iloc[0]} has more than one row; keep one expression row "
                                "per patient (e.g. the primary tumour sample)")
    raw = df.drop(columns=df.columns[id_pos])
    raw.columns = genes
    raw.index = pd.Index(patients, name="case_id")
    text = [g for g in genes if not pd.api.types.is_numeric_dtype(raw[g])]
    numeric = raw.copy()
    if text:
        numeric[text] = raw[text].apply(pd.to_numeric, errors="coerce")
    values = numeric.to_numpy(dtype=np.float64)
    bad = ~np.isfinite(values)
    if bad.any():
        r, c = np.argwhere(bad)[0]
        cell = raw.iat[r, c]
        what = "is missing (empty or NaN)" if pd.isna(cell) else f"is {_show(cell)}, not a number"
        raise CohortImportError(f"{path}: the value for patient {patients.iloc[r]}, gene {genes[c]} {what}; "
                                "expression must be finite numbers and nothing is imputed — fix the CSV")
    return pd.DataFrame(values.astype(np.float32), index=raw.index, columns=genes)


def _read_rna(paths: Sequence[Path], notes: list[str]) -> pd.DataFrame | None:
    """All ``--rna`` files stacked on the genes they share (first file's order); None without any."""
    if not paths:
        return None
    frames = [_read_rna_csv(p, notes) for p in paths]
    shared = set(frames[0].columns).intersection(*(f.columns for f in frames[1:]))
    genes = [g for g in frames[0].columns if g in shared]
    for path, frame in zip(paths, frames):
        lost = [g for g in frame.columns if g not in shared]
        if lost:
            notes.append(f"{path}: {len(lost)} genes absent from another --rna file dropped (e.g. {', '.join(lost[:3])})")
    owner: dict[str, Path] = {}
    for path, frame in zip(paths, frames):
        clash = frame.index.intersection(list(owner))
        if len(clash):
            raise CohortImportError(f"patient {clash[0]} has expression rows in both {owner[clash[0]]} and {path}; "
                                    "give each patient's expression once")
        owner.update(dict.fromkeys(frame.index, path))
    return pd.concat([f[genes] for f in frames])


# ---------------------------------------------------------------------------------------------- pathways, families
def _read_pathways(path: Path) -> pd.DataFrame:
    """combine_comps.csv layout as an int ``[genes, pathways]`` 0/1 table indexed by gene."""
    if not path.is_file():
        raise CohortImportError(f"{path}: pathway file not found (--pathways)")
    try:
        df = pd.read_csv(path, keep_default_na=False, na_values=[""])  # a gene may be called "NA"
    except _CSV_ERRORS as err:
        raise _unreadable_csv(path, "--pathways", err) from err
    gene_col = "gene" if "gene" in df.columns else df.columns[0]
    leading = list(df.columns[: list(df.columns).index(gene_col)])
    if any(not str(c).startswith("Unnamed:") for c in leading):
        raise CohortImportError(f"{path}: expected column 'gene' first, then one 0/1 column per pathway")
    genes = df[gene_col].map(_raw_text)
    if (genes == "").any() or genes.duplicated().any():
        gene = genes[genes.duplicated()].iloc[0] if genes.duplicated().any() else "(empty)"
        raise CohortImportError(f"{path}: gene {gene} has more than one row or no name; keep one row per gene")
    members = df.drop(columns=leading + [gene_col]).apply(pd.to_numeric, errors="coerce")
    ok = members.isin([0, 1]).to_numpy()
    if not ok.all():
        r, c = np.argwhere(~ok)[0]
        raise CohortImportError(f"{path}: gene {genes.iloc[r]}, pathway {members.columns[c]} has "
                                f"{_show(df[members.columns[c]].iloc[r])}; membership must be 0 or 1")
    members.index = pd.Index(genes, name="gene")
    return members.astype(np.int8)


def _select_genes(rna: pd.DataFrame | None, pathways: pd.DataFrame | None, notes: list[str]) -> tuple[list[str], pd.DataFrame]:
    """The cohort's genes (expression order) and their pathway membership, after dropping what can't be used."""
    if rna is None:
        if pathways is not None:
            notes.append("no --rna given: the pathway file is not used (0 genes, 0 pathways)")
        return [], pd.DataFrame(index=pd.Index([], name="gene"))
    if pathways is None:
        notes.append("no --pathways given: the cohort has no pathway grouping (0 pathways)")
        return list(rna.columns), pd.DataFrame(index=pd.Index(rna.columns, name="gene"))
    in_file = rna.columns.isin(pathways.index)
    lost = rna.columns[~in_file]
    if len(lost):
        notes.append(f"{len(lost)} expression genes absent from the pathway file dropped (e.g. {', '.join(lost[:3])})")
    genes = list(rna.columns[in_file])
    if not genes:
        raise CohortImportError("no gene of the --rna files is in the --pathways file; check that both use gene symbols")
    unused = pathways.index[~pathways.index.isin(genes)]
    if len(unused):
        notes.append(f"{len(unused)} pathway-file genes have no expression column and are not used "
                     f"(e.g. {', '.join(unused[:3])})")
    members = pathways.loc[genes]
    empty = members.columns[members.sum(axis=0).to_numpy() == 0]
    if len(empty):
        notes.append(f"{len(empty)} pathways left with no gene dropped (e.g. {', '.join(empty[:3])})")
    return genes, members.drop(columns=empty)


def _read_families(path: Path, genes: Sequence[str], notes: list[str]) -> pd.DataFrame:
    """Gene families as ``gene, family`` rows (family-major, cohort gene order), cohort genes only.

    Accepts MCAT's wide ``signatures.csv`` (one column per family, any letter case) and the long
    ``gene, family`` layout this format writes.
    """
    if not path.is_file():
        raise CohortImportError(f"{path}: gene family file not found (--families)")
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""])
    except _CSV_ERRORS as err:
        raise _unreadable_csv(path, "--families", err) from err
    lower = {str(c).strip().lower(): c for c in df.columns}
    if "gene" in lower and "family" in lower:
        pairs = df[[lower["gene"], lower["family"]]].set_axis(["gene", "family"], axis=1)
    else:
        pairs = df.melt(var_name="family", value_name="gene")
    pairs = pairs.dropna()
    pairs = pd.DataFrame({"gene": pairs["gene"].str.strip(), "family": pairs["family"].str.strip().str.lower()})
    pairs = pairs[pairs["gene"] != ""]
    unknown = sorted(set(pairs["family"]) - set(fmt.GENE_FAMILIES))
    if unknown:
        raise CohortImportError(f"{path}: unknown gene families {unknown}; valid (any letter case): "
                                f"{', '.join(fmt.GENE_FAMILIES)}")
    pairs = pairs.drop_duplicates()
    order = {g: i for i, g in enumerate(genes)}
    outside = sorted(set(pairs["gene"]) - set(order))
    if outside:
        notes.append(f"{len(outside)} gene-family genes not in the cohort dropped (e.g. {', '.join(outside[:3])})")
    kept = pairs[pairs["gene"].isin(order)].copy()
    kept["_f"] = kept["family"].map(fmt.GENE_FAMILIES.index)
    kept["_g"] = kept["gene"].map(order)
    return kept.sort_values(["_f", "_g"])[["gene", "family"]].reset_index(drop=True)


# ---------------------------------------------------------------------------------------------- features
class _FeatureIndex:
    """Every ``.h5``/``.pt`` file under a root, findable by slide id.

    A file answers to its stem and to its stem before the first '.', so ``TCGA-AB-1234-01Z-00-DX1.h5``,
    ``TCGA-AB-1234-01Z-00-DX1.<uuid>.h5`` (full .svs names) and the release's
    ``TCGA-AB-1234-01Z-00-DX1_featvec.pt`` (basename of ``features_path``) are all found.
    """

    def __init__(self, root: Path):
        if not root.is_dir():
            raise CohortImportError(f"{root}: --features-root is not a directory")
        self.root = root
        self.by_key: dict[str, set[Path]] = defaultdict(set)
        for path in root.rglob("*"):
            if path.suffix in FEATURE_SUFFIXES and path.is_file():
                self.by_key[path.stem].add(path)
                self.by_key[path.stem.split(".")[0]].add(path)

    def find(self, slide_id: str, features_path: str) -> Path | None:
        """The feature file of a slide (``.h5`` preferred over ``.pt``); several candidates are an error."""
        keys = [slide_id]
        if features_path:
            pure = PureWindowsPath(features_path) if "\\" in features_path else PurePosixPath(features_path)
            keys.append(pure.stem)
        found = set().union(*(self.by_key.get(k, set()) for k in keys))
        chosen = sorted(p for p in found if p.suffix == ".h5") or sorted(p for p in found if p.suffix == ".pt")
        if len(chosen) > 1:
            raise CohortImportError(f"slide {slide_id}: several feature files match ({', '.join(map(str, chosen))}); keep "
                                    f"one per slide under {self.root} or point --features-root at one extractor's output")
        return chosen[0] if chosen else None


def _h5_shape(path: Path) -> tuple[int, int]:
    """``(N, D)`` of a CLAM/TRIDENT .h5 after checking ``features [N, D]`` and ``coords [N, 2]``."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            if "features" not in f or "coords" not in f:
                raise CohortImportError(f"{path}: expected datasets 'features' and 'coords' (CLAM/TRIDENT layout), "
                                        f"found {sorted(f.keys())}; re-extract the slide")
            shape, coords = f["features"].shape, f["coords"].shape
    except OSError as err:
        raise CohortImportError(f"{path}: unreadable HDF5 file ({err}); re-extract the slide") from err
    if len(shape) != 2 or coords != (shape[0], 2):
        raise CohortImportError(f"{path}: features {shape} / coords {coords} are not [N, D] / [N, 2]; re-extract the slide")
    return int(shape[0]), int(shape[1])


def _load_pt(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """Features ``[N, D]`` (and coords ``[N, 2]`` if stored) of a ``.pt``: a tensor or a dict with those keys."""
    import torch

    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several unrelated types for a broken or unsafe file
        raise CohortImportError(f"{path}: unreadable .pt file ({type(err).__name__}: {err}); re-extract the slide") from err
    coords = None
    if isinstance(obj, dict):
        if "features" not in obj:
            raise CohortImportError(f"{path}: a dict .pt needs a 'features' entry, found {sorted(map(str, obj))}")
        obj, coords = obj["features"], obj.get("coords")
    if not isinstance(obj, torch.Tensor) or obj.ndim != 2:
        raise CohortImportError(f"{path}: features must be a 2-D tensor [N, D], got "
                                f"{tuple(obj.shape) if isinstance(obj, torch.Tensor) else type(obj).__name__}")
    feats = obj.float().numpy()
    if coords is not None:
        coords = torch.as_tensor(coords).numpy()
        if coords.shape != (feats.shape[0], 2):
            raise CohortImportError(f"{path}: coords {coords.shape} do not match features {feats.shape} (need [N, 2])")
    return feats, coords


def _attach_features(patients: pd.DataFrame, slide_paths: dict[str, str], root: Path, features_dir: Path,
                     notes: list[str]) -> int | None:
    """Link (.h5) or convert (.pt) every kept slide's features into ``features_dir``.

    Sets ``slide_ids`` to the slides found and ``has_wsi``; returns the common feature dim (None if
    no slide was found). Feature files are never copied: an .h5 becomes a symlink to the original.
    """
    index = _FeatureIndex(root)
    dim: tuple[int, Path] | None = None
    no_coords: list[str] = []
    found_ids: list[str] = []
    for slides in patients["_slides"]:
        found = []
        for slide in slides:
            source = index.find(slide, slide_paths.get(slide, ""))
            if source is None:
                continue
            target = features_dir / f"{slide}.h5"
            if source.suffix == ".h5":
                d = _h5_shape(source)[1]
                os.symlink(source.resolve(), target)
            else:
                feats, coords = _load_pt(source)
                d = feats.shape[1]
                if coords is None:
                    no_coords.append(slide)
                    coords = np.zeros((feats.shape[0], 2), dtype=np.int64)
            if dim is None:
                dim = (d, source)
            elif d != dim[0]:
                raise CohortImportError(f"{source}: feature dim {d} differs from {dim[0]} of {dim[1]}; every slide must "
                                        "be extracted with the same tile encoder")
            if source.suffix == ".pt":
                fmt.write_features_h5(target, feats, coords)
            found.append(slide)
        found_ids.append(";".join(found))
    n_listed = patients["_slides"].map(len)
    n_found = pd.Series([len(s.split(";")) if s else 0 for s in found_ids], index=patients.index)
    patients["slide_ids"] = found_ids
    patients["has_wsi"] = (n_found > 0).astype(int)
    for site, rows in patients.groupby("_site", sort=False):
        partial = rows[(n_found[rows.index] > 0) & (n_found[rows.index] < n_listed[rows.index])]
        none = rows[n_found[rows.index] == 0]
        if len(partial):
            notes.append(f"{site}: {len(partial)} patients have features for only some of their slides; the found slides "
                         f"are kept (e.g. {partial[PATIENT_ID].iloc[0]})")
        if len(none):
            notes.append(f"{site}: {len(none)} patients have no feature file for any slide (has_wsi = 0; "
                         f"e.g. {none[PATIENT_ID].iloc[0]})")
    if no_coords:
        notes.append(f"{len(no_coords)} slides came from bare-tensor .pt files without coordinates; their coords are "
                     f"written as 0 (e.g. {no_coords[0]}), so positional models see no layout for them")
    return None if dim is None else dim[0]


# ---------------------------------------------------------------------------------------------- output
def _refuse_foreign(out_dir: Path) -> None:
    if out_dir.exists() and (not out_dir.is_dir() or (any(out_dir.iterdir()) and not (out_dir / fmt.MANIFEST).is_file())):
        raise CohortImportError(f"{out_dir} exists and is neither empty nor a cohort (no {fmt.MANIFEST}); refusing to "
                                "overwrite it — choose another --out or empty it")


def _publish(tmp: Path, out_dir: Path) -> None:
    """Rename the finished ``tmp`` onto ``out_dir``, replacing an empty dir or an earlier cohort.

    Temporary files and directories are created private (0600/0700); the published cohort gets the
    ordinary umask-derived modes instead. Symlinks are left alone.
    """
    _refuse_foreign(out_dir)
    mask = os.umask(0o022)
    os.umask(mask)
    for path in [tmp, *tmp.rglob("*")]:
        if not path.is_symlink():
            os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~mask)
    old = None
    if out_dir.exists():
        old = out_dir.with_name(f".{out_dir.name}.old-{uuid.uuid4().hex[:8]}")
        os.replace(out_dir, old)
    os.replace(tmp, out_dir)
    if old is not None:
        shutil.rmtree(old)  # removes symlinks, never their targets


def _patient_rows(records: pd.DataFrame) -> pd.DataFrame:
    """One row per patient (file order) with its slide list, from validated slide records."""
    first = records.drop_duplicates(PATIENT_ID).reset_index(drop=True)
    slides = records.groupby(PATIENT_ID, sort=False)[SLIDE_ID].agg(list)
    first["_slides"] = first[PATIENT_ID].map(slides)
    return first


def import_modaltune(
    splits_dir: str | Path,
    out_dir: str | Path,
    *,
    sites: Sequence[str] | str | None = None,
    features_root: str | Path | None = None,
    rna_csvs: Sequence[str | Path] = (),
    pathways_csv: str | Path | None = None,
    families_csv: str | Path | None = None,
    all_patients: bool = False,
) -> ImportReport:
    """Import the ModalTune release's split files (and optional RNA, pathways, families, features) as a cohort.

    ``splits_dir`` holds ``tcga_<site>`` folders (the release's ``dataset/json_splits``); ``sites``
    restricts which are read (default: every folder of a known site; other folders such as
    ``tcga_pancancer`` are skipped with a note). ``features_root`` is searched recursively for each
    slide's ``.h5``/``.pt``; ``rna_csvs`` are SurvPath ``rna_clean.csv``-style tables (several, e.g. one
    per site); ``pathways_csv`` a ``combine_comps.csv``-style table; ``families_csv`` MCAT's
    ``signatures.csv`` or a long ``gene,family`` table. Without ``all_patients`` only patients with
    ``gene_availability == 1`` are kept. Everything is written into a temporary directory next to
    ``out_dir`` and renamed onto it at the end; an existing ``out_dir`` must be empty or a cohort.
    Raises :class:`CohortImportError` naming the file, patient and field of the first problem.
    """
    splits_dir, out_dir = Path(splits_dir), Path(out_dir)
    rna_paths = [Path(p) for p in ([rna_csvs] if isinstance(rna_csvs, (str, Path)) else rna_csvs)]
    _refuse_foreign(out_dir)
    notes: list[str] = []

    folders = _site_folders(splits_dir, sites, notes)
    records = pd.concat([_read_split_file(folder / SPLIT_FILE.format(split=split, site=folder.name[len(SITE_DIR_PREFIX):]),
                                          site, split)
                         for site, folder in folders.items() for split in fmt.SPLITS], ignore_index=True)
    records = _check_identity(records, notes)
    _check_patient_fields(records)
    slide_paths = dict(zip(records[SLIDE_ID], records["features_path"]))
    everyone = _patient_rows(records)

    site_meta = {site: {"classes": _site_classes(site, everyone, notes),
                        "bin_upper_months": _site_bins(site, everyone, notes)} for site in folders}
    keep = (everyone["gene_availability"] == 1) | all_patients
    excluded = everyone.loc[~keep, "_site"].value_counts()
    if len(excluded):
        notes.append(f"{int(excluded.sum())} patients with gene_availability = 0 excluded "
                     f"({', '.join(f'{s} {n}' for s, n in excluded.items())}); all_patients / --all-patients keeps them")
    patients = everyone[keep].reset_index(drop=True)

    rna = _read_rna(rna_paths, notes)
    pathways = _read_pathways(Path(pathways_csv)) if pathways_csv is not None else None
    genes, membership = _select_genes(rna, pathways, notes)
    if rna is not None:
        outside = rna.index[~rna.index.isin(patients[PATIENT_ID])]
        if len(outside):
            notes.append(f"{len(outside)} expression rows for patients not in the imported cohort dropped "
                         f"(e.g. {', '.join(outside[:3])})")
        patients["has_rna"] = patients[PATIENT_ID].isin(rna.index).astype(int)
        for site, rows in patients[patients["has_rna"] == 0].groupby("_site", sort=False):
            notes.append(f"{site}: {len(rows)} patients have no expression row (has_rna = 0; e.g. {rows[PATIENT_ID].iloc[0]})")
    else:
        patients["has_rna"] = 0
    families = (_read_families(Path(families_csv), genes, notes) if families_csv is not None
                else pd.DataFrame(columns=["gene", "family"]))

    patients["survival_bin"] = 0
    for site, meta in site_meta.items():
        rows = patients["_site"] == site
        patients.loc[rows, "survival_bin"] = fmt.survival_bin(patients.loc[rows, "durations"], meta["bin_upper_months"])
    patients["slide_ids"] = patients["_slides"].map(";".join)
    patients["has_wsi"] = 0

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.import-", dir=out_dir.parent))
    try:
        (tmp / fmt.FEATURES_DIR).mkdir()
        feature_dim = None
        if features_root is not None:
            feature_dim = _attach_features(patients, slide_paths, Path(features_root), tmp / fmt.FEATURES_DIR, notes)
        table = pd.DataFrame({
            "case_id": patients[PATIENT_ID],
            "site": patients["_site"],
            "split": patients["_split"],
            "label": patients["primary_class"],
            "primary_diagnosis": patients["primary_diagnosis"],
            "survival_months": patients["durations"],
            "event": patients["vital_status"],
            "survival_bin": patients["survival_bin"],
            "age": patients["age_at_index"],
            "stage": patients["ajcc_pathologic_stage"],
            "t": patients["ajcc_pathologic_t"],
            "n": patients["ajcc_pathologic_n"],
            "m": patients["ajcc_pathologic_m"],
            "slide_ids": patients["slide_ids"],
            "has_rna": patients["has_rna"],
            "has_wsi": patients["has_wsi"],
            "case_uuid": patients["case_id"],
        }, columns=list(fmt.PATIENT_COLUMNS + EXTRA_COLUMNS))
        fmt.write_atomic(tmp / fmt.PATIENTS, lambda p: table.to_csv(p, index=False))
        if rna is not None:
            expr = rna.loc[table.loc[table["has_rna"] == 1, "case_id"], genes].reset_index()
            fmt.write_atomic(tmp / fmt.RNA, lambda p: expr.to_parquet(p, index=False))
        fmt.write_atomic(tmp / fmt.PATHWAYS, lambda p: membership.reset_index().to_csv(p, index=False))
        fmt.write_atomic(tmp / fmt.FAMILIES, lambda p: families.to_csv(p, index=False))
        source_paths = {
            "splits": str(splits_dir.resolve()),
            "features_root": None if features_root is None else str(Path(features_root).resolve()),
            "rna": [str(p.resolve()) for p in rna_paths],
            "pathways": None if pathways_csv is None else str(Path(pathways_csv).resolve()),
            "families": None if families_csv is None else str(Path(families_csv).resolve()),
        }
        fmt.write_json(tmp / fmt.MANIFEST, fmt.manifest(
            name=MANIFEST_NAME,
            provenance={"kind": "imported", "importer": __name__, "source_paths": source_paths,
                        "all_patients": bool(all_patients)},
            sites=site_meta, feature_dim=feature_dim, genes=genes, n_pathways=membership.shape[1]))
        _publish(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise

    counts = {}
    for site in folders:
        rows = patients[patients["_site"] == site]
        counts[site] = SiteCounts(
            records=int((records["_site"] == site).sum()),
            patients_in_files=int((everyone["_site"] == site).sum()),
            excluded_no_expression=int(excluded.get(site, 0)),
            splits={s: int((rows["_split"] == s).sum()) for s in fmt.SPLITS},
            rare=int((rows["primary_class"] == fmt.RARE_LABEL).sum()),
            events=int((rows["vital_status"] == 1).sum()),
            censored=int((rows["vital_status"] == 0).sum()),
            slides=int(rows["slide_ids"].map(lambda s: len(s.split(";")) if s else 0).sum()),
            with_rna=int(rows["has_rna"].sum()),
            with_wsi=int(rows["has_wsi"].sum()),
            bin_upper_months=list(site_meta[site]["bin_upper_months"]),
        )
    report = ImportReport(out_dir=out_dir, sites=counts, n_genes=len(genes), n_pathways=int(membership.shape[1]),
                          n_family_genes=int(families["gene"].nunique()), feature_dim=feature_dim, notes=notes)
    for note in notes:
        log.info("import note: %s", note)
    return report
