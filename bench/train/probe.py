"""The ``linear_probe`` regime: a frozen encoder's patient embeddings, probed linearly.

As in the ModalTune release's evaluation: logistic regression (liblinear, ``max_iter`` 200,
``random_state`` 0; one-vs-rest for more than two classes) on the raw embeddings for subtype, rare
set excluded; lifelines' Cox
proportional-hazards model (penalizer 0.1) for survival, whose partial hazard is the risk score.
Embeddings are computed once per (encoder, weights, cohort) and cached, so a probe costs one
forward pass per patient.

Preprocessing is one setting shared by every linear-probe row (the ``probe`` run option,
:mod:`models.run_options`): ``raw`` (the release: the embeddings as they are) or ``standardized``
(every feature z-scored with the mean and standard deviation of the training patients' embeddings,
then the same probes). It is applied to the embeddings after the cache, so the cache never depends on it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader

from bench import metrics as M
from bench.data.dataset import PatientDataset, SiteData, collate
from bench.data.features import cache_dir
from bench.predictions import Predictions
from models.base import BenchModel
from models.run_options import PROBE_PREPROCESSING

log = logging.getLogger(__name__)

LOGREG = {"solver": "liblinear", "max_iter": 200, "random_state": 0}
COX_PENALIZER = 0.1


EMBED_BATCH = 16


@torch.no_grad()
def embed(model: BenchModel, dataset: torch.utils.data.Dataset, device: torch.device | str = "cpu") -> np.ndarray:
    """``float32 [len(dataset), E]`` patient embeddings (eval mode, whole bags).

    Bags are batched with padding and a mask; every model honours the mask (a padded bag gives the
    unpadded bag's output — tested per model), so batching changes speed, not embeddings.
    """
    model.eval().to(device)
    loader = DataLoader(dataset, batch_size=EMBED_BATCH, collate_fn=collate)
    out = []
    for batch in loader:
        moved = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
        out.append(model.forward_features(moved).float().cpu())
    return torch.cat(out).numpy() if out else np.zeros((0, 0), np.float32)


def embedding_cache_path(cohort_root: Path, key: dict) -> Path:
    """Cache file of one encoder configuration's patient embeddings (``key``: model, profile, cohort, weights, seed)."""
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return cache_dir(cohort_root) / f"embeddings-{key.get('model', 'model')}-{digest}.npz"


def cached_embeddings(model: BenchModel, datasets: dict[str, PatientDataset], path: Path) -> dict[str, np.ndarray]:
    """Embeddings ``[n, E]`` of each dataset's patients, read from the cache at ``path``; patients not yet
    cached are embedded and added (atomically), so every patient costs one forward pass per encoder."""
    from bench.data.format import atomic_path

    cached: dict[str, np.ndarray] = {}
    if path.is_file():
        with np.load(path, allow_pickle=False) as stored:
            cached = dict(zip(stored["case_ids"].tolist(), stored["embeddings"]))
    missing = {s: [i for i, c in enumerate(ds.case_ids) if c not in cached] for s, ds in datasets.items()}
    if any(missing.values()):
        device = "cuda" if torch.cuda.is_available() else "cpu"
        for split, rows in missing.items():
            if rows:
                x = embed(model, torch.utils.data.Subset(datasets[split], rows), device)
                cached.update({datasets[split].case_ids[i]: e for i, e in zip(rows, x)})
        cases = sorted(cached)
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, case_ids=np.array(cases), embeddings=np.stack([cached[c] for c in cases]))
    return {s: np.stack([cached[c] for c in ds.case_ids]) for s, ds in datasets.items()}


def preprocess(x: dict[str, np.ndarray], preprocessing: str = "raw") -> dict[str, np.ndarray]:
    """The probes' features: ``x`` as it is (``raw``), or every feature z-scored with the mean and
    standard deviation (ddof 0) of ``x["train"]`` (``standardized``; a constant feature is centred only)."""
    if preprocessing == "raw":
        return x
    if preprocessing != "standardized":
        raise ValueError(f"unknown probe preprocessing {preprocessing!r}; expected one of {PROBE_PREPROCESSING}")
    train = np.asarray(x["train"], dtype=np.float64)
    mean, std = train.mean(axis=0), train.std(axis=0)
    std = np.where(std > 0, std, 1.0)
    return {split: ((np.asarray(v, dtype=np.float64) - mean) / std).astype(np.float32) for split, v in x.items()}


@dataclass
class ProbeResult:
    """A probe's ``val_`` / ``test_`` metrics and the test patients' predictions they were computed
    from (None when the test split was not scored)."""

    metrics: dict[str, float]
    predictions: Predictions | None = None


def probe_subtype(x: dict[str, np.ndarray], data: SiteData, splits: tuple[str, ...] = ("val", "test"),
                  preprocessing: str = "raw") -> dict[str, float]:
    """Fit logistic regression on the (preprocessed) training embeddings; balanced accuracy and AUC of ``splits``."""
    return fit_subtype_probe(x, data, splits, preprocessing).metrics


def fit_subtype_probe(x: dict[str, np.ndarray], data: SiteData, splits: tuple[str, ...] = ("val", "test"),
                      preprocessing: str = "raw") -> ProbeResult:
    """:func:`probe_subtype`'s metrics and the test patients' class probabilities."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.multiclass import OneVsRestClassifier

    x = preprocess(x, preprocessing)
    y = {s: data.splits[s].labels for s in x}
    keep = y["train"] >= 0
    clf = LogisticRegression(**LOGREG)
    if data.n_classes > 2:  # liblinear is one-vs-rest, as scikit-learn applied it implicitly for the release
        clf = OneVsRestClassifier(clf)
    clf.fit(x["train"][keep], y["train"][keep])
    out, predictions = {}, None
    for split in splits:
        probs = np.zeros((len(x[split]), data.n_classes))
        probs[:, clf.classes_] = clf.predict_proba(x[split])
        out.update({f"{split}_{k}": v for k, v in M.subtype_metrics(y[split], probs).items()})
        if split == "test":
            predictions = Predictions.of(data.splits[split], probs=probs)
    return ProbeResult(out, predictions)


def probe_duration_bins(x: dict[str, np.ndarray], data: SiteData, preprocessing: str = "raw") -> dict[str, float]:
    """Table 7's "Duration Bins": logistic regression (the subtype probe's settings) of the 4 survival bins
    on the (preprocessed) training embeddings; val/test balanced accuracy over the bins (``bins_*``)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score
    from sklearn.multiclass import OneVsRestClassifier

    x = preprocess(x, preprocessing)
    bins = {s: data.splits[s].bins.astype(int) for s in x}
    clf = OneVsRestClassifier(LogisticRegression(**LOGREG)).fit(x["train"], bins["train"])
    return {f"{split}_bins_balanced_accuracy": float(balanced_accuracy_score(bins[split], clf.predict(x[split])))
            for split in ("val", "test")}


def probe_survival(x: dict[str, np.ndarray], data: SiteData, preprocessing: str = "raw") -> dict[str, float]:
    """Fit a penalised Cox model on the (preprocessed) training embeddings; val/test C-index (risk = partial hazard)."""
    return fit_survival_probe(x, data, preprocessing).metrics


def fit_survival_probe(x: dict[str, np.ndarray], data: SiteData, preprocessing: str = "raw") -> ProbeResult:
    """:func:`probe_survival`'s metrics and the test patients' risk (NaN for everyone when the Cox
    model did not converge, as the metrics are)."""
    from lifelines import CoxPHFitter
    from lifelines.exceptions import ConvergenceError

    x = preprocess(x, preprocessing)
    train = data.splits["train"]
    frame = pd.DataFrame(x["train"], columns=[f"e{i}" for i in range(x["train"].shape[1])])
    frame["time"], frame["event"] = train.months.astype(float), train.events.astype(int)
    cph = CoxPHFitter(penalizer=COX_PENALIZER)
    out = {}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            cph.fit(frame, duration_col="time", event_col="event")
    except ConvergenceError as err:
        log.warning("Cox model did not converge on %s embeddings: %s", data.site, err)
        test = data.splits["test"]
        return ProbeResult({f"{s}_{m}": float("nan") for s in ("val", "test") for m in ("c_index", "ipcw_c_index")},
                           Predictions.of(test, risk=np.full(len(test), np.nan)))
    predictions = None
    for split in ("val", "test"):
        ds = data.splits[split]
        test_frame = pd.DataFrame(x[split], columns=frame.columns[:-2])
        risk = np.asarray(cph.predict_partial_hazard(test_frame), dtype=float)
        m = M.survival_metrics(ds.events, ds.months, risk, *data.train_survival)
        out.update({f"{split}_{k}": v for k, v in m.items()})
        if split == "test":
            predictions = Predictions.of(ds, risk=risk)
    return ProbeResult(out, predictions)


def run_linear_probe(model: BenchModel, data: SiteData, cache_path: Path, preprocessing: str = "raw") -> ProbeResult:
    """Embed (cached) and probe for ``data.task`` with ``preprocessing``: val_/test_ metrics and test predictions."""
    for p in model.parameters():
        p.requires_grad_(False)
    x = cached_embeddings(model, data.splits, cache_path)
    if data.task == "subtype":
        return fit_subtype_probe(x, data, preprocessing=preprocessing)
    return fit_survival_probe(x, data, preprocessing=preprocessing)
