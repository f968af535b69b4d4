"""Size, counts and random streams of a synthetic cohort (:mod:`bench.data.synth` writes it).

Scales (:data:`SCALES`) differ only in patches per patient, feature dimension, gene / pathway
counts and patient counts; the generative model (:mod:`bench.data.synth_patients`,
:mod:`bench.data.synth_omics`) is the same at every scale. At ``small`` and ``paper`` scale every
site has exactly the paper's Table 1 counts (patients per split, events / censored, subtype class
counts and rare set); ``tiny`` keeps their proportions at about 10 %.

Counts and splits
    Patients are the cells of a (group x split) table, group = subtype class or the rare set (label
    -1). Each group is split in the site's train/val/test proportions (Table 1, ~68/12/20) with the
    per-split totals exact and every cell within one patient of its proportional share
    (:func:`allocate`). Exactly ``E`` patients die (Table 1 events), the rest are censored.

Random streams
    Every draw of the generator comes from a ``numpy`` generator keyed by ``(seed, site, stream)``
    (:func:`keyed_rng`), so a site's data do not depend on which other sites are generated; draws
    shared by all sites use the key :data:`GLOBAL_SITE_KEY` in place of a site's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from bench.data import format as fmt
from models.paper.sites import ALL_SITES, resolve_site, site_info


@dataclass(frozen=True)
class ScaleSpec:
    """Size of a synthetic cohort; scales differ in nothing else.

    ``count_fraction`` scales every Table 1 count (None = exact counts); ``patches_per_patient`` is
    the inclusive range of a patient's bag size (all slides together).
    """

    name: str
    feature_dim: int
    patches_per_patient: tuple[int, int]
    n_genes: int
    n_pathways: int
    count_fraction: float | None


SCALES: dict[str, ScaleSpec] = {
    "tiny": ScaleSpec("tiny", 32, (16, 64), 200, 20, 0.1),
    "small": ScaleSpec("small", 64, (32, 128), 400, 32, None),
    "paper": ScaleSpec("paper", 1536, (256, 1024), 4987, 331, None),
}


# Independent random streams (second or third element of a generator's key).
STREAM_TABLE, STREAM_PARAMS, STREAM_RNA, STREAM_PATIENT = 0, 1, 2, 3
# Treatment type and receptor status (BRCA): their own stream, so adding them left every other value as it was.
STREAM_CLINICAL = 4
GLOBAL_SITE_KEY = len(ALL_SITES)


def keyed_rng(seed: int, *key: int) -> np.random.Generator:
    """The generator of the random stream ``(seed, *key)`` (key: site, stream, ...)."""
    return np.random.default_rng([seed, *key])


def site_key(site: str) -> int:
    """A site's element of a stream key: its index in :data:`models.paper.sites.ALL_SITES`."""
    return ALL_SITES.index(site)


def round_half_up(x: np.ndarray | float) -> np.ndarray:
    """Round to the nearest integer, halves up (not numpy's half-to-even)."""
    return np.floor(np.asarray(x, dtype=float) + 0.5).astype(int)


def _largest_remainder(total: int, weights: Sequence[float]) -> np.ndarray:
    """Integers proportional to ``weights`` summing exactly to ``total`` (Hamilton's method)."""
    w = np.asarray(weights, dtype=float)
    quota = total * w / w.sum()
    counts = np.floor(quota).astype(int)
    order = np.argsort(-(quota - counts), kind="stable")
    counts[order[: total - counts.sum()]] += 1
    return counts


def allocate(row_totals: Sequence[int], col_totals: Sequence[int], min_cell: int = 0) -> np.ndarray:
    """Integer table ``[R, C]`` with exact margins and each cell within one of its proportional share.

    The proportional share of cell (r, c) is ``row_r * col_c / total``. Cells take the floor of their
    share; the leftover units (at most ``C - 1`` per row) are placed by Ryser's greedy rule (each
    row, largest leftover first, tops up the columns with the largest leftover demand, ties to the
    largest fractional part), which realises the margins whenever a 0/1 top-up exists, and one
    always does. Then, in rows of at least ``min_cell * C``, cells below ``min_cell`` are lifted by
    margin-preserving 2x2 swaps ``(r, c)+1, (r, c')-1, (r', c)-1, (r', c')+1`` (a lifted cell may
    end up more than one from its share). Used to stratify a site's subtype groups over train /
    val / test (splits are patient-level 68/12/20, stratified by subtype).
    """
    rows = np.asarray(row_totals, dtype=int)
    cols = np.asarray(col_totals, dtype=int)
    if rows.sum() != cols.sum() or (rows < 0).any() or (cols < 0).any():
        raise ValueError(f"margins must be non-negative with equal sums, got {rows.tolist()} and {cols.tolist()}")
    total = max(int(rows.sum()), 1)
    share = np.outer(rows, cols) / total
    table = np.floor(share).astype(int)
    frac = share - table
    row_left = rows - table.sum(1)
    col_left = cols - table.sum(0)
    for r in np.argsort(-row_left, kind="stable"):
        if row_left[r] == 0:
            continue
        order = np.lexsort((-frac[r], -col_left))[: row_left[r]]
        table[r, order] += 1
        col_left[order] -= 1
    if (col_left != 0).any() or (table < 0).any():
        raise RuntimeError("allocation failed to realise the margins")
    for r in range(len(rows)):
        if rows[r] < min_cell * len(cols):
            continue
        for c in np.flatnonzero(table[r] < min_cell):
            c_from = int(np.argmax(table[r]))
            donors = table[:, c] - np.where(rows >= min_cell * len(cols), min_cell, 0)
            donors[r] = -1
            r_from = int(np.argmax(donors))
            if donors[r_from] <= 0 or table[r, c_from] <= min_cell:
                continue
            table[r, c] += 1
            table[r, c_from] -= 1
            table[r_from, c] -= 1
            table[r_from, c_from] += 1
    return table


@dataclass(frozen=True)
class SiteCounts:
    """Patient counts of one synthetic site.

    ``table[g, s]`` = patients of group ``g`` in split ``s`` (groups = the site's classes, then the
    rare set when it has one; splits in :data:`bench.data.format.SPLITS` order); ``events`` deaths.
    """

    site: str
    table: np.ndarray
    events: int

    @property
    def n_patients(self) -> int:
        return int(self.table.sum())


def site_counts(site: str, scale: str | ScaleSpec) -> SiteCounts:
    """Counts of ``site`` at ``scale``: exact Table 1 counts, or each count scaled (``tiny``).

    At a scaled size every group keeps at least 3 patients (one per split) and every split holds
    every group; the per-split totals follow the site's Table 1 split proportions.
    """
    info = site_info(site)
    spec = scale_spec(scale)
    groups = list(info.class_counts) + ([info.rare_count] if info.rare_count else [])
    splits = [info.split_counts[s] for s in fmt.SPLITS]
    events = info.events
    if spec.count_fraction is not None:
        groups = [max(len(fmt.SPLITS), int(round_half_up(g * spec.count_fraction))) for g in groups]
        n = sum(groups)
        splits = _largest_remainder(n, splits).tolist()
        events = int(np.clip(round_half_up(n * info.events / info.n_patients), 1, n - 1))
    return SiteCounts(info.name, allocate(groups, splits, min_cell=1), int(events))


def scale_spec(scale: str | ScaleSpec) -> ScaleSpec:
    """The :class:`ScaleSpec` of a scale name (a spec is returned as it is)."""
    if isinstance(scale, ScaleSpec):
        return scale
    try:
        return SCALES[scale]
    except KeyError:
        raise KeyError(f"unknown scale {scale!r}; valid scales: {', '.join(SCALES)}") from None


def resolve_sites(sites: Sequence[str] | None) -> tuple[str, ...]:
    """Site names (case-insensitive; None = all six) as upper-case names in :data:`ALL_SITES` order."""
    if sites is None:
        return ALL_SITES
    chosen = {resolve_site(s) for s in sites}
    if not chosen:
        raise ValueError("no sites given")
    return tuple(s for s in ALL_SITES if s in chosen)


def check_seed(seed: int) -> int:
    """``seed`` as an int, refusing anything but a non-negative integer."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    return int(seed)
