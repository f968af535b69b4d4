"""The paper's published figures (``reference.json`` beside this module, made from the paper and its release).

Only figures the paper publishes are here; a method without a published number renders as "n/a".
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any

REFERENCE_PATH = Path(__file__).with_name("reference.json")


@lru_cache(maxsize=1)
def paper_reference() -> dict[str, Any]:
    """The whole published-figures document (Tables 1-6, 2, 3, 8, 9 as JSON)."""
    return json.loads(REFERENCE_PATH.read_text())


_METRIC_KEYS = {"subtype": "subtype_balanced_accuracy", "survival": "survival_c_index"}
#: Tables the paper publishes only in part: the Overall figures it gives, by row label.
_OVERALL_ONLY = {"table8": "table8_ablations_known", "table9": "table9_titan_known"}


def published(table: str, task: str, label: str, site: str) -> tuple[float, float | None] | None:
    """The published ``(mean, std)`` of a table cell, or None where the paper gives none.

    Tables 2 and 3 publish per-site cells; Table 8 (ablations) only ModalTune's Overall (the other rows
    as changes relative to it, in the text); Table 9 (TITAN) only ModalTune TITAN's Overall.
    """
    ref = paper_reference()
    if table in _OVERALL_ONLY:
        known = ref.get(_OVERALL_ONLY[table], {}).get(label, {})
        value = known.get(f"{task}_overall") if site == "Overall" else None
        return None if value is None else (float(value), None)
    cell = ref.get(table, {}).get(_METRIC_KEYS[task], {}).get(label, {}).get(site)
    if not cell or cell.get("mean") is None:
        return None
    return float(cell["mean"]), (None if cell.get("std") is None else float(cell["std"]))
