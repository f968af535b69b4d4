"""The clinical variables of "ModalTune w/ Clinical" (the paper's Table 10): which ones, at which sites, and
the fixed-width vector they are encoded into.

The paper's variables: age (every site), TNM staging (BRCA, NSCLC, RCC), treatment type (BRCA) and
hormone-receptor status (BRCA). TNM staging is the AJCC pathologic stage with its T, N and M
components, the four staging fields the release's clinical variant encodes beside age
(martellab-sri/ModalTune ``data_utils/make_clinical.py``: ``clinfeat_dim`` 5); hormone-receptor status
is the ER, PR and HER2 status. Treatment type and receptor status live in the optional ``patients.csv``
columns :data:`CLINICAL_COLUMNS` (the synthetic generator writes them, the importer reads them from
``--clinical CSV``); age and staging are the format's ``age``, ``stage``, ``t``, ``n``, ``m``.

Encoding (:func:`encoded_width` numbers per patient, the same layout at every site, variables in
:func:`variables` order):

- a numeric variable (age) gives two numbers: its value standardised with the mean and standard
  deviation of the run's training patients, and a missing indicator;
- a categorical variable gives a one-hot over its categories and a missing indicator. Staging values
  are cleaned as the text prompts clean them (sub-stages folded: ``Stage IIIA`` -> ``Stage III``,
  ``T2b`` -> ``T2``); "cannot be assessed" (``Stage X``, ``TX``, ``NX``, ``MX``) is a recorded category,
  not a missing value;
- a missing value (an empty cell) sets the variable's missing indicator to 1 and its other numbers
  to 0 (for age: the training mean). Nothing is imputed: the model sees that the value is missing;
- a variable that does not apply at the patient's site (TNM at GBMLGG, treatment type at RCC) is all
  zeros, missing indicator included: not applicable is not missing.

The variable set and its vocabularies fix the width, so the model's clinical encoder has the same
input at every site (and pan-cancer); :func:`variables_for` names the variables that apply at a site.
The staging vocabularies come from :mod:`models.text.prompts`, imported on first use of
:func:`variables` so that the data layer can read the column names without loading the text stack.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from models.paper.sites import ALL_SITES

__all__ = ["CLINICAL_COLUMNS", "HER2_STATUSES", "RECEPTOR_STATUSES", "TREATMENT_TYPES", "ClinicalVariable",
           "encoded_width", "variables", "variables_for"]

#: Optional ``patients.csv`` columns beyond the format's own (empty = not recorded or not applicable).
CLINICAL_COLUMNS = ("treatment_type", "er_status", "pr_status", "her2_status")
#: The patient's main treatment type (one value per patient).
TREATMENT_TYPES = ("none", "chemotherapy", "hormone therapy", "targeted therapy", "radiation therapy")
#: ER and PR status (TCGA's breast receptor-status values).
RECEPTOR_STATUSES = ("positive", "negative", "indeterminate")
#: HER2 status: IHC / FISH results can also be equivocal.
HER2_STATUSES = ("positive", "negative", "equivocal", "indeterminate")
#: The categories of each optional column.
COLUMN_CATEGORIES = {"treatment_type": TREATMENT_TYPES, "er_status": RECEPTOR_STATUSES,
                     "pr_status": RECEPTOR_STATUSES, "her2_status": HER2_STATUSES}

_TNM_SITES = ("BRCA", "NSCLC", "RCC")
_BRCA = ("BRCA",)


@dataclass(frozen=True)
class ClinicalVariable:
    """One clinical variable: its ``patients.csv`` column, ``kind`` (``numeric`` or ``categorical``), its
    ``categories`` (categorical), the ``sites`` where it applies and, for a staging field, the
    :class:`~models.text.prompts.ClinicalField` whose cleaning edits fold raw values into a category."""

    name: str
    column: str
    kind: str
    sites: tuple[str, ...]
    categories: tuple[str, ...] = ()
    staging: Any = None  # a models.text.prompts.ClinicalField

    @property
    def width(self) -> int:
        """Numbers this variable takes in the encoded vector (value or one-hot, plus the missing indicator)."""
        return (1 if self.kind == "numeric" else len(self.categories)) + 1

    def applies_to(self, site: str) -> bool:
        return site.upper() in self.sites

    def category(self, raw: str) -> str | None:
        """The category of a stored value (None: missing). A value outside the categories is a ValueError
        naming the column and the valid values."""
        text = raw.strip() if isinstance(raw, str) else ""
        if not text:
            return None
        if self.staging is not None:
            for old, new in self.staging.edits:
                text = text.replace(old, new)
        else:
            text = text.lower()
        if text not in self.categories:
            raise ValueError(f"{self.column} value {raw!r} is not one of {', '.join(self.categories)}"
                             + (" (after folding sub-stages)" if self.staging is not None else ""))
        return text


@lru_cache(maxsize=1)
def variables() -> tuple[ClinicalVariable, ...]:
    """Every clinical variable, in encoding order: age, stage, T, N, M, treatment type, ER, PR, HER2."""
    from models.text.prompts import METASTASIS, NODE, STAGE, TUMOR

    staging = tuple(ClinicalVariable(f.column, f.column, "categorical", _TNM_SITES, tuple(f.phrases), f)
                    for f in (STAGE, TUMOR, NODE, METASTASIS))
    optional = tuple(ClinicalVariable(c, c, "categorical", _BRCA, COLUMN_CATEGORIES[c]) for c in CLINICAL_COLUMNS)
    return (ClinicalVariable("age", "age", "numeric", ALL_SITES),) + staging + optional


def encoded_width() -> int:
    """Width of the encoded clinical vector, the clinical encoder's input: 2 + 6 + 7 + 6 + 4 + 6 + 4 + 4 + 5 = 44."""
    return sum(v.width for v in variables())


def variables_for(site: str) -> tuple[ClinicalVariable, ...]:
    """The variables that apply at ``site`` (case-insensitive), in encoding order."""
    return tuple(v for v in variables() if v.applies_to(site))
