"""Readers of SurvPath's expression and pathway tables, the transcriptomics of an imported cohort.

Facts about the release files these read (facts only, no code taken from the repository):
SurvPath (Jaume et al., CVPR 2024), github.com/mahmoodlab/SurvPath:

- ``datasets_csv/raw_rna_data/<kind>/<site>/rna_clean.csv`` — an unnamed first column holding the
  12-character TCGA patient barcode, then one float column per gene (read there with
  ``index_col=0``); ModalTune's own expression CSVs name that first column ``case_id``. Some
  files hold a barcode on several rows (the COADREAD one does, with different values), so repeated
  rows are resolved only by an explicit policy (``--rna-duplicates``) and recorded.
- ``datasets_csv/pathway_compositions/combine_comps.csv`` — column ``gene`` then 331 pathway columns
  of 0/1 (the same layout as ModalTune's ``dataset/gene_pathway_processed_v2.csv``).

Nothing is imputed: a missing or non-numeric value is an error naming the file, patient and gene.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from bench.data.importers.values import raw_text, read_csv, read_header, show
from bench.errors import CohortImportError

RNA_SUFFIX = "_rnaseq"  # MCAT-style expression column suffix ("TP53_rnaseq")
# How repeated patient rows inside one --rna file are handled: refuse, average per gene, keep the first.
RNA_DUPLICATE_POLICIES = ("error", "mean", "first")
_TCGA_PATIENT = re.compile(r"^(TCGA-[A-Za-z0-9]{2}-[A-Za-z0-9]{4})-.+$")


def _read_rna_csv(path: Path, notes: list[str], duplicates: str = "error") -> tuple[pd.DataFrame, dict[str, int]]:
    """One expression CSV as float32 ``[patients, genes]`` indexed by TCGA patient barcode, plus the
    patients that had several rows (``{barcode: n_rows}``, file order).

    The id column is ``case_id`` if present, else the first column (SurvPath leaves its header
    empty). Gene columns lose a trailing ``_rnaseq``; sample barcodes (``TCGA-AB-1234-01``) are cut
    to the patient barcode. Duplicate genes, non-numeric and empty cells are errors; patients with
    several rows are resolved by ``duplicates`` (see :func:`_resolve_rna_duplicates`).
    """
    if not path.is_file():
        raise CohortImportError(f"{path}: expression CSV not found (--rna)")
    header = read_header(path, "--rna")
    if len(header) < 2:
        raise CohortImportError(f"{path}: expected a patient id column then one column per gene (rna_clean.csv layout)")
    id_pos = header.index("case_id") if "case_id" in header else 0
    # Only an empty cell is missing: text such as "NA" or "n/a" is reported as the non-number it is.
    df = read_csv(path, "--rna", low_memory=False, keep_default_na=False, na_values=[""])
    if df.shape[1] != len(header):
        raise CohortImportError(f"{path}: rows have {df.shape[1]} fields but the header {len(header)}; "
                                "write the file without a separate index column")
    genes = [h[: -len(RNA_SUFFIX)] if h.endswith(RNA_SUFFIX) else h for i, h in enumerate(header) if i != id_pos]
    dup = pd.Index(genes)[pd.Index(genes).duplicated()]
    if len(dup):
        raise CohortImportError(f"{path}: gene {dup[0]!r} has more than one column; keep one column per gene")
    if any(not g for g in genes):
        raise CohortImportError(f"{path}: a gene column has an empty header; name every gene column")
    ids = df.iloc[:, id_pos].map(raw_text)
    if (ids == "").any():
        row = int(np.flatnonzero((ids == "").to_numpy())[0]) + 2
        raise CohortImportError(f"{path}: line {row} has no patient id in column {header[id_pos] or 1}; "
                                "every row needs the patient's TCGA barcode")
    patients = ids.str.replace(_TCGA_PATIENT, r"\1", regex=True)
    cut = int((patients != ids).sum())
    if cut:
        notes.append(f"{path}: {cut} sample barcodes cut to the 12-character patient barcode (e.g. "
                     f"{ids[patients != ids].iloc[0]} -> {patients[patients != ids].iloc[0]})")
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
        what = "is missing (empty or NaN)" if pd.isna(cell) else f"is {show(cell)}, not a number"
        raise CohortImportError(f"{path}: the value for patient {patients.iloc[r]}, gene {genes[c]} {what}; "
                                "expression must be finite numbers and nothing is imputed — fix the CSV")
    frame, repeated = _resolve_rna_duplicates(path, pd.DataFrame(values, index=raw.index, columns=genes), duplicates,
                                              notes)
    return frame.astype(np.float32), repeated


def _resolve_rna_duplicates(path: Path, frame: pd.DataFrame, policy: str,
                            notes: list[str]) -> tuple[pd.DataFrame, dict[str, int]]:
    """One row per patient from a float64 expression table whose index may repeat a barcode.

    Some release files (SurvPath's COADREAD ``rna_clean.csv``) list a patient on several rows with
    different values, and no rule in the file says which row is right, so nothing is chosen
    silently: ``error`` refuses the file, naming every repeated patient at once; ``mean`` averages a
    patient's rows per gene; ``first`` keeps its first row in file order. Rows with identical values
    are treated the same (they are only marked as identical). Returns the table (first-appearance
    order) and ``{barcode: n_rows}`` of the repeated patients, which the caller records.
    """
    repeated_rows = frame.index.duplicated(keep=False)
    if not repeated_rows.any():
        return frame, {}
    values = frame.to_numpy()
    described, counts = [], {}
    for barcode in pd.unique(frame.index[repeated_rows]):
        rows = np.flatnonzero(frame.index == barcode)
        counts[str(barcode)] = len(rows)
        same = bool((values[rows] == values[rows[0]]).all())
        described.append(f"{barcode} ({len(rows)} rows{', identical' if same else ''}"
                         f"; lines {', '.join(str(r + 2) for r in rows)})")
    if policy == "error":
        raise CohortImportError(
            f"{path}: {len(counts)} patients have more than one expression row: {'; '.join(described)}. Keep one "
            "row per patient in the CSV (e.g. the primary tumour sample), or choose explicitly: --rna-duplicates mean "
            "averages each patient's rows per gene, --rna-duplicates first keeps its first row in file order "
            "(import_modaltune(rna_duplicates=...) from Python)")
    if policy == "mean":
        frame, action = frame.groupby(level=0, sort=False).mean(), "averaged per gene"
    else:
        frame, action = frame[~frame.index.duplicated(keep="first")], "reduced to the first row in file order"
    notes.append(f"{path}: {len(counts)} patients with several expression rows {action} (--rna-duplicates {policy}): "
                 f"{'; '.join(described)}")
    return frame, counts


def read_rna(paths: Sequence[Path], notes: list[str],
              duplicates: str = "error") -> tuple[pd.DataFrame | None, dict[str, dict[str, int]]]:
    """All ``--rna`` files stacked on the genes they share (first file's order), None without any; plus
    ``{file: {barcode: n_rows}}`` for the files whose repeated patient rows ``duplicates`` resolved.

    A patient in two files is always an error, whatever ``duplicates`` says: the files are separate
    sources (one per site), so a shared barcode means overlapping or repeated --rna arguments, not
    a resolvable repeat.
    """
    if not paths:
        return None, {}
    read = [_read_rna_csv(p, notes, duplicates) for p in paths]
    frames = [frame for frame, _ in read]
    repeated = {str(p.resolve()): counts for p, (_, counts) in zip(paths, read) if counts}
    shared = set(frames[0].columns).intersection(*(f.columns for f in frames[1:]))
    genes = [g for g in frames[0].columns if g in shared]
    for path, frame in zip(paths, frames):
        lost = [g for g in frame.columns if g not in shared]
        if lost:
            notes.append(f"{path}: {len(lost)} genes absent from another --rna file dropped (e.g. {', '.join(lost[:3])})")
    _refuse_shared_patients(paths, frames)
    return pd.concat([f[genes] for f in frames]), repeated


def _refuse_shared_patients(paths: Sequence[Path], frames: Sequence[pd.DataFrame]) -> None:
    """Name, in one error, every patient that has expression rows in more than one ``--rna`` file."""
    owners: dict[str, list[str]] = defaultdict(list)
    for path, frame in zip(paths, frames):
        for barcode in frame.index:
            owners[barcode].append(str(path))
    shared = {b: files for b, files in owners.items() if len(files) > 1}
    if shared:
        listed = "; ".join(f"{b} ({' and '.join(files)})" for b, files in shared.items())
        raise CohortImportError(f"{len(shared)} patients have expression rows in more than one --rna file: {listed}. "
                                "Each patient's expression must come from one file (--rna-duplicates only resolves "
                                "repeated rows inside one file); pass each site's file once and remove the patients "
                                "from all but one file")


def read_pathways(path: Path) -> pd.DataFrame:
    """combine_comps.csv layout as an int ``[genes, pathways]`` 0/1 table indexed by gene."""
    if not path.is_file():
        raise CohortImportError(f"{path}: pathway file not found (--pathways)")
    df = read_csv(path, "--pathways", keep_default_na=False, na_values=[""])  # a gene may be called "NA"
    gene_col = "gene" if "gene" in df.columns else df.columns[0]
    leading = list(df.columns[: list(df.columns).index(gene_col)])
    if any(not str(c).startswith("Unnamed:") for c in leading):
        raise CohortImportError(f"{path}: expected column 'gene' first, then one 0/1 column per pathway")
    genes = df[gene_col].map(raw_text)
    if (genes == "").any() or genes.duplicated().any():
        gene = genes[genes.duplicated()].iloc[0] if genes.duplicated().any() else "(empty)"
        raise CohortImportError(f"{path}: gene {gene} has more than one row or no name; keep one row per gene")
    members = df.drop(columns=leading + [gene_col]).apply(pd.to_numeric, errors="coerce")
    ok = members.isin([0, 1]).to_numpy()
    if not ok.all():
        r, c = np.argwhere(~ok)[0]
        raise CohortImportError(f"{path}: gene {genes.iloc[r]}, pathway {members.columns[c]} has "
                                f"{show(df[members.columns[c]].iloc[r])}; membership must be 0 or 1")
    members.index = pd.Index(genes, name="gene")
    return members.astype(np.int8)
