"""Per-patient test predictions of one stored row: what its test metric was computed from.

Every regime hands the predictions its test metric was measured on to the runner together with
the metric (:class:`bench.regimes.base.Evaluation`), and the runner stores them in the same
transaction as the row (:meth:`bench.results.ResultStore.write`). Confidence intervals, paired
tests and figures (:mod:`bench.stats`, Kaplan-Meier curves) are then computed from the store alone,
without retraining.

A subtype row holds each test patient's class probabilities (``probs [n, K]``; the balanced accuracy
is taken over ``argmax`` with the rare set, label -1, ignored); a survival row holds each patient's
risk score (``risk [n]``, higher = shorter survival; the C-index's estimate). Every row also keeps
the patient's label, survival time (months) and event, so either task can be re-scored.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True, eq=False)
class Predictions:
    """The test patients of one row, in one order: identity, targets and the model's output.

    ``probs`` (subtype rows) or ``risk`` (survival rows) is set, the other is None. A risk that could
    not be computed (a Cox probe that did not converge) is NaN for every patient. (Compared by
    identity: its fields are arrays.)
    """

    case_ids: tuple[str, ...]
    labels: np.ndarray  # int [n], -1 = rare set
    times: np.ndarray  # float [n], survival months
    events: np.ndarray  # int [n], 1 = died
    probs: np.ndarray | None = None  # float [n, K]
    risk: np.ndarray | None = None  # float [n]

    def __post_init__(self) -> None:
        n = len(self.case_ids)
        for name in ("labels", "times", "events"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"predictions: {name} has {len(getattr(self, name))} entries for {n} patients")
        if (self.probs is None) == (self.risk is None):
            raise ValueError("predictions hold either class probabilities (subtype) or a risk (survival)")
        out = self.probs if self.probs is not None else self.risk
        if len(out) != n:
            raise ValueError(f"predictions: {len(out)} outputs for {n} patients")

    @classmethod
    def of(cls, dataset: Any, *, probs: np.ndarray | None = None, risk: np.ndarray | None = None) -> Predictions:
        """The predictions of ``dataset``'s patients (a :class:`bench.data.dataset.PatientDataset`, in its
        order): ``probs`` ``[n, K]`` for subtype or ``risk`` ``[n]`` for survival."""
        return cls(case_ids=tuple(str(c) for c in dataset.case_ids),
                   labels=np.asarray(dataset.labels, dtype=np.int64),
                   times=np.asarray(dataset.months, dtype=np.float64),
                   events=np.asarray(dataset.events, dtype=np.int64),
                   probs=None if probs is None else np.asarray(probs, dtype=np.float64),
                   risk=None if risk is None else np.asarray(risk, dtype=np.float64).reshape(-1))

    @property
    def task(self) -> str:
        """``subtype`` (class probabilities) or ``survival`` (risk)."""
        return "subtype" if self.probs is not None else "survival"
