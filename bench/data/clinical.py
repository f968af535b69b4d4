"""Clinical variables of a cohort's patients as the numbers "ModalTune w/ Clinical" reads.

The variables, the sites they apply to and the layout of the encoded vector are defined in
:mod:`models.clinical` (age standardised + missing indicator; every categorical variable one-hot +
missing indicator; a variable that does not apply at the site all zeros). Here they are read from
``patients.csv`` rows: :func:`encode_clinical` fits age's mean and standard deviation on a run's
*training* patients (no test leakage, as RNA is z-scored) and encodes every patient of the site.
:func:`check_clinical_columns` lists values of the optional columns that are no known category (a
cohort check, so that a hand-edited ``patients.csv`` fails at load time, naming patient and field).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from bench.errors import BenchError
from models.clinical import CLINICAL_COLUMNS, COLUMN_CATEGORIES, ClinicalVariable, variables

#: Standard deviations below this count as constant (age then keeps unit scale).
_MIN_STD = 1e-6


def check_clinical_columns(patients: pd.DataFrame, path: Path) -> list[str]:
    """Problems with the optional clinical columns present in ``patients``: every non-empty value must be
    one of its column's categories (case-insensitive)."""
    problems = []
    for column in CLINICAL_COLUMNS:
        if column not in patients.columns:
            continue
        valid = COLUMN_CATEGORIES[column]
        for case, value in zip(patients["case_id"], patients[column]):
            text = value.strip().lower() if isinstance(value, str) else ""
            if text and text not in valid:
                problems.append(f"{path}: patient {case}: {column} {value!r} is not one of {', '.join(valid)} "
                                "(leave it empty if not recorded); fix the value or re-import with --clinical")
    return problems


def _require_columns(rows: pd.DataFrame, site: str, cohort: Path) -> None:
    """Every column of a variable that applies at ``site`` must exist in the cohort's patient table."""
    needed = [v.column for v in variables() if v.applies_to(site)]
    absent = [c for c in needed if c not in rows.columns]
    if absent:
        raise BenchError(f"{cohort / 'patients.csv'} has no column {', '.join(absent)}, which ModalTune w/ Clinical "
                         f"reads at {site}: import the cohort with `--clinical CSV` (columns case_id, "
                         f"{', '.join(CLINICAL_COLUMNS)}), or regenerate the synthetic cohort (delete it, or "
                         "`python -m bench data synth --out DIR`) with this version, which writes them")


def _categories(variable: ClinicalVariable, rows: pd.DataFrame, cohort: Path) -> list[str | None]:
    """Each row's category of ``variable`` (None = missing); an unknown value names the patient."""
    out = []
    for case, raw in zip(rows["case_id"], rows[variable.column]):
        try:
            out.append(variable.category(raw if isinstance(raw, str) else ""))
        except ValueError as err:
            raise BenchError(f"{cohort / 'patients.csv'}: patient {case}: {err}; fix the value (leave it empty if "
                             "not recorded)") from None
    return out


def _numeric_block(variable: ClinicalVariable, rows: pd.DataFrame, train: np.ndarray, site: str,
                   cohort: Path) -> np.ndarray:
    """``[n, 2]``: the value (age) standardised on the training patients that have one, and the missing
    indicator."""
    age = pd.to_numeric(rows[variable.column], errors="coerce").to_numpy(dtype=np.float64)
    missing = ~np.isfinite(age)
    known = age[train & ~missing]
    if known.size == 0:
        raise BenchError(f"{cohort / 'patients.csv'}: no training patient of {site} has an age; ModalTune w/ Clinical "
                         "standardises age on the training patients — fill the ages (age at diagnosis, years)")
    std = known.std()
    scaled = (age - known.mean()) / (std if std > _MIN_STD else 1.0)
    return np.stack([np.where(missing, 0.0, scaled), missing.astype(np.float64)], axis=1)


def _one_hot_block(variable: ClinicalVariable, rows: pd.DataFrame, cohort: Path) -> np.ndarray:
    """``[n, K + 1]``: one-hot over the variable's K categories, then the missing indicator."""
    block = np.zeros((len(rows), variable.width))
    for i, category in enumerate(_categories(variable, rows, cohort)):
        block[i, -1 if category is None else variable.categories.index(category)] = 1.0
    return block


def encode_clinical(rows: pd.DataFrame, site: str, train: np.ndarray, cohort: Path) -> np.ndarray:
    """``float32 [len(rows), models.clinical.encoded_width()]``: the clinical vector of each patient row of ``site``
    (layout in :mod:`models.clinical`); ``train`` (bool per row) marks the patients whose ages set the
    standardisation. ``cohort`` names the cohort in errors: an absent column the site needs, an
    unknown category, no training age."""
    rows = rows.reset_index(drop=True)
    train = np.asarray(train, dtype=bool)
    _require_columns(rows, site, cohort)
    blocks = []
    for variable in variables():
        if not variable.applies_to(site):
            blocks.append(np.zeros((len(rows), variable.width)))
        elif variable.kind == "numeric":
            blocks.append(_numeric_block(variable, rows, train, site, cohort))
        else:
            blocks.append(_one_hot_block(variable, rows, cohort))
    return np.concatenate(blocks, axis=1).astype(np.float32)
