"""Test and validation metrics, from scikit-learn and scikit-survival.

Sign convention: survival metrics take a **risk** score (higher = shorter survival), as
``sksurv.metrics.concordance_index_censored`` does; the models' risk is
``-sum(cumprod(1 - sigmoid(logits)))`` (:func:`models.tasks.survival_risk`).
"""

from __future__ import annotations

import logging
import warnings

import numpy as np
from sklearn.metrics import balanced_accuracy_score, roc_auc_score
from sksurv.exceptions import NoComparablePairException
from sksurv.metrics import concordance_index_censored, concordance_index_ipcw
from sksurv.util import Surv

log = logging.getLogger(__name__)


def subtype_metrics(labels: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    """Balanced accuracy and AUC (one-vs-rest macro for >2 classes); rare-set rows (label -1) ignored.

    ``labels int [n]``, ``probs float [n, K]`` (rows sum to 1).
    """
    keep = labels >= 0
    labels, probs = labels[keep], probs[keep]
    out = {"balanced_accuracy": float(balanced_accuracy_score(labels, probs.argmax(axis=1)))}
    present = np.unique(labels)
    if len(present) < 2:
        out["auc"] = float("nan")
    elif probs.shape[1] == 2:
        out["auc"] = float(roc_auc_score(labels, probs[:, 1]))
    else:
        probs = probs / probs.sum(axis=1, keepdims=True)
        out["auc"] = float(roc_auc_score(labels, probs, multi_class="ovr", average="macro",
                                         labels=np.arange(probs.shape[1])))
    return out


def c_index(event: np.ndarray, time: np.ndarray, risk: np.ndarray) -> float:
    """Harrell's C-index of a risk score (higher risk should mean earlier death)."""
    if not np.any(event):
        return float("nan")
    try:
        return float(concordance_index_censored(np.asarray(event, bool), np.asarray(time, float),
                                                np.asarray(risk, float))[0])
    except NoComparablePairException:  # e.g. a tiny split whose only deaths are its longest follow-ups
        return float("nan")


def survival_metrics(event: np.ndarray, time: np.ndarray, risk: np.ndarray,
                     train_event: np.ndarray | None = None, train_time: np.ndarray | None = None) -> dict[str, float]:
    """Harrell's C-index and, given the training outcomes (for the censoring weights), Uno's IPCW C-index.

    The IPCW estimate is truncated at the 80th percentile of the training follow-up times: beyond it
    the Kaplan-Meier estimate of the censoring distribution approaches zero and its inverse squared
    weights let a handful of late events decide the score.
    """
    out = {"c_index": c_index(event, time, risk)}
    max_train = float(np.max(train_time)) if train_time is not None and len(train_time) else 0.0
    if train_event is not None and train_time is not None and np.any(event):
        tau = float(np.quantile(np.asarray(train_time, float), IPCW_TAU_QUANTILE))
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                out["ipcw_c_index"] = float(concordance_index_ipcw(
                    Surv.from_arrays(np.asarray(train_event, bool), np.asarray(train_time, float)),
                    Surv.from_arrays(np.asarray(event, bool), np.minimum(np.asarray(time, float), max_train)),
                    np.asarray(risk, float), tau=tau)[0])
        except (ValueError, NoComparablePairException) as err:
            log.warning("IPCW C-index not computable: %s", err)
            out["ipcw_c_index"] = float("nan")
    return out


IPCW_TAU_QUANTILE = 0.8
PRIMARY = {"subtype": "balanced_accuracy", "survival": "c_index"}
