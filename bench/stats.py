"""Confidence intervals and paired tests of a table's rows: a paired bootstrap over test patients,
computed from the per-patient test predictions in the results store (no retraining).

The method, stated once (and under every table rendered with ``--ci``):

* **Resamples.** For each site and task, :data:`N_RESAMPLES` bootstrap resamples of the test patients
  (multinomial counts, a ``numpy.random.Generator`` seeded by :data:`BOOTSTRAP_SEED` and the site, task
  and patient list, so the same store gives the same intervals). Subtype rows are scored on patients
  outside the rare set (label -1), as their balanced accuracy is.
* **Seeds.** A table cell is the mean over seeds of each seed's test metric. Every seed of a row is
  scored on the *same* resampled patients and the resample's value is the mean over seeds, so the
  interval covers the patient sampling of the seed-averaged metric; the spread across seeds (std
  over seeds, ddof 1) is reported beside it, never mixed into it.
* **Metrics.** Balanced accuracy (scikit-learn's definition: mean recall over the classes present)
  and Harrell's C-index with scikit-survival's definition (:func:`bench.metrics.c_index`: comparable
  pairs, risk ties within 1e-8 count 1/2), the definitions the runs used; both are computed for all
  resamples at once from per-patient weights, and equal the stored metrics on the unresampled data.
* **Intervals.** The 2.5th and 97.5th percentiles of the resampled values (:data:`LEVEL` 95 %);
  resamples in which the metric is not computable (a C-index without comparable pairs) are dropped.
  "Overall" resamples every site independently and averages over sites.
* **Paired tests.** Each row against the table's reference row (ModalTune where the table has it,
  else the row with the best Overall): on the patients both rows scored, the same resamples give
  the difference row - reference per site, averaged over the sites where both rows' metric is
  computable (a NaN cell, e.g. a Cox probe that did not converge, leaves its site out); the two-sided
  p-value is ``min(1, 2 * min(1 + #{d <= 0}, 1 + #{d >= 0}) / (B + 1))`` over the ``B`` resampled
  differences ``d``. Rows of the same seeds are thus paired seed by seed (the difference of the seed
  means is the mean of the per-seed differences). The p-values of a table's rows are corrected with
  Holm's step-down method (:func:`holm`) per task; a row differs from the reference when its
  corrected p-value is below :data:`ALPHA`.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from bench.predictions import Predictions

N_RESAMPLES = 1000
LEVEL = 0.95
ALPHA = 0.05
BOOTSTRAP_SEED = 0
CORRECTION = "Holm (step-down Holm-Bonferroni)"
TIED_RISK_TOL = 1e-8  # scikit-survival's tied_tol: risks this close count as a tie (1/2)
REFERENCE_MODELS = ("modaltune", "modaltune_titan")  # a table's reference row, where present
OVERALL = "Overall"
METRIC_TASKS = ("subtype", "survival")  # the tasks whose test metric rests on stored predictions


# ---------------------------------------------------------------------------------------------- resampled metrics
def resample_weights(n: int, n_resamples: int, rng: np.random.Generator) -> np.ndarray:
    """``float [n_resamples, n]``: how often each of ``n`` patients is drawn in each bootstrap resample."""
    return rng.multinomial(n, np.full(n, 1.0 / n), size=n_resamples).astype(np.float64)


def weighted_balanced_accuracy(labels: np.ndarray, predicted: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Balanced accuracy of each resample (``weights [B, n]``: copies of each patient): the mean over the
    classes drawn of the weighted recall, as scikit-learn's ``balanced_accuracy_score`` on the resampled
    patients. ``labels`` / ``predicted`` ``int [n]`` (no rare-set patients)."""
    classes = np.unique(labels)
    onehot = (labels[:, None] == classes[None, :]).astype(np.float64)
    total = weights @ onehot
    hits = weights @ (onehot * (predicted == labels)[:, None])
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = np.where(total > 0, hits / np.where(total > 0, total, 1.0), np.nan)
    drawn = (total > 0).sum(axis=1)
    return np.where(drawn > 0, np.nansum(recall, axis=1) / np.maximum(drawn, 1), np.nan)


def concordance_pairs(events: np.ndarray, times: np.ndarray, risk: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(comparable, concordant)`` ``float [n, n]`` of scikit-survival's Harrell C-index: pair (i, j) is
    comparable when i died and j was followed longer (or censored at the same time); it scores 1 when
    i's risk is higher, 1/2 for a tie within :data:`TIED_RISK_TOL`, 0 otherwise."""
    events = np.asarray(events).astype(bool)
    times = np.asarray(times, dtype=np.float64)
    risk = np.asarray(risk, dtype=np.float64)
    later = times[None, :] > times[:, None]
    censored_tie = (times[None, :] == times[:, None]) & ~events[None, :]
    comparable = (events[:, None] & (later | censored_tie)).astype(np.float64)
    gap = risk[:, None] - risk[None, :]
    tie = np.abs(gap) <= TIED_RISK_TOL
    score = np.where(tie, 0.5, (gap > 0).astype(np.float64))
    return comparable, comparable * score


def weighted_c_index(events: np.ndarray, times: np.ndarray, risk: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Harrell's C-index of each resample (``weights [B, n]``), as :func:`bench.metrics.c_index` on the
    resampled patients: a pair of copies counts ``w_i * w_j`` times. NaN without comparable pairs or
    with a NaN risk (a probe that did not converge)."""
    if np.isnan(risk).any():
        return np.full(len(weights), np.nan)
    comparable, concordant = concordance_pairs(events, times, risk)
    denominator = np.einsum("bi,ij,bj->b", weights, comparable, weights, optimize=True)
    numerator = np.einsum("bi,ij,bj->b", weights, concordant, weights, optimize=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 0, numerator / np.where(denominator > 0, denominator, 1.0), np.nan)


def scored(pred: Predictions) -> np.ndarray:
    """Indices of the patients a row's metric is computed on: all for survival, the non-rare-set
    patients (label >= 0) for subtype."""
    return np.flatnonzero(pred.labels >= 0) if pred.task == "subtype" else np.arange(len(pred.case_ids))


def resampled_metric(pred: Predictions, case_ids: Sequence[str], weights: np.ndarray) -> np.ndarray:
    """The row's test metric on each resample of ``case_ids`` (``weights [B, len(case_ids)]``; every id
    must be among ``pred``'s patients)."""
    index = {c: i for i, c in enumerate(pred.case_ids)}
    take = np.array([index[c] for c in case_ids], dtype=np.int64)
    if pred.task == "subtype":
        return weighted_balanced_accuracy(pred.labels[take], pred.probs[take].argmax(axis=1), weights)
    return weighted_c_index(pred.events[take], pred.times[take], pred.risk[take], weights)


# ---------------------------------------------------------------------------------------------- tests
def bootstrap_p_value(differences: np.ndarray) -> float:
    """Two-sided p-value of "no difference" from resampled differences: twice the smaller share of
    resamples on either side of 0 (ties count on both sides), with the +1 of a Monte-Carlo p-value;
    NaN resamples are dropped. Identical rows (every difference 0) get 1."""
    d = differences[~np.isnan(differences)]
    if len(d) == 0:
        return float("nan")
    below, above = int((d <= 0).sum()), int((d >= 0).sum())
    return float(min(1.0, 2.0 * (1 + min(below, above)) / (len(d) + 1)))


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down correction (Holm-Bonferroni) of ``p_values``, in their order; NaN stays NaN and
    is not counted. The i-th smallest of m p-values becomes ``max_{j<=i} min(1, (m - j + 1) p_(j))``."""
    p = np.asarray(p_values, dtype=np.float64)
    valid = np.flatnonzero(~np.isnan(p))
    out = np.full(len(p), np.nan)
    order = valid[np.argsort(p[valid], kind="stable")]
    m, running = len(order), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out.tolist()


# ---------------------------------------------------------------------------------------------- a table
@dataclass(frozen=True)
class CellCI:
    """One cell: the mean over seeds (the table's value), its bootstrap interval, the std over seeds
    (None for one seed) and the counts it rests on."""

    mean: float
    low: float
    high: float
    seed_std: float | None
    n_seeds: int
    n_patients: int


@dataclass(frozen=True)
class RowTest:
    """A row against the reference: the difference of the mean over ``sites`` (row - reference), its
    p-value, the Holm-corrected p-value and whether it differs at :data:`ALPHA`."""

    difference: float
    p_value: float
    p_holm: float
    differs: bool
    sites: tuple[str, ...]


@dataclass
class TableStats:
    """Everything ``--ci`` renders: the ``tasks`` analysed, ``cells[(task, model, site or "Overall")]``,
    ``tests[(task, model)]``, the reference row per task, and the cells of rows stored without predictions."""

    tasks: tuple[str, ...] = ("subtype", "survival")
    cells: dict[tuple[str, str, str], CellCI] = field(default_factory=dict)
    tests: dict[tuple[str, str], RowTest] = field(default_factory=dict)
    reference: dict[str, str] = field(default_factory=dict)
    no_predictions: list[tuple[str, str, str]] = field(default_factory=list)  # (task, model, site)
    n_resamples: int = N_RESAMPLES
    level: float = LEVEL
    alpha: float = ALPHA
    seed: int = BOOTSTRAP_SEED
    correction: str = CORRECTION

    def describe(self, labels: dict[str, str] | None = None) -> list[str]:
        """The lines stating the method, the level and the correction (printed under the table);
        ``labels``: the reference row's display name per task (default: its model name)."""
        named = ", ".join(f"{t}: {(labels or {}).get(t, m)}" for t, m in self.reference.items())
        tests = "Tests: none (no row has stored predictions)."
        if named:
            tests = (f"Tests: each row against the reference row ({named}) on the difference of the mean over the "
                     "sites both rows ran, paired by patient and resample; two-sided bootstrap p-values corrected "
                     f"for multiple comparisons with {self.correction} over the rows of each task; * = differs from "
                     f"the reference at alpha = {self.alpha} after correction.")
        return [
            f"Intervals: {100 * self.level:.0f} % percentile intervals of {self.n_resamples} paired bootstrap "
            f"resamples of the test patients (numpy seed {self.seed}); every seed of a row is scored on the same "
            "resampled patients and averaged over seeds. sd = std over seeds (the seed spread), reported separately "
            "from the interval. Balanced accuracy ignores the rare set; C-index: Harrell's (scikit-survival).",
            tests,
        ]


class _Weights:
    """The bootstrap resamples of one table, drawn once per (task, site, patient list) so that rows and
    seeds scored on the same patients share them (and a store always gives the same draws)."""

    def __init__(self, n_resamples: int, seed: int):
        self.n_resamples = n_resamples
        self.seed = seed
        self._cache: dict[tuple[str, str, tuple[str, ...]], np.ndarray] = {}

    def __call__(self, task: str, site: str, case_ids: tuple[str, ...]) -> np.ndarray:
        key = (task, site, case_ids)
        if key not in self._cache:
            tag = zlib.crc32("\x1f".join((task, site, *case_ids)).encode())
            self._cache[key] = resample_weights(len(case_ids), self.n_resamples,
                                                np.random.default_rng([self.seed, tag]))
        return self._cache[key]


@dataclass
class _Cell:
    """The seeds' predictions of one (task, model, site) and the patients every seed scored."""

    seeds: list[Predictions]
    case_ids: tuple[str, ...]

    def resampled(self, case_ids: tuple[str, ...], weights: np.ndarray) -> np.ndarray:
        """``[B]``: the mean over seeds of each resample's metric."""
        return np.mean([resampled_metric(p, case_ids, weights) for p in self.seeds], axis=0)

    def per_seed(self) -> np.ndarray:
        """Each seed's metric on its scored patients (the stored test metric)."""
        ones = np.ones((1, len(self.case_ids)))
        return np.array([resampled_metric(p, self.case_ids, ones)[0] for p in self.seeds])


def _cells(rows: Sequence, load: Callable[[object], Predictions | None], models: Sequence[str], sites: Sequence[str],
           tasks: Sequence[str]) -> tuple[dict[tuple[str, str, str], _Cell], list[tuple[str, str, str]]]:
    """The cells of the table with predictions for every seed stored, and those without (a row
    stored before schema 2: its cell gets no interval)."""
    by_cell: dict[tuple[str, str, str], dict[int, object]] = {}
    for row in rows:  # rows come in store order (finished_at): a later run of a seed replaces an earlier one
        if row.task in tasks and row.model in models and row.site in sites:
            by_cell.setdefault((row.task, row.model, row.site), {})[row.seed] = row
    cells, missing = {}, []
    for key in sorted(by_cell):
        seeds = [load(by_cell[key][s]) for s in sorted(by_cell[key])]
        if any(p is None for p in seeds):
            missing.append(key)
            continue
        common = set.intersection(*(set(np.asarray(p.case_ids)[scored(p)]) for p in seeds))
        cells[key] = _Cell(seeds, tuple(sorted(common)))
    return cells, missing


def reference_row(models: Sequence[str], task: str, cells: dict, sites: Sequence[str]) -> str | None:
    """The row the others are tested against: the table's ModalTune row (:data:`REFERENCE_MODELS`) where it
    has predictions for ``task``, else the row covering the most sites with the best mean over them."""
    present = [m for m in models if any((task, m, s) in cells for s in sites)]
    for name in REFERENCE_MODELS:
        if name in present:
            return name
    if not present:
        return None

    def rank(model: str) -> tuple[int, float]:
        means = [float(np.mean(cells[(task, model, s)].per_seed())) for s in sites if (task, model, s) in cells]
        finite = [m for m in means if np.isfinite(m)]
        return len(finite), float(np.mean(finite)) if finite else -np.inf

    return max(present, key=rank)  # max keeps the first of equal rows: the table's order


def table_stats(rows: Sequence, load: Callable[[object], Predictions | None], models: Sequence[str],
                sites: Sequence[str], *, tasks: Sequence[str] = ("subtype", "survival"), overall: bool = True,
                n_resamples: int = N_RESAMPLES, seed: int = BOOTSTRAP_SEED) -> TableStats:
    """Intervals and paired tests of a table: ``rows`` are its store rows (:class:`bench.results.ResultRow`,
    one profile), ``load(row)`` their stored predictions (None if none), ``models`` its rows in order,
    ``sites`` its columns; ``overall`` adds the mean over sites as a column."""
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples}")
    tasks = [t for t in tasks if t in METRIC_TASKS]
    cells, missing = _cells(rows, load, models, sites, tasks)
    weights = _Weights(n_resamples, seed)
    out = TableStats(tasks=tuple(tasks), no_predictions=missing, n_resamples=n_resamples, seed=seed)
    for task in tasks:
        boot: dict[tuple[str, str], np.ndarray] = {}
        for model in models:
            for site in sites:
                cell = cells.get((task, model, site))
                if cell is None or not cell.case_ids:
                    continue
                boot[(model, site)] = cell.resampled(cell.case_ids, weights(task, site, cell.case_ids))
                out.cells[(task, model, site)] = _interval(cell.per_seed(), boot[(model, site)], len(cell.case_ids))
            if overall and all((model, s) in boot for s in sites):
                site_cells = [out.cells[(task, model, s)] for s in sites]
                mean = float(np.mean([c.mean for c in site_cells]))
                low, high = _percentiles(np.mean([boot[(model, s)] for s in sites], axis=0))
                out.cells[(task, model, OVERALL)] = CellCI(mean, low, high, None, min(c.n_seeds for c in site_cells),
                                                           sum(c.n_patients for c in site_cells))
        reference = reference_row(models, task, cells, sites)
        if reference is None:
            continue
        out.reference[task] = reference
        tested = {m: _paired_test(task, m, reference, cells, sites, weights) for m in models if m != reference}
        tested = {m: t for m, t in tested.items() if t is not None}
        corrected = holm([d_p[1] for d_p in tested.values()])
        for (model, (difference, p, used)), p_holm in zip(tested.items(), corrected):
            out.tests[(task, model)] = RowTest(difference, p, p_holm, bool(p_holm < ALPHA), used)
    return out


def _paired_test(task: str, model: str, reference: str, cells: dict, sites: Sequence[str],
                 weights: _Weights) -> tuple[float, float, tuple[str, ...]] | None:
    """``(difference, p-value, sites)`` of ``model`` - ``reference`` on the mean over the sites where both
    have a computable metric (paired: the patients both scored, the same resamples); None without such a site."""
    diffs, points, used = [], [], []
    for site in sites:
        row, ref = cells.get((task, model, site)), cells.get((task, reference, site))
        if row is None or ref is None:
            continue
        common = tuple(sorted(set(row.case_ids) & set(ref.case_ids)))
        if not common:
            continue
        ones = np.ones((1, len(common)))
        point = float(row.resampled(common, ones)[0] - ref.resampled(common, ones)[0])
        if not np.isfinite(point):
            continue
        w = weights(task, site, common)
        diffs.append(row.resampled(common, w) - ref.resampled(common, w))
        points.append(point)
        used.append(site)
    if not used:
        return None
    return float(np.mean(points)), bootstrap_p_value(np.mean(diffs, axis=0)), tuple(used)


def _percentiles(values: np.ndarray) -> tuple[float, float]:
    """The :data:`LEVEL` percentile interval of ``values`` (NaN resamples dropped; NaN if all are)."""
    finite = values[~np.isnan(values)]
    if len(finite) == 0:
        return float("nan"), float("nan")
    tail = 100.0 * (1.0 - LEVEL) / 2.0
    low, high = np.percentile(finite, [tail, 100.0 - tail])
    return float(low), float(high)


def _interval(per_seed: np.ndarray, boot: np.ndarray, n_patients: int) -> CellCI:
    """A cell from its seeds' metrics and its resampled seed means."""
    low, high = _percentiles(boot)
    std = float(np.std(per_seed, ddof=1)) if len(per_seed) > 1 else None
    return CellCI(float(np.mean(per_seed)), low, high, std, len(per_seed), n_patients)
