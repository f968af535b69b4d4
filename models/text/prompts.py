"""ModalTune's text prompts: one patient's clinical record as the four texts the paper embeds.

ModalTune (ICCV 2025, Sec. 3.4 and Supplement Sec. 9 / Fig. 4) turns each patient's clinical table
row into natural-language sentences, embeds them with a text encoder and distils the model towards
those embeddings. The sentences, the cleaning of AJCC stage / T / N / M values and their phrases,
and the way missing fields are handled follow the release's ``data_utils/make_textemb_conch.py``
(martellab-sri/ModalTune); this module re-expresses them as data tables.

Sentences (each present only when its field is present)::

    Cancer location: {site location};
    Cancer diagnosis: {primary diagnosis};
    Overall stage: {stage phrase};
    Tumor stage status: {T phrase};
    Lymph node status: {N phrase};
    Distant metastasis status: {M phrase};
    Survival status: The patient {was censored|died} {bin phrase}

The four texts of :data:`TEXT_TASKS`, in this order (the ``[4, E]`` rows of a cached embedding):

``general``   location, diagnosis, stage, T, N, M, survival
``diagnosis`` location, diagnosis
``stage``     location, stage, T, N, M
``survival``  location, stage, T, N, M, survival

The release joins the sentences with single spaces *including the empty ones* of missing fields,
so a missing field leaves a run of spaces (``"...carcinoma;   Tumor stage status: ..."``) and a
text may end in spaces. That spacing is reproduced exactly: a byte-level BPE tokenizer such as
CONCH's turns extra spaces into extra tokens, so it changes the embeddings.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

TEXT_TASKS = ("general", "diagnosis", "stage", "survival")

# Cancer location of each site (the release's ``cancer_code``); keys are upper-case site names.
SITE_LOCATIONS: Mapping[str, str] = {
    "BRCA": "breast",
    "BLCA": "bladder urothelial",
    "COADREAD": "colorectal",
    "GBMLGG": "brain",
    "NSCLC": "lung",
    "RCC": "kidney",
    "STAD": "stomach",
    "UCEC": "uterus",
}

EVENT_PHRASES: Mapping[int, str] = {0: "was censored", 1: "died"}


class PromptError(ValueError):
    """A clinical value the paper's templates cannot express (the message names field and value)."""


def _drop(*parts: str) -> tuple[tuple[str, str], ...]:
    return tuple((part, "") for part in parts)


@dataclass(frozen=True)
class ClinicalField:
    """One AJCC field: its patients.csv column, sentence label, cleaning edits and phrases.

    ``edits`` are ``(old, new)`` substring replacements applied in order; they fold sub-stages into
    their stage (``Stage IIIA`` -> ``Stage III``, ``T1b`` -> ``T1``, ``N0 (i+)`` -> ``N0``,
    ``cM0 (i+)`` -> ``M0``, ``Tis`` -> ``T0``), as the paper's Supplement Sec. 9 describes. The
    cleaned value must then be a key of ``phrases``.
    """

    column: str
    label: str
    edits: tuple[tuple[str, str], ...]
    phrases: Mapping[str, str]

    def phrase(self, raw: str) -> str:
        cleaned = raw
        for old, new in self.edits:
            cleaned = cleaned.replace(old, new)
        try:
            return self.phrases[cleaned]
        except KeyError:
            raise PromptError(
                f"{self.column} value {raw!r} (cleaned to {cleaned!r}) has no phrase in the paper's templates; "
                f"the cleaned value must be one of {', '.join(self.phrases)} (leave the field empty if unknown)"
            ) from None

    def sentence(self, raw: str | None) -> str:
        return "" if raw is None else f"{self.label}: {self.phrase(raw)};"


_SUBSTAGE_LETTERS = _drop("A", "B", "b", "C", "c", "D", "d")
_TNM_LETTERS = _drop("A", "a", "B", "b", "C", "c", "D", "d")
_ITC = _drop(" (i+)", " (i-)")

STAGE = ClinicalField(
    column="stage",
    label="Overall stage",
    edits=_SUBSTAGE_LETTERS + _ITC + _drop("m", "i"),
    phrases={
        "Stage I": "stage one",
        "Stage II": "stage two",
        "Stage III": "stage three",
        "Stage IV": "stage four",
        "Stage X": "stage cannot be determined",
    },
)
TUMOR = ClinicalField(
    column="t",
    label="Tumor stage status",
    edits=_TNM_LETTERS + _ITC + _drop("m") + (("is", "0"),) + _drop("i"),
    phrases={
        "T0": "no tumor detected",
        "T1": "tumor stage one",
        "T2": "tumor stage two",
        "T3": "tumor stage three",
        "T4": "tumor stage four",
        "TX": "tumor stage cannot be assessed",
    },
)
NODE = ClinicalField(
    column="n",
    label="Lymph node status",
    edits=_TNM_LETTERS + _ITC + _drop(" (mol+)", "m", "i"),
    phrases={
        "N0": "cancer has not spread to lymph nodes",
        "N1": "node stage one",
        "N2": "node stage two",
        "N3": "node stage three",
        "NX": "node spread cannot be assessed",
    },
)
METASTASIS = ClinicalField(
    column="m",
    label="Distant metastasis status",
    edits=_TNM_LETTERS + _ITC + _drop("m", "i"),
    phrases={
        "M0": "no metastasis detected",
        "M1": "cancer has spread to distant organs",
        "MX": "metastasis status cannot be assessed",
    },
)
STAGING_FIELDS = (STAGE, TUMOR, NODE, METASTASIS)  # sentence order of the staging block


def present(value: Any) -> str | None:
    """``value`` as a string, or None when missing (None, NaN, pandas NA, empty or blank string)."""
    if value is None:
        return None
    if isinstance(value, str):
        return value if value.strip() else None
    try:
        if value != value:  # NaN
            return None
    except TypeError:  # pandas.NA refuses to be a bool
        return None
    return str(value)


def survival_bin_phrases(bin_upper_months: Sequence[float]) -> tuple[str, str, str, str]:
    """The 4 bin phrases of a site from its 4 upper bin edges (months), rounded to whole months.

    Bin 0 is ``"before e0 months"``, bin k ``"between e(k-1) and e(k) months"`` (Table 5). Rounding
    is half-to-even, as the release's ``np.round``; the release's last edge is the maximum follow-up
    plus 1e-6, which is mirrored so a maximum ending in .5 rounds the same way.
    """
    edges = [float(x) for x in bin_upper_months]
    if len(edges) != 4 or any(not math.isfinite(x) for x in edges):
        raise PromptError(f"bin_upper_months must hold 4 finite upper edges in months, got {list(bin_upper_months)}")
    edges[-1] += 1e-6
    months = [int(round(x)) for x in edges]
    return (f"before {months[0]} months",) + tuple(  # type: ignore[return-value]
        f"between {lo} and {hi} months" for lo, hi in zip(months[:-1], months[1:])
    )


def survival_sentence(event: Any, survival_bin: Any, phrases: Sequence[str]) -> str:
    """``"Survival status: The patient died before 15 months"`` (no trailing ';', as the release)."""
    try:
        event_phrase = EVENT_PHRASES[int(event)]
    except (KeyError, TypeError, ValueError):
        raise PromptError(f"event {event!r} must be 1 (died) or 0 (censored)") from None
    try:
        k = int(survival_bin)
        if not 0 <= k < len(phrases):
            raise ValueError
    except (TypeError, ValueError):
        raise PromptError(f"survival_bin {survival_bin!r} must be 0..{len(phrases) - 1}") from None
    return f"Survival status: The patient {event_phrase} {phrases[k]}"


def site_location(site: str) -> str:
    """The ``Cancer location`` phrase of ``site`` (case-insensitive)."""
    try:
        return SITE_LOCATIONS[site.upper()]
    except (KeyError, AttributeError):
        raise PromptError(f"site {site!r} has no cancer location phrase; known sites: "
                          f"{', '.join(s.lower() for s in SITE_LOCATIONS)}") from None


def build_prompts(row: Mapping[str, Any], site_meta: Mapping[str, Any], with_staging: bool = True) -> dict[str, str]:
    """The four texts of one patient, keyed by :data:`TEXT_TASKS` (in that order).

    ``row`` holds a patients.csv record (a dict or a pandas row): ``site``, ``primary_diagnosis``,
    ``stage``, ``t``, ``n``, ``m`` (raw AJCC strings, empty when unknown), ``survival_months``,
    ``event`` (1 = died) and ``survival_bin`` (0..3). ``site_meta`` is the site's manifest entry;
    its ``bin_upper_months`` give the bin phrases. A missing field drops its sentence (the survival
    sentence is dropped when ``survival_months`` is missing). Raises :class:`PromptError` for a
    value the templates cannot express (e.g. ``Stage 0``), as the release would fail on it.

    ``with_staging=False`` writes the texts without their staging sentences (overall stage, T, N, M), as the
    release writes them for a patient whose stage is unknown: the texts of Table 7's "Survival
    prediction w/o stage" (Supplement Sec. 10).
    """
    location = f"Cancer location: {site_location(str(row.get('site')))};"
    diagnosis = present(row.get("primary_diagnosis"))
    diagnosis_sentence = "" if diagnosis is None else f"Cancer diagnosis: {diagnosis};"
    staging = [field.sentence(present(row.get(field.column)) if with_staging else None) for field in STAGING_FIELDS]
    survival = ""
    if present(row.get("survival_months")) is not None:
        phrases = survival_bin_phrases(site_meta["bin_upper_months"])
        survival = survival_sentence(row.get("event"), row.get("survival_bin"), phrases)
    texts = {
        "general": [location, diagnosis_sentence, *staging, survival],
        "diagnosis": [location, diagnosis_sentence],
        "stage": [location, *staging],
        "survival": [location, *staging, survival],
    }
    return {task: " ".join(texts[task]) for task in TEXT_TASKS}
