"""Read the optional clinical table of an import (``data import modaltune --clinical CSV``).

The ModalTune release's split files carry age and AJCC staging but not the treatment type or the
hormone-receptor status that "ModalTune w/ Clinical" reads at BRCA (the paper's Table 10). They come
from a CSV, one row per patient:

- the patient column ``case_submitter_id`` (or ``case_id``) holds TCGA patient barcodes
  (``TCGA-XX-XXXX``, 12 characters). Longer barcodes (sample or aliquot barcodes such as
  ``TCGA-A2-A0CM-01A-11R``) are cut to their patient part, and the import notes how many were;
  anything else (a GDC uuid, a malformed barcode) is an error naming its line;
- value columns, any of ``treatment_type``, ``er_status``, ``pr_status``, ``her2_status``
  (:data:`models.clinical.CLINICAL_COLUMNS`; at least one). Values are matched case-insensitively,
  with the usual synonyms (``Targeted Molecular Therapy``, ``Radiation Therapy, NOS``, ``Hormonal
  Therapy``, ``Pos`` / ``Neg`` ...), and stored as the categories of :mod:`models.clinical`. TCGA's
  and GDC's markers of an absent value (empty, ``NA``, ``--``, ``[Not Available]``, ``[Not
  Evaluated]``, ``[Unknown]``, ``not reported`` ...) become empty cells: not recorded, never
  guessed. Any other value is an error naming the file, line, patient and column, with the valid
  values.

Policies: a column the CSV does not have is not written (a run that needs it says so); any other
column is an error (a misspelt ``her2`` would otherwise read as "never recorded"); a patient on
several rows (after cutting barcodes) is kept once when the rows agree and is an error naming the
column when they do not; patients of the CSV that are not in the imported cohort are dropped and
counted in the notes, as are cohort patients the CSV does not list (their cells stay empty) and
values given outside BRCA (kept, but the variables apply at BRCA only).
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from bench.data.importers.values import read_csv
from bench.errors import CohortImportError
from models.clinical import CLINICAL_COLUMNS, COLUMN_CATEGORIES

OPTION = "--clinical"
PATIENT_COLUMNS = ("case_submitter_id", "case_id")
_BARCODE = re.compile(r"^TCGA-[A-Z0-9]{2}-[A-Z0-9]{4}$")
_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$", re.IGNORECASE)
#: Cell texts (lower case) that mean "no value recorded".
MISSING_TOKENS = frozenset({"", "na", "n/a", "nan", "--", "'--", "not reported", "unknown", "[not available]",
                            "[not evaluated]", "[unknown]", "[not applicable]", "[discrepancy]", "[not reported]"})
#: Accepted spellings (lower case) of each category besides the category itself.
_RECEPTOR_SYNONYMS = {"pos": "positive", "+": "positive", "neg": "negative", "-": "negative"}
SYNONYMS = {
    "treatment_type": {"no treatment": "none", "chemo": "chemotherapy", "hormonal therapy": "hormone therapy",
                       "endocrine therapy": "hormone therapy", "targeted molecular therapy": "targeted therapy",
                       "radiation therapy, nos": "radiation therapy", "radiotherapy": "radiation therapy",
                       "radiation": "radiation therapy"},
    "er_status": _RECEPTOR_SYNONYMS,
    "pr_status": _RECEPTOR_SYNONYMS,
    "her2_status": _RECEPTOR_SYNONYMS,
}


def _patient_column(path: Path, header: list[str]) -> str:
    """The CSV's patient column; exactly one of :data:`PATIENT_COLUMNS` must be present."""
    found = [c for c in PATIENT_COLUMNS if c in header]
    if len(found) != 1:
        problem = "has both" if found else "has neither"
        raise CohortImportError(f"{path}: {problem} of the patient columns {' / '.join(PATIENT_COLUMNS)}; {OPTION} "
                                "needs exactly one, holding TCGA patient barcodes (TCGA-XX-XXXX)")
    return found[0]


def _value_columns(path: Path, header: list[str], patient: str) -> list[str]:
    """The value columns of the CSV (at least one); an unknown column is an error listing the accepted ones."""
    unknown = [c for c in header if c != patient and c not in CLINICAL_COLUMNS]
    if unknown:
        raise CohortImportError(f"{path}: unknown column(s) {', '.join(map(repr, unknown))}; {OPTION} reads "
                                f"{patient} and any of {', '.join(CLINICAL_COLUMNS)} — rename or remove the others")
    columns = [c for c in CLINICAL_COLUMNS if c in header]
    if not columns:
        raise CohortImportError(f"{path}: no value column; give at least one of {', '.join(CLINICAL_COLUMNS)}")
    return columns


def _barcode(path: Path, line: int, raw: str) -> tuple[str, bool]:
    """The patient barcode of a cell and whether it was cut from a longer barcode."""
    text = raw.strip().upper()
    if _BARCODE.match(text):
        return text, False
    if len(text) > 12 and _BARCODE.match(text[:12]) and text[12] == "-":
        return text[:12], True
    hint = " (a GDC uuid: give the TCGA barcode, case_submitter_id)" if _UUID.match(raw.strip()) else ""
    raise CohortImportError(f"{path}: line {line}: {raw!r} is not a TCGA patient barcode (TCGA-XX-XXXX){hint}; "
                            "fix the patient column")


def canonical_value(column: str, raw: str) -> str | None:
    """The category of a cell (None: no value recorded); a value no category matches raises ValueError."""
    text = " ".join(raw.strip().lower().split())
    if text in MISSING_TOKENS:
        return None
    text = SYNONYMS[column].get(text, text)
    if text not in COLUMN_CATEGORIES[column]:
        raise ValueError(f"{column} {raw!r} is not one of {', '.join(COLUMN_CATEGORIES[column])} (or an empty / "
                         "'[Not Available]' cell when not recorded)")
    return text


def _dedupe(path: Path, table: pd.DataFrame, lines: pd.Series, notes: list[str]) -> pd.DataFrame:
    """One row per patient: agreeing repeats kept once (noted), disagreeing ones an error."""
    repeated = table.index.duplicated(keep=False)
    if not repeated.any():
        return table
    for case, rows in table[repeated].groupby(level=0, sort=False):
        for column in rows.columns:
            values = rows[column].tolist()
            if len(set(values)) > 1:
                where = ", ".join(str(n) for n in lines[repeated][lines[repeated].index == case])
                raise CohortImportError(f"{path}: patient {case} is on lines {where} with different {column} "
                                        f"({', '.join(repr(v or '') for v in values)}); keep one row per patient")
    patients = sorted(set(table.index[repeated]))
    notes.append(f"{OPTION}: {len(patients)} patients listed on several agreeing rows kept once (e.g. {patients[0]})")
    return table[~table.index.duplicated(keep="first")]


def read_clinical(path: Path, notes: list[str]) -> pd.DataFrame:
    """The clinical CSV as ``case_id -> canonical values`` of its value columns ("" = not recorded)."""
    frame = read_csv(path, OPTION, dtype=str, keep_default_na=False, encoding="utf-8-sig")
    frame.columns = [str(c).strip() for c in frame.columns]
    patient = _patient_column(path, list(frame.columns))
    columns = _value_columns(path, list(frame.columns), patient)
    cases, cut = [], 0
    values: dict[str, list[str]] = {c: [] for c in columns}
    for i, raw_case in enumerate(frame[patient].tolist()):
        line = i + 2  # the header is line 1
        case, was_cut = _barcode(path, line, raw_case)
        cut += was_cut
        cases.append(case)
        for column in columns:
            try:
                value = canonical_value(column, frame[column].iat[i])
            except ValueError as err:
                raise CohortImportError(f"{path}: line {line}, patient {case}: {err}; fix the value") from None
            values[column].append(value or "")
    if cut:
        first = next(str(v) for v in frame[patient] if len(str(v).strip()) > 12)
        notes.append(f"{OPTION}: {cut} barcodes longer than a patient's cut to their first 12 characters "
                     f"(e.g. {first.strip()} -> {first.strip()[:12].upper()})")
    table = pd.DataFrame(values, index=pd.Index(cases, name="case_id"), columns=columns)
    lines = pd.Series(range(2, len(cases) + 2), index=table.index)
    return _dedupe(path, table, lines, notes)


def clinical_columns(clinical: pd.DataFrame, case_ids: pd.Series, sites: pd.Series,
                     notes: list[str]) -> dict[str, list[str]]:
    """The cohort's clinical columns (one value per imported patient, "" where the CSV has none), noting
    CSV patients outside the cohort, cohort patients outside the CSV and values given outside BRCA."""
    outside = clinical.index[~clinical.index.isin(case_ids)]
    if len(outside):
        notes.append(f"{OPTION}: {len(outside)} patients not in the imported cohort dropped "
                     f"(e.g. {', '.join(outside[:3])})")
    listed = case_ids.isin(clinical.index)
    for site, rows in case_ids[~listed].groupby(sites[~listed], sort=False):
        notes.append(f"{OPTION}: {site}: {len(rows)} patients have no row (their clinical cells stay empty; "
                     f"e.g. {rows.iloc[0]})")
    kept = clinical.reindex(case_ids.tolist()).fillna("")
    given = (kept != "").any(axis=1).to_numpy() & (sites.to_numpy() != "BRCA")
    if given.any():
        notes.append(f"{OPTION}: {int(given.sum())} patients outside BRCA have treatment / receptor values; they are "
                     "kept, but ModalTune w/ Clinical reads these variables at BRCA only (the paper's Table 10)")
    return {column: kept[column].tolist() for column in clinical.columns}
