"""Import the ModalTune code release's split files (+ SurvPath expression and pathway tables) as a cohort.

The ModalTune release files this reads, and the facts about them this module relies on (facts only,
no code taken from the repository; the expression, pathway and gene-family tables are read by
:mod:`bench.data.importers.survpath` and :mod:`bench.data.importers.mcat`, which state theirs):

- ModalTune (ICCV 2025), github.com/martellab-sri/ModalTune,
  ``dataset/json_splits/tcga_<site>/{train,val,test}_<site>_cls_feat.json``: a JSON object whose
  top-level ``data`` list holds one record per *slide* (``data_utils/make_dataset.py`` dumps pandas
  records with :func:`json.dump`, so missing values are bare ``NaN`` tokens, which Python's
  :mod:`json` reads as ``float('nan')``). ``case_submitter_id`` is the TCGA patient barcode,
  ``case_id`` the GDC uuid, ``vital_status`` 1 = dead, ``durations`` months, ``primary_class`` -1 =
  rare set, ``gene_availability`` 1 when the patient has expression data. ``data_utils/datasets.py``
  bags all slides of a patient and joins expression on ``case_submitter_id``. The ``*_titan.json``
  variants and the ``tcga_pancancer`` folder (the union of the four in-domain sites) are not read.

Cohort rules (:mod:`bench.data.format`, paper Tables 1 and 5): a patient's case_id is its TCGA
barcode, its bag is all of its slides; by default only patients with ``gene_availability == 1`` are
kept (as Table 1 counts them); the four survival bins of a site are the quartiles of survival months
over *all* of the site's patients in the split files (this reproduces Table 5). Nothing is imputed:
every gene, pathway, patient or slide that is dropped or flagged is counted in
:attr:`ImportReport.notes`.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

import numpy as np
import pandas as pd

from bench.data import format as fmt
from bench.data.features import FEATURE_SUFFIXES, RASTER_WIDTH, open_feature_file
from bench.data.importers.clinical import clinical_columns, read_clinical
from bench.data.importers.mcat import read_families
from bench.data.importers.survpath import RNA_DUPLICATE_POLICIES, read_pathways, read_rna
from bench.data.importers.values import raw_text, show
from bench.data.publish import publish_cohort, refuse_foreign
from bench.errors import BenchError, CohortImportError
from models.paper.sites import ALL_SITES, site_info

log = logging.getLogger(__name__)

SITE_DIR_PREFIX = "tcga_"
SPLIT_FILE = "{split}_{site}_cls_feat.json"
PATIENT_ID = "case_submitter_id"
SLIDE_ID = "slide_submitter_id"
EXTRA_COLUMNS = ("case_uuid",)
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
_SAFE_SLIDE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


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


def _who(row: pd.Series) -> str:
    patient = raw_text(row.get(PATIENT_ID))
    slide = raw_text(row.get(SLIDE_ID))
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
        df[col] = df[col].map(raw_text).astype(object)
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
            raise CohortImportError(f"{path}: {_who(row)} has {col} = {show(row[col])}, which {expectation}; {_FIX[col]}")
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
        values = ", ".join(show(v) for v in pd.unique(rows[col]))
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


# ---------------------------------------------------------------------------------------------- genes
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
            d, converted, stored_coords = _read_source(source)
            if dim is None:
                dim = (d, source)
            elif d != dim[0]:
                raise CohortImportError(f"{source}: feature dim {d} differs from {dim[0]} of {dim[1]}; every slide must "
                                        "be extracted with the same tile encoder")
            if converted is None:
                os.symlink(source.resolve(), target)
            else:
                fmt.write_features_h5(target, *converted)
                if not stored_coords:
                    no_coords.append(slide)
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
        notes.append(f"{len(no_coords)} slides came from bare-tensor .pt files or .pt dicts without coordinates; their "
                     f"patches are placed in file order on a raster of {fmt.PATCH_SIZE_PX}-px tiles, "
                     f"{RASTER_WIDTH} per row, as runs place such a file (e.g. {no_coords[0]}), so positional models "
                     "see no tissue layout for them")
    return None if dim is None else dim[0]


def _read_source(source: Path) -> tuple[int, tuple[np.ndarray, np.ndarray] | None, bool]:
    """``(feature dim, (features, coords) to write, whether the file stores coords)`` of a source feature file.

    Checks that it holds features ``[N, D]`` and coords ``[N, 2]`` (a ``.pt`` may hold none; it then
    gets the raster :class:`~bench.data.features.FeatureFile` gives it at run time). An ``.h5`` is
    linked, not read, so it gives no arrays to write; a ``.pt`` is converted to the cohort's ``.h5``.
    """
    try:
        with open_feature_file(source) as slide:
            stored = slide.stored_coords()
            if len(slide.shape) != 2 or (stored is not None and stored.shape != (slide.shape[0], 2)):
                raise CohortImportError(f"{source}: features {slide.shape} / coords "
                                        f"{None if stored is None else stored.shape} are not [N, D] / [N, 2]; "
                                        "re-extract the slide")
            converted = None if source.suffix == ".h5" else (slide.rows(), slide.coords())
            return slide.shape[1], converted, stored is not None
    except CohortImportError:
        raise
    except BenchError as err:  # the feature reader's error, as the importer's type
        raise CohortImportError(str(err)) from err


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
    rna_duplicates: str = "error",
    clinical_csv: str | Path | None = None,
) -> ImportReport:
    """Import the ModalTune release's split files (and optional RNA, pathways, families, features) as a cohort.

    ``splits_dir`` holds ``tcga_<site>`` folders (the release's ``dataset/json_splits``); ``sites``
    restricts which are read (default: every folder of a known site; other folders such as
    ``tcga_pancancer`` are skipped with a note). ``features_root`` is searched recursively for each
    slide's ``.h5``/``.pt``; ``rna_csvs`` are SurvPath ``rna_clean.csv``-style tables (several, e.g. one
    per site); ``pathways_csv`` a ``combine_comps.csv``-style table; ``families_csv`` MCAT's
    ``signatures.csv`` or a long ``gene,family`` table. Without ``all_patients`` only patients with
    ``gene_availability == 1`` are kept. ``rna_duplicates`` (``error``, ``mean`` or ``first``) says
    what to do with a patient on several rows of one RNA file; the patients it resolved are named in
    the notes and in ``cohort.json``'s ``provenance.rna_duplicates``. ``clinical_csv`` adds the patients'
    treatment type and ER / PR / HER2 status (:mod:`bench.data.importers.clinical`, which states its
    rules: barcodes, values, duplicates, unlisted patients) as extra ``patients.csv`` columns; without
    it the cohort has none of them. The cohort is published by
    :func:`bench.data.publish.publish_cohort`: written into a private directory next to ``out_dir``,
    its content fingerprint stored in its ``cohort.json`` (which reads every linked feature file
    once), then renamed onto ``out_dir``, which must be absent, empty or an earlier cohort (replaced).
    Raises :class:`CohortImportError` naming the file, patient and field of the first problem
    (:class:`~bench.errors.CohortTargetError`, one of them, for an ``out_dir`` that is not a cohort).
    """
    splits_dir, out_dir = Path(splits_dir), Path(out_dir)
    rna_paths = [Path(p) for p in ([rna_csvs] if isinstance(rna_csvs, (str, Path)) else rna_csvs)]
    if rna_duplicates not in RNA_DUPLICATE_POLICIES:
        raise CohortImportError(f"unknown rna_duplicates policy {rna_duplicates!r}; valid: "
                                f"{', '.join(RNA_DUPLICATE_POLICIES)}")
    refuse_foreign(out_dir)  # before reading anything: the same check is repeated when publishing
    notes: list[str] = []
    clinical = read_clinical(Path(clinical_csv), notes) if clinical_csv is not None else None

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

    rna, rna_repeats = read_rna(rna_paths, notes, rna_duplicates)
    pathways = read_pathways(Path(pathways_csv)) if pathways_csv is not None else None
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
    families = (read_families(Path(families_csv), genes, notes) if families_csv is not None
                else pd.DataFrame(columns=["gene", "family"]))

    patients["survival_bin"] = 0
    for site, meta in site_meta.items():
        rows = patients["_site"] == site
        patients.loc[rows, "survival_bin"] = fmt.survival_bin(patients.loc[rows, "durations"], meta["bin_upper_months"])
    patients["slide_ids"] = patients["_slides"].map(";".join)
    patients["has_wsi"] = 0

    with publish_cohort(out_dir) as tmp:
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
        if clinical is not None:
            for column, values in clinical_columns(clinical, table["case_id"], table["site"], notes).items():
                table[column] = values
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
            "clinical": None if clinical_csv is None else str(Path(clinical_csv).resolve()),
        }
        provenance = {"kind": "imported", "importer": __name__, "source_paths": source_paths,
                      "all_patients": bool(all_patients)}
        if rna_paths:
            provenance["rna_duplicates"] = {"policy": rna_duplicates, "files": rna_repeats}
        fmt.write_json(tmp / fmt.MANIFEST, fmt.manifest(
            name=MANIFEST_NAME,
            provenance=provenance,
            sites=site_meta, feature_dim=feature_dim, genes=genes, n_pathways=membership.shape[1]))

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
