"""How values of release files become cohort text and appear in error messages (shared by the importers)."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bench.errors import CohortImportError

#: What reading a file that is no text CSV at all raises (binary, another encoding, empty, unparseable).
CSV_ERRORS = (UnicodeDecodeError, csv.Error, pd.errors.ParserError, pd.errors.EmptyDataError)


def raw_text(value: Any) -> str:
    """A record value as the raw string patients.csv stores: missing/NaN -> "", 62.0 -> "62"."""
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def show(value: Any) -> str:
    """A value for an error message: strings quoted, numbers plain (no numpy reprs), NaN as NaN."""
    return repr(value) if isinstance(value, str) else raw_text(value) or "NaN"


def read_csv(path: Path, option: str, **kwargs: Any) -> pd.DataFrame:
    """``pd.read_csv(path, **kwargs)``; a file that is no readable CSV is an import error naming the
    file and the option (``--rna``, ``--pathways``, ``--families``) that takes it."""
    try:
        return pd.read_csv(path, **kwargs)
    except CSV_ERRORS as err:
        raise CohortImportError(f"{path}: not a readable CSV ({type(err).__name__}: {err}); {option} takes a UTF-8 "
                                "CSV file") from err


def read_header(path: Path, option: str) -> list[str]:
    """The stripped header cells of a CSV file (an import error for a file that is no readable CSV)."""
    try:
        with path.open(newline="") as f:
            return [h.strip() for h in next(csv.reader(f), [])]
    except CSV_ERRORS as err:
        raise CohortImportError(f"{path}: not a readable CSV ({type(err).__name__}: {err}); {option} takes a UTF-8 "
                                "CSV file") from err
