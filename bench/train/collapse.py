"""When a text-distillation run counts as collapsed: the one rule, shared by training (the flag stored
in a run's rows) and the rendered tables (the footnote that explains the mark). Torch-free.

A ModalTune student collapses when it emits (nearly) the same embedding for every patient — the
shared part of the text targets — so its loss reaches the floor of predicting the mean target and
its probes read features that barely differ between patients. Two symptoms are measured on the
validation patients (:class:`bench.train.distill.CollapseDiagnostics`): the spread of the general
embedding across patients relative to its value before training, and the cosine between the
patient-specific (centred) parts of the student's and the teacher's vectors.
"""

from __future__ import annotations

import math

#: A run whose general embedding's spread falls below this fraction of its initial value collapsed.
STD_COLLAPSE_FRACTION = 0.5
#: A run whose patient-specific parts agree with the teacher's less than this (cosine) collapsed.
MIN_CENTERED_COSINE = 0.1
COLLAPSE_RULE = (f"after the last epoch, on the validation patients, the general embedding's spread across patients "
                 f"is below {STD_COLLAPSE_FRACTION:g} x its value before training, or the cosine between the "
                 f"patient-specific (centred) parts of student and teacher is below {MIN_CENTERED_COSINE:g}")


def is_collapsed(std_ratio: float, centered_cosine: float) -> bool:
    """:data:`COLLAPSE_RULE`: the embeddings stopped differing between patients, or what differs does
    not follow the text targets (a NaN counts as collapsed: nothing was learned that can be measured)."""
    if math.isnan(std_ratio) or math.isnan(centered_cosine):
        return True
    return std_ratio < STD_COLLAPSE_FRACTION or centered_cosine < MIN_CENTERED_COSINE
