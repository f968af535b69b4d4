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
    """The whole published-figures document (Tables 1-6, 2, 3, 8-11 as JSON)."""
    return json.loads(REFERENCE_PATH.read_text())


_METRIC_KEYS = {"subtype": "subtype_balanced_accuracy", "survival": "survival_c_index"}
#: Tables the paper publishes only in part: the Overall figures it gives, by row label.
_OVERALL_ONLY = {"table8": "table8_ablations_known", "table9": "table9_titan_known",
                 "table10": "table10_clinical_known"}


def published(table: str, task: str, label: str, site: str) -> tuple[float, float | None] | None:
    """The published ``(mean, std)`` of a table cell, or None where the paper gives none.

    Tables 2 and 3 publish per-site cells; Table 8 (ablations) only ModalTune's Overall (the other rows
    as changes relative to it, in the text); Table 9 (TITAN) only ModalTune TITAN's Overall; Table 10
    (clinical data) only Overall figures: ModalTune's both, ModalTune w/ Clinical's survival.
    """
    ref = paper_reference()
    if table in _OVERALL_ONLY:
        known = ref.get(_OVERALL_ONLY[table], {}).get(label, {})
        value = known.get(f"{task}_overall") if site == "Overall" else None
        return None if value is None else (float(value), None)
    cell = ref.get(table, {}).get(_METRIC_KEYS.get(task, task), {}).get(label, {}).get(site)
    if not cell or cell.get("mean") is None:
        return None
    return float(cell["mean"]), (None if cell.get("std") is None else float(cell["std"]))


#: Tables whose ablation rows the paper gives only as changes relative to another row, in its text.
_DELTAS = {"table8": ("table8_ablations_known", "ModalTune")}
#: The reference rows the text names in a ``<row>_vs_<reference>`` key (as the table labels them).
_DELTA_REFERENCE_LABELS = {"ABMIL_cat": "ABMIL (cat)", "Gigapath_Tuned": "Prov-Gigapath (Tuned)"}


def published_deltas(table: str) -> dict[str, tuple[str, dict[str, float]]]:
    """``row label -> (reference label, {task: relative change})`` that the paper's text reports for
    ``table`` (e.g. Table 8's "ModalTune w/ LoRA": 1.5 % drop in subtype -> ``-0.015``).

    The changes are relative to the reference row's Overall figure (row / reference - 1): the paper's
    "+4.6 %" of ModalTune over Prov-Gigapath (Tuned) is 0.954 / 0.912 - 1, not the 4.2-point
    difference. Most rows are compared with the table's own ModalTune row; a key
    ``<row>_vs_<reference>`` or a task key ``<task>_vs_<reference>`` names another (Single Modal vs
    Prov-Gigapath (Tuned); ABMIL (cat) w/ text emb. vs ABMIL (cat)). A task the text gives no
    figure for is absent. Empty for a table without such figures.
    """
    if table not in _DELTAS:
        return {}
    key, default_reference = _DELTAS[table]
    reported = paper_reference().get(key, {}).get("relative_drops_reported_in_text", {})
    out: dict[str, tuple[str, dict[str, float]]] = {}
    for name, figures in reported.items():
        label, _, ref_key = name.partition("_vs_")
        reference = _DELTA_REFERENCE_LABELS[ref_key] if ref_key else default_reference
        changes = {}
        for task_key, value in figures.items():
            task, _, task_ref = task_key.partition("_vs_")
            if task_ref:
                reference = _DELTA_REFERENCE_LABELS[task_ref]
            changes[task] = float(value)
        out[label] = (reference, changes)
    return out


def delta_reference(table: str) -> str | None:
    """The row label ``table``'s reported changes are relative to by default (None: no such figures)."""
    return _DELTAS[table][1] if table in _DELTAS else None
