"""How values of release files become cohort text and appear in error messages (shared by the importers)."""

from __future__ import annotations

from typing import Any

import numpy as np


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
