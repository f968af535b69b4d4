"""When a text-distillation run counts as collapsed: the one rule, shared by training (the flag stored
in a run's rows) and the rendered tables (the footnote that explains the mark). Torch-free.

A ModalTune student collapses when it emits (nearly) the same embedding for every patient — the
shared part of the text targets — so that its loss sits at the floor of predicting the mean target
for everyone and what still differs between patients does not follow the text. Both symptoms are
measured on the validation patients (:class:`bench.train.distill.CollapseDiagnostics`): the cosine
between the patient-specific (centred) parts of the student's and the teacher's vectors, and the
validation loss divided by that floor.

The spread of the general embedding across patients is logged too but is not part of the rule: its
value before training comes from random weights, and a student that learns centred targets can end
with less spread than a random network while agreeing with the teacher (measured on the small BRCA
cohort: spread 0.39 x its initial value, centred cosine 0.17, subtype probe up from 0.50 to 0.83).
"""

from __future__ import annotations

import math

#: Below this cosine between the patient-specific parts of student and teacher, a run collapsed.
MIN_CENTERED_COSINE = 0.1
#: At or above this ratio of validation loss to the mean-target floor, a run collapsed.
MAX_FLOOR_RATIO = 1.0
COLLAPSE_RULE = (f"after the last epoch, on the validation patients, the cosine between the patient-specific "
                 f"(centred) parts of student and teacher is below {MIN_CENTERED_COSINE:g}, or the distillation "
                 f"loss is no lower than the loss of predicting the training patients' mean target for everyone")


def is_collapsed(centered_cosine: float, floor_ratio: float) -> bool:
    """:data:`COLLAPSE_RULE` of a run's last-epoch ``centered_cosine`` and ``floor_ratio`` (validation loss
    / mean-target floor); a NaN counts as collapsed (nothing was learned that can be measured)."""
    if math.isnan(centered_cosine) or math.isnan(floor_ratio):
        return True
    return centered_cosine < MIN_CENTERED_COSINE or floor_ratio >= MAX_FLOOR_RATIO
