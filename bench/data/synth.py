"""Synthetic TCGA-like cohorts with planted, recoverable signal (the benchmark's default data).

``generate_cohort(out_dir, scale, seed, sites)`` writes a complete cohort in the format of
:mod:`bench.data.format` for the six sites of the ModalTune paper
(ICCV 2025): BRCA, GBMLGG, NSCLC, RCC (Table 2) and COADREAD, BLCA (Table 3, out of domain).
At ``small`` and ``paper`` scale every site has exactly the paper's Table 1 counts (patients per
split, events / censored, subtype class counts and rare set); ``tiny`` keeps their proportions at
about 10 %. Scales differ only in patches per patient, feature dimension, gene / pathway counts and
patient counts (:data:`SCALES`); the generative model below is the same at every scale.

Generative model, per site (all draws from ``numpy`` generators keyed by ``(seed, site, stream)``,
so a site's data do not depend on which other sites are generated):

Counts and splits
    Patients are the cells of a (group x split) table, group = subtype class or the rare set (label
    -1). Each group is split in the site's train/val/test proportions (Table 1, ~68/12/20) with the
    per-split totals exact and every cell within one patient of its proportional share
    (:func:`allocate`). Exactly ``E`` patients die (Table 1 events), the rest are censored.

Latents and clinical variables
    Each patient has a WSI latent ``z_wsi ~ N(0, 1)``, an RNA latent ``z_rna ~ N(0, 1)``, an AJCC
    stage ordinal ``s`` in 0..3 (I..IV) and an age (years, normal around 60 with a per-class shift).
    T, N and M are drawn given the stage (stage I: T1-2 N0 M0; stage IV: M1; ...), stage strings
    sometimes carry a letter sub-stage (``Stage IIIB``), and each of age, stage, T, N, M is left
    empty for ~5 % of patients. Labelled patients get a primary diagnosis of their class (Table 4),
    rare-set patients one of the site's rare-set diagnoses.

Hazard and survival
    The log-hazard is ``eta = 0.6 h_wsi z_wsi + 0.6 h_rna z_rna + 0.8 z_wsi z_rna + 0.45 (s - 1.5)
    + 0.15 (age - 60) / 10 + b_group + o_class`` with a random per-group offset
    ``b_group ~ N(0, 0.3^2)``, the site's hazard weights ``h_wsi``, ``h_rna`` and fixed class
    offsets ``o_class`` (:data:`SITE_SIGNAL`; ``o`` is 0 except glioblastoma, +1.5). The
    interaction term is invisible to either modality alone, so fusing WSI and RNA beats both. A
    latent death time ``T = Exp(1) / exp(eta)`` and a censoring time ``C = Exp(1) * exp(c)`` give
    the observation ``min(T, C)``; the shift ``c`` is chosen so that exactly ``E`` patients have
    ``T < C`` (Table 1 events), so censoring stays independent of the hazard while the totals are
    exact. Observed times are then mapped, preserving their order, onto the site's Table 5 bins: the
    patients with the shortest quarter of times fall uniformly into ``[0, e0)``, the next quarter
    into ``[e0, e1)``, then ``[e1, e2)``, and the longest quarter log-uniformly into ``[e2, e3]``.
    ``survival_bin`` comes from :func:`bench.data.format.survival_bin` with the same edges.

Whole-slide images (patch features)
    A patient has 1-3 slides (P = 0.83 / 0.14 / 0.03: 1.2 slides per patient, as the paper's
    4,099 slides over 3,418 patients) and a bag of ``U(lo, hi)`` patches split over them. Patches
    lie on a 256-px level-0 grid inside a compact tissue region. A patch feature is
    ``prototype[tissue type] + N(0, I) + slide stain offset``, tissue types drawn from a per-patient
    Dirichlet mixture of 8 background prototypes. In each slide a spatially contiguous *minority* of
    patches (10-25 % of the patient's bag: the tumour region) additionally carries
    ``sum_k phi_k u_k + 3.0 z_wsi u_prog``: the patient's tumour phenotype ``phi`` along the site's
    group directions ``u_k`` (one per class, the rare set has one of its own) and the WSI latent.
    The phenotype is patient-level, ``phi = 3.0 w onehot(group) + N(0, 1.3^2 I)`` (``w`` the site's
    ``wsi_class`` weight), so tumours of different classes overlap: a patient's morphology may look
    like another class however many patches are seen, and the achievable accuracy does not grow
    with the bag size (the same at every scale). Tumour patches stay far from the background (an
    offset of norm typically 4-5 against unit noise per dimension), so attention can find them. Signal directions are
    orthonormal and orthogonal to the background prototypes. Because only a minority of patches
    carries the signal, mean pooling dilutes it (tiny: ~0.69 balanced accuracy with a linear probe)
    where attention (MIL) pooling can isolate it.

Transcriptomics
    Genes (``G00001``...) belong to pathways (``PW001``...; every gene to at least one; at paper
    scale the membership of :func:`models.paper_omics.paper_pathways` with the paper's 331 pathway
    sizes). Pathway activities are ``N(0, 1)`` plus ``+1.0 r`` (``r`` the site's ``rna_class``
    weight) on 1-3 pathways specific to the patient's group (the rare set included) and
    ``+-1.5 z_rna`` on 4 prognostic pathways; the ``N(0, 1)`` activity is patient-level, so classes
    overlap as for the WSI phenotype. A gene's expression is the
    loading-weighted mean of its pathways' activities plus a per-site gene offset and
    ``N(0, 0.7^2)`` noise, i.e. values on a z-score-like scale as SurvPath's preprocessed RNA.
    ~3 % of patients have no RNA (``has_rna = 0``; absent from ``rna.parquet``).

Signal strengths
    Set so that the benchmark can *rank* methods, never fitted to the paper's figures: through the
    harness (``small`` profile, seed 0) single-modality subtype balanced accuracy lands around
    0.7-0.9 (not saturated), single-modality survival C-index around 0.55-0.70, and models that
    fuse both modalities beat either alone. Per-site weights (:data:`SITE_SIGNAL`) only echo which
    modality dominated a site in the paper (WSI for BRCA and RCC subtyping, RNA for GBMLGG
    subtyping and RCC survival; weaker out-of-domain subtypes).

Every file is written atomically into a temporary sibling directory which is renamed onto
``out_dir`` only when the cohort is complete. Files are byte-identical for the same seed and scale
with the same pandas / pyarrow / h5py; the content fingerprint stored in ``cohort.json``
(:mod:`bench.data.fingerprint`) is the same whatever their versions.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd

from bench.data import format as fmt
from bench.data.fingerprint import stamp_fingerprint
from models.paper.sites import ALL_SITES, SiteInfo, resolve_site, site_info
from models.paper.reference import paper_reference

logger = logging.getLogger(__name__)

GENERATOR = "bench.data.synth"


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

# Two-character TCGA tissue-source-site codes used in the synthetic barcodes (one per site).
SITE_CODES = {"BRCA": "A2", "GBMLGG": "06", "NSCLC": "55", "RCC": "B0", "COADREAD": "AA", "BLCA": "BT"}

# Hazard coefficients of the generative model (module docstring, "Hazard and survival"); the WSI
# and RNA ones are scaled per site by :data:`SITE_SIGNAL`.
HAZARD_WSI = 0.6
HAZARD_RNA = 0.6
HAZARD_INTERACTION = 0.8
HAZARD_STAGE = 0.45
HAZARD_AGE_PER_DECADE = 0.15
HAZARD_GROUP_SD = 0.3

# WSI model.
SLIDES_PER_PATIENT_P = (0.83, 0.14, 0.03)
N_PROTOTYPES = 8
PROTOTYPE_SCALE = 2.0
SLIDE_OFFSET_SD = 0.1
TUMOUR_FRACTION = (0.10, 0.25)
WSI_CLASS_SIGNAL = 3.0  # mean tumour phenotype along the patient's own group direction
WSI_PHENOTYPE_SD = 1.3  # patient-level spread of the tumour phenotype along every group direction
WSI_LATENT_SIGNAL = 3.0
MIN_PATCHES_PER_SLIDE = 4
SIGNAL_POOL = 24  # orthonormal signal directions the sites draw their class / prognostic ones from

# RNA model.
RNA_CLASS_SHIFT = 1.0
RNA_LATENT_SIGNAL = 1.5
N_PROGNOSTIC_PATHWAYS = 4
MAX_CLASS_PATHWAYS = 3
GENE_NOISE_SD = 0.7
SITE_GENE_OFFSET_SD = 0.3
EXTRA_MEMBERSHIP_P = 0.25

# Clinical model.
STAGE_P = (0.25, 0.35, 0.28, 0.12)
MISSING_P = 0.05
NO_RNA_FRACTION = 0.03


@dataclass(frozen=True)
class SignalWeights:
    """Per-site multipliers of the planted signal (1.0 = the module's base constants).

    ``wsi_class`` scales :data:`WSI_CLASS_SIGNAL`, ``rna_class`` :data:`RNA_CLASS_SHIFT`,
    ``wsi_hazard`` :data:`HAZARD_WSI` and ``rna_hazard`` :data:`HAZARD_RNA`; ``class_hazard[k]``
    is added to the log-hazard of class ``k`` (classes beyond its length, and the rare set, get 0).
    """

    wsi_class: float = 1.0
    rna_class: float = 1.0
    wsi_hazard: float = 1.0
    rna_hazard: float = 1.0
    class_hazard: tuple[float, ...] = ()


# Which modality carries more of each site's signal, echoing which one dominated in the ModalTune
# paper (Table 2: WSI models lead BRCA and RCC subtyping, RNA trivialises GBMLGG subtyping and leads
# RCC survival, and every model ranks GBMLGG survival well because glioblastoma is far deadlier than
# lower-grade glioma; Table 3: the out-of-domain COADREAD and BLCA subtypes are hard for every
# model). Only the direction of each difference follows the paper; the sizes are set so that
# methods stay separable through the harness (module docstring, "Signal strengths"), never fitted
# to the published figures. RCC's class signals are raised with its 3 classes (one of 8 %).
SITE_SIGNAL: dict[str, SignalWeights] = {
    "BRCA": SignalWeights(rna_class=0.85),
    "GBMLGG": SignalWeights(rna_class=2.5, class_hazard=(1.5, 0.0)),
    "NSCLC": SignalWeights(),
    "RCC": SignalWeights(wsi_class=1.45, rna_class=1.15, wsi_hazard=0.7, rna_hazard=1.4),
    "COADREAD": SignalWeights(wsi_class=0.7, rna_class=0.7),
    "BLCA": SignalWeights(wsi_class=0.85, rna_class=0.85),
}

# Independent random streams (second or third element of a generator's key).
_STREAM_TABLE, _STREAM_PARAMS, _STREAM_RNA, _STREAM_PATIENT = 0, 1, 2, 3
_GLOBAL_SITE_KEY = len(ALL_SITES)

_ROMAN = ("I", "II", "III", "IV")
_SUBSTAGE_LETTERS = ("AB", "ABC", "ABC", "AB")
# P(category | stage) for T1..T4, N0..N3 and M0 / M1 / MX, one row per stage I..IV.
_T_GIVEN_STAGE = np.array([[0.7, 0.3, 0, 0], [0.1, 0.5, 0.4, 0], [0, 0.15, 0.5, 0.35], [0, 0.2, 0.4, 0.4]])
_N_GIVEN_STAGE = np.array([[1, 0, 0, 0], [0.6, 0.4, 0, 0], [0, 0.45, 0.35, 0.2], [0.2, 0.3, 0.3, 0.2]])
_M_GIVEN_STAGE = np.array([[0.9, 0, 0.1], [0.9, 0, 0.1], [0.9, 0, 0.1], [0, 0.9, 0.1]])
_M_NAMES = np.array(["M0", "M1", "MX"])
# [stage, 0] = "Stage II"; [stage, 1 + j] = with the j-th sub-stage letter (padded by repeating the last).
_STAGE_NAMES = np.array(
    [
        [f"Stage {roman}"] + [f"Stage {roman}{letter}" for letter in letters.ljust(3, letters[-1])]
        for roman, letters in zip(_ROMAN, _SUBSTAGE_LETTERS)
    ],
    dtype=object,
)


def _rng(seed: int, *key: int) -> np.random.Generator:
    return np.random.default_rng([seed, *key])


def _site_key(site: str) -> int:
    return ALL_SITES.index(site)


def _round_half_up(x: np.ndarray | float) -> np.ndarray:
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
    spec = _scale_spec(scale)
    groups = list(info.class_counts) + ([info.rare_count] if info.rare_count else [])
    splits = [info.split_counts[s] for s in fmt.SPLITS]
    events = info.events
    if spec.count_fraction is not None:
        groups = [max(len(fmt.SPLITS), int(_round_half_up(g * spec.count_fraction))) for g in groups]
        n = sum(groups)
        splits = _largest_remainder(n, splits).tolist()
        events = int(np.clip(_round_half_up(n * info.events / info.n_patients), 1, n - 1))
    return SiteCounts(info.name, allocate(groups, splits, min_cell=1), int(events))


def _scale_spec(scale: str | ScaleSpec) -> ScaleSpec:
    if isinstance(scale, ScaleSpec):
        return scale
    try:
        return SCALES[scale]
    except KeyError:
        raise KeyError(f"unknown scale {scale!r}; valid scales: {', '.join(SCALES)}") from None


def _resolve_sites(sites: Sequence[str] | None) -> tuple[str, ...]:
    if sites is None:
        return ALL_SITES
    chosen = {resolve_site(s) for s in sites}
    if not chosen:
        raise ValueError("no sites given")
    return tuple(s for s in ALL_SITES if s in chosen)


def _check_seed(seed: int) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    return int(seed)


def _sample_categorical(rng: np.random.Generator, probs: np.ndarray) -> np.ndarray:
    """One draw per row of ``probs [n, K]`` (rows sum to 1): ``int [n]``."""
    cum = np.cumsum(probs, axis=1)
    u = rng.random(len(probs))[:, None]
    return np.minimum((u >= cum).sum(axis=1), probs.shape[1] - 1)


@dataclass(frozen=True)
class _SiteParams:
    """Per-site, per-group offsets of the log-hazard and of the mean age."""

    hazard_offset: np.ndarray  # [n_groups]
    age_shift: np.ndarray  # [n_groups]


def _site_params(site: str, seed: int, n_groups: int) -> _SiteParams:
    rng = _rng(seed, _site_key(site), _STREAM_PARAMS)
    return _SiteParams(
        hazard_offset=rng.normal(0.0, HAZARD_GROUP_SD, n_groups),
        age_shift=rng.normal(0.0, 4.0, n_groups),
    )


@dataclass(frozen=True)
class SyntheticPatients:
    """The patient table of a synthetic cohort and the latents behind it.

    ``table`` has exactly :data:`bench.data.format.PATIENT_COLUMNS` (sorted by site, case_id).
    ``latents`` is row-aligned with it: ``case_id``, ``group`` (class index; the rare set is
    ``n_classes``), ``z_wsi``, ``z_rna``, ``stage_ordinal`` (0..3, also where the stage string was
    left empty), ``age_years`` (also where left empty), ``risk`` (the log-hazard ``eta``; higher
    = shorter survival), ``n_slides`` and ``wsi_phenotype`` (``float [n_groups]`` per patient: the
    tumour phenotype's coordinates along the site's group directions). Latents are never written to disk; tests and diagnostics
    use them to check that the planted signal is recoverable.
    """

    table: pd.DataFrame
    latents: pd.DataFrame


def _clinical_strings(rng: np.random.Generator, stage: np.ndarray) -> dict[str, np.ndarray]:
    """AJCC stage / T / N / M strings consistent with ``stage int [n]`` (0..3 = I..IV)."""
    n = len(stage)
    t = _sample_categorical(rng, _T_GIVEN_STAGE[stage])
    n_cat = _sample_categorical(rng, _N_GIVEN_STAGE[stage])
    m = _sample_categorical(rng, _M_GIVEN_STAGE[stage])
    letter_u = rng.random(n)
    with_letter = rng.random(n) < 0.5
    n_letters = np.array([len(letters) for letters in _SUBSTAGE_LETTERS])
    column = np.where(with_letter, 1 + (letter_u * n_letters[stage]).astype(int), 0)
    return {
        "stage": _STAGE_NAMES[stage, column],
        "t": np.char.add("T", (t + 1).astype(str)).astype(object),
        "n": np.char.add("N", n_cat.astype(str)).astype(object),
        "m": _M_NAMES[m].astype(object),
    }


def _survival(
    rng: np.random.Generator, risk: np.ndarray, events: int, edges: Sequence[float]
) -> tuple[np.ndarray, np.ndarray]:
    """Months ``[n]`` and event ``[n]`` with exactly ``events`` deaths, driven by ``risk [n]``.

    Cox model with unit exponential baseline: latent death ``T = Exp(1) / exp(risk)``, censoring
    ``C = Exp(1) * exp(c)`` with ``c`` set between the ``events``-th and next largest
    ``log C - log T``, so that exactly ``events`` patients have ``T < C``. ``min(T, C)`` is then
    mapped by rank onto the site's Table 5 bins (a quarter of the patients per bin).
    """
    n = len(risk)
    log_t = np.log(rng.exponential(size=n)) - risk
    log_c = np.log(rng.exponential(size=n))
    margin = np.sort(log_c - log_t)[::-1]
    if events == 0:
        shift = -margin[0] - 1.0
    elif events == n:
        shift = -margin[-1] + 1.0
    else:
        shift = -(margin[events - 1] + margin[events]) / 2.0
    log_c = log_c + shift
    event = (log_t < log_c).astype(int)
    observed = np.minimum(log_t, log_c)
    quantile = (np.argsort(np.argsort(observed, kind="stable"), kind="stable") + 0.5) / n
    pos = quantile * fmt.N_SURVIVAL_BINS
    k = np.minimum(pos.astype(int), fmt.N_SURVIVAL_BINS - 1)
    u = pos - k
    e = np.asarray(edges, dtype=float)
    lower = np.concatenate([[0.0], e[:-1]])
    months = lower[k] + u * (e[k] - lower[k])
    last = k == fmt.N_SURVIVAL_BINS - 1
    months[last] = e[2] * (e[3] / e[2]) ** u[last]
    months = np.maximum(np.round(months, 2), 0.01)
    return months, event


def _simulate_site(site: str, spec: ScaleSpec, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    info = site_info(site)
    counts = site_counts(site, spec)
    n_groups = counts.table.shape[0]
    params = _site_params(site, seed, n_groups)
    weights = SITE_SIGNAL[site]
    rng = _rng(seed, _site_key(site), _STREAM_TABLE)

    group_split = np.repeat(np.arange(counts.table.size), counts.table.ravel())
    group, split_idx = np.divmod(group_split, len(fmt.SPLITS))
    n = len(group)
    order = rng.permutation(n)
    group, split_idx = group[order], split_idx[order]
    case_number = np.arange(1, n + 1)

    z_wsi = rng.standard_normal(n)
    z_rna = rng.standard_normal(n)
    stage = rng.choice(len(STAGE_P), size=n, p=STAGE_P)
    age = np.clip(rng.normal(60.0, 11.0, n) + params.age_shift[group], 20.0, 90.0).round(1)
    risk = (
        weights.wsi_hazard * HAZARD_WSI * z_wsi
        + weights.rna_hazard * HAZARD_RNA * z_rna
        + HAZARD_INTERACTION * z_wsi * z_rna
        + HAZARD_STAGE * (stage - 1.5)
        + HAZARD_AGE_PER_DECADE * (age - 60.0) / 10.0
        + params.hazard_offset[group]
        + np.pad(weights.class_hazard, (0, n_groups - len(weights.class_hazard)))[group]
    )
    months, event = _survival(rng, risk, counts.events, info.bin_upper_months)

    labelled = group < info.n_classes
    diag_u = rng.random(n)
    diagnosis = np.empty(n, dtype=object)
    for g in range(n_groups):
        names = info.class_names[g] if g < info.n_classes else info.rare_names
        members = group == g
        diagnosis[members] = np.asarray(names, dtype=object)[(diag_u[members] * len(names)).astype(int)]

    clinical = _clinical_strings(rng, stage)
    age_column = age.copy()
    age_column[rng.random(n) < MISSING_P] = np.nan
    for values in clinical.values():
        values[rng.random(n) < MISSING_P] = ""
    n_slides = rng.choice(len(SLIDES_PER_PATIENT_P), size=n, p=SLIDES_PER_PATIENT_P) + 1
    has_rna = np.ones(n, dtype=int)
    has_rna[rng.choice(n, size=max(1, int(_round_half_up(NO_RNA_FRACTION * n))), replace=False)] = 0
    phenotype = weights.wsi_class * WSI_CLASS_SIGNAL * np.eye(n_groups)[group]
    phenotype += WSI_PHENOTYPE_SD * rng.standard_normal((n, n_groups))

    code = SITE_CODES[site]
    case_ids = np.array([f"TCGA-{code}-{i:04d}" for i in case_number], dtype=object)
    slide_ids = [
        ";".join(f"{cid}-01Z-00-DX{j}" for j in range(1, k + 1)) for cid, k in zip(case_ids, n_slides.tolist())
    ]
    table = pd.DataFrame(
        {
            "case_id": case_ids,
            "site": site,
            "split": np.asarray(fmt.SPLITS, dtype=object)[split_idx],
            "label": np.where(labelled, group, fmt.RARE_LABEL),
            "primary_diagnosis": diagnosis,
            "survival_months": months,
            "event": event,
            "survival_bin": fmt.survival_bin(months, info.bin_upper_months),
            "age": age_column,
            "stage": clinical["stage"],
            "t": clinical["t"],
            "n": clinical["n"],
            "m": clinical["m"],
            "slide_ids": slide_ids,
            "has_rna": has_rna,
            "has_wsi": 1,
        },
        columns=list(fmt.PATIENT_COLUMNS),
    )
    latents = pd.DataFrame(
        {
            "case_id": case_ids,
            "group": group,
            "z_wsi": z_wsi,
            "z_rna": z_rna,
            "stage_ordinal": stage,
            "age_years": age,
            "risk": risk,
            "n_slides": n_slides,
            "wsi_phenotype": list(phenotype),
        }
    )
    return table, latents


def simulate_patients(scale: str = "tiny", seed: int = 0, sites: Sequence[str] | None = None) -> SyntheticPatients:
    """The patient table (and its latents) of the cohort ``generate_cohort`` would write.

    Cheap (no patch features, no RNA): tests and the CLI use it to inspect counts and splits.
    """
    spec, seed = _scale_spec(scale), _check_seed(seed)
    parts = [_simulate_site(site, spec, seed) for site in _resolve_sites(sites)]
    table = pd.concat([p[0] for p in parts], ignore_index=True)
    latents = pd.concat([p[1] for p in parts], ignore_index=True)
    order = np.lexsort((table["case_id"].to_numpy(), table["site"].map(ALL_SITES.index).to_numpy()))
    return SyntheticPatients(table.iloc[order].reset_index(drop=True), latents.iloc[order].reset_index(drop=True))


def build_patient_table(scale: str = "tiny", seed: int = 0, sites: Sequence[str] | None = None) -> pd.DataFrame:
    """``patients.csv`` of the cohort as a DataFrame with exactly :data:`bench.data.format.PATIENT_COLUMNS`."""
    return simulate_patients(scale, seed, sites).table


@dataclass(frozen=True)
class GeneStructure:
    """Genes, pathways and families of a synthetic cohort (shared by all its sites).

    ``membership`` is ``uint8 [G, P]`` (every gene in >= 1 pathway, every pathway non-empty);
    ``families`` ``int [G]`` indexes :data:`bench.data.format.GENE_FAMILIES`; ``loadings`` ``[G]``
    weight a gene's response to its pathways' activities.
    """

    genes: tuple[str, ...]
    pathways: tuple[str, ...]
    membership: np.ndarray
    families: np.ndarray
    loadings: np.ndarray

    @cached_property
    def mixing(self) -> np.ndarray:
        """``float32 [P, G]``: pathway activities -> expression (loading-weighted pathway mean)."""
        degree = self.membership.sum(axis=1, keepdims=True)
        return (self.membership * (self.loadings[:, None] / degree)).T.astype(np.float32)


def gene_structure(scale: str | ScaleSpec, seed: int = 0) -> GeneStructure:
    """Gene / pathway membership and gene families at ``scale``.

    At the paper's 4,987 genes x 331 pathways the membership is
    :func:`models.paper_omics.paper_pathways` (the reference pathway sizes and gene degrees of
    ModalTune's ``gene_pathway_processed_v2.csv``); otherwise each gene gets one primary pathway
    (round-robin over a shuffle, so none is empty) and, with probability 0.25, one more.
    """
    spec, seed = _scale_spec(scale), _check_seed(seed)
    rng = _rng(seed, _GLOBAL_SITE_KEY, _STREAM_TABLE)
    g, p = spec.n_genes, spec.n_pathways
    if g < p or p < 1:
        raise ValueError(f"need at least one gene per pathway, got {g} genes for {p} pathways")
    paper_shape = _paper_membership_shape()
    if (g, p) == paper_shape:
        from models.paper.omics import paper_pathways

        membership = paper_pathways(g).numpy().astype(np.uint8)
    else:
        membership = np.zeros((g, p), dtype=np.uint8)
        primary = rng.permutation(np.arange(g) % p)
        membership[np.arange(g), primary] = 1
        extra = rng.random(g) < EXTRA_MEMBERSHIP_P
        other = (primary + rng.integers(1, p, g)) % p if p > 1 else primary
        membership[np.flatnonzero(extra), other[extra]] = 1
    n_fam = len(fmt.GENE_FAMILIES)
    families = rng.permutation(np.concatenate([np.arange(n_fam), rng.integers(0, n_fam, max(g - n_fam, 0))]))[:g]
    return GeneStructure(
        genes=tuple(f"G{i:05d}" for i in range(1, g + 1)),
        pathways=tuple(f"PW{j:03d}" for j in range(1, p + 1)),
        membership=membership,
        families=families,
        loadings=rng.uniform(0.6, 1.4, g),
    )


def _paper_membership_shape() -> tuple[int, int]:
    """(genes, pathways) of the paper's transcriptomics (Table 1 facts: 4,987 x 331)."""
    facts = paper_reference()["table1_dataset"]["transcriptomics"]
    return int(facts["genes"]), int(facts["pathways"])


def _rna_matrix(site: str, latents: pd.DataFrame, n_groups: int, structure: GeneStructure, seed: int) -> np.ndarray:
    """Expression ``float32 [n, G]`` of a site's patients (row order of ``latents``).

    Pathway activities ``A = N(0, 1) + shift[group] + z_rna * prognostic`` ``[n, P]`` (``shift`` is
    ``0.8 x`` the site's ``rna_class`` weight on the group's pathways), then
    ``X = A @ mixing + site offset + N(0, 0.7^2)``.
    """
    rng = _rng(seed, _site_key(site), _STREAM_RNA)
    p = len(structure.pathways)
    per_group = max(1, min(MAX_CLASS_PATHWAYS, (p - N_PROGNOSTIC_PATHWAYS) // n_groups))
    n_prog = min(N_PROGNOSTIC_PATHWAYS, max(1, p - per_group * n_groups))
    chosen = rng.permutation(p)
    shift = np.zeros((n_groups, p), dtype=np.float32)
    for g in range(n_groups):
        shift[g, chosen[g * per_group : (g + 1) * per_group]] = RNA_CLASS_SHIFT * SITE_SIGNAL[site].rna_class
    prognostic = np.zeros(p, dtype=np.float32)
    prog_idx = chosen[-n_prog:]
    prognostic[prog_idx] = RNA_LATENT_SIGNAL * rng.choice([-1.0, 1.0], size=n_prog)
    site_offset = rng.normal(0.0, SITE_GENE_OFFSET_SD, len(structure.genes)).astype(np.float32)

    n = len(latents)
    activity = rng.standard_normal((n, p), dtype=np.float32)
    noise = rng.standard_normal((n, len(structure.genes)), dtype=np.float32) * np.float32(GENE_NOISE_SD)
    group = latents["group"].to_numpy()
    z_rna = latents["z_rna"].to_numpy(dtype=np.float32)
    activity += shift[group] + z_rna[:, None] * prognostic[None, :]
    return (activity @ structure.mixing + site_offset[None, :] + noise).astype(np.float32)


@dataclass(frozen=True)
class _WsiModel:
    """Feature-space geometry of a cohort and the per-site signal directions.

    ``prototypes [K, D]`` span the background subspace; ``directions[site] [n_groups + 1, D]``
    holds one unit vector per group and, last, the prognostic direction ``u_prog``. A site's signal
    directions are orthonormal and orthogonal to the prototypes (a thin QR of a random
    ``[D, K + 24]`` matrix; sites draw theirs from the same pool of 24, so they may share some).
    """

    prototypes: np.ndarray
    directions: dict[str, np.ndarray]


def _wsi_model(spec: ScaleSpec, seed: int, sites: Sequence[str]) -> _WsiModel:
    d = spec.feature_dim
    rng = _rng(seed, _GLOBAL_SITE_KEY, _STREAM_PARAMS)
    basis, _ = np.linalg.qr(rng.standard_normal((d, min(d, N_PROTOTYPES + SIGNAL_POOL))))
    background = basis[:, :N_PROTOTYPES]
    signal = basis[:, N_PROTOTYPES:]
    prototypes = PROTOTYPE_SCALE * rng.standard_normal((N_PROTOTYPES, N_PROTOTYPES)) @ background.T
    directions = {}
    for site in sites:
        n_dirs = site_counts(site, spec).table.shape[0] + 1
        if signal.shape[1] < n_dirs:
            raise ValueError(f"feature_dim {d} too small for {n_dirs} signal directions plus {N_PROTOTYPES} prototypes")
        site_rng = _rng(seed, _site_key(site), _STREAM_PARAMS, 1)
        directions[site] = signal[:, site_rng.choice(signal.shape[1], n_dirs, replace=False)].T
    return _WsiModel(prototypes.astype(np.float32), {s: v.astype(np.float32) for s, v in directions.items()})


def _slide_layout(rng: np.random.Generator, n: int, tumour_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """Coordinates ``int64 [n, 2]`` of one slide's patches and a tumour mask ``bool [n]``.

    Patches are the ``n`` grid cells closest (with jitter) to a tissue centre on a square grid of
    ``>= 2n`` cells, offset inside the slide; the tumour region is the ``max(1, round(f n))``
    patches closest to a random tissue patch. Level-0 pixels on the 256-px grid, row-major order.
    """
    side = int(np.ceil(np.sqrt(2 * n)))
    cells = np.stack(np.divmod(np.arange(side * side), side), axis=1)[:, ::-1].astype(float)  # (x, y)
    centre = rng.uniform(0, side, 2)
    score = np.linalg.norm(cells - centre, axis=1) / side + 0.35 * rng.random(side * side)
    chosen = np.sort(np.argpartition(score, n - 1)[:n])
    xy = cells[chosen]
    focus = xy[rng.integers(n)]
    n_tumour = max(1, int(_round_half_up(tumour_fraction * n)))
    closeness = np.linalg.norm(xy - focus, axis=1) + 0.1 * rng.random(n)
    tumour = np.zeros(n, dtype=bool)
    tumour[np.argpartition(closeness, n_tumour - 1)[:n_tumour]] = True
    origin = rng.integers(0, 64, 2)
    coords = ((xy + origin) * fmt.PATCH_SIZE_PX).astype(np.int64)
    return coords, tumour


def _patient_slides(
    seed: int,
    site: str,
    spec: ScaleSpec,
    wsi: _WsiModel,
    case_number: int,
    phenotype: np.ndarray,
    z_wsi: float,
    n_slides: int,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """``[(features float32 [n_s, D], coords int64 [n_s, 2]), ...]`` for each of a patient's slides.

    ``phenotype [n_groups]`` (the patient's ``wsi_phenotype`` latent) and ``z_wsi`` set the shift
    ``phenotype @ directions[:-1] + 3.0 z_wsi u_prog`` shared by the patient's tumour patches.
    """
    rng = _rng(seed, _site_key(site), _STREAM_PATIENT, case_number)
    lo, hi = spec.patches_per_patient
    n = int(rng.integers(lo, hi + 1))
    spare = n - MIN_PATCHES_PER_SLIDE * n_slides
    sizes = MIN_PATCHES_PER_SLIDE + rng.multinomial(spare, rng.dirichlet(np.full(n_slides, 2.0)))
    mixture = rng.dirichlet(np.ones(N_PROTOTYPES))
    tissue = np.minimum(np.searchsorted(np.cumsum(mixture), rng.random(n)), N_PROTOTYPES - 1)
    features = wsi.prototypes[tissue] + rng.standard_normal((n, spec.feature_dim), dtype=np.float32)
    slide_of = np.repeat(np.arange(n_slides), sizes)
    features += rng.normal(0.0, SLIDE_OFFSET_SD, (n_slides, spec.feature_dim)).astype(np.float32)[slide_of]
    fraction = rng.uniform(*TUMOUR_FRACTION)
    layouts = [_slide_layout(rng, int(s), fraction) for s in sizes]
    tumour = np.concatenate([t for _, t in layouts])
    directions = wsi.directions[site]
    shift = phenotype.astype(np.float32) @ directions[:-1] + np.float32(WSI_LATENT_SIGNAL * z_wsi) * directions[-1]
    features[tumour] += shift
    bounds = np.cumsum(sizes)[:-1]
    return [(f, c) for f, (c, _) in zip(np.split(features, bounds), layouts)]


def _check_target(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not (out / fmt.MANIFEST).is_file():
        raise FileExistsError(
            f"refusing to overwrite {out}: it is a non-empty directory without {fmt.MANIFEST} (not a cohort)"
        )


def _install(tmp: Path, out: Path) -> None:
    """Rename the finished cohort ``tmp`` onto ``out``, replacing an empty dir or an older cohort."""
    _check_target(out)
    if not out.exists():
        os.rename(tmp, out)
        return
    if not any(out.iterdir()):
        out.rmdir()
        os.rename(tmp, out)
        return
    retired = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
    retired.rmdir()
    os.rename(out, retired)
    try:
        os.rename(tmp, out)
    except BaseException:
        os.rename(retired, out)
        raise
    shutil.rmtree(retired, ignore_errors=True)


def _write_csv(target: Path, frame: pd.DataFrame) -> None:
    fmt.write_atomic(target, lambda p: frame.to_csv(p, index=False, lineterminator="\n", na_rep=""))


def _write_rna(target: Path, case_ids: Sequence[str], genes: Sequence[str], values: np.ndarray) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    columns = [pa.array(list(case_ids), type=pa.string())]
    columns += [pa.array(values[:, j], type=pa.float32()) for j in range(values.shape[1])]
    table = pa.Table.from_arrays(columns, names=["case_id", *genes])
    fmt.write_atomic(
        target, lambda p: pq.write_table(table, p, compression="zstd", use_dictionary=False, write_statistics=False)
    )


def _write_cohort(root: Path, spec: ScaleSpec, seed: int, sites: tuple[str, ...]) -> None:
    sim = simulate_patients(spec.name, seed, sites)
    table, latents = sim.table, sim.latents
    structure = gene_structure(spec, seed)
    wsi = _wsi_model(spec, seed, sites)
    features_dir = root / fmt.FEATURES_DIR
    features_dir.mkdir()

    rna_blocks = []
    for site in sites:
        start = time.perf_counter()
        rows = np.flatnonzero(table["site"].to_numpy() == site)
        site_latents = latents.iloc[rows]
        n_groups = site_counts(site, spec).table.shape[0]
        rna = _rna_matrix(site, site_latents, n_groups, structure, seed)
        rna_blocks.append(rna[table["has_rna"].to_numpy()[rows] == 1])
        for row in site_latents.itertuples(index=False):
            case_number = int(row.case_id.rsplit("-", 1)[1])
            slides = _patient_slides(
                seed, site, spec, wsi, case_number, row.wsi_phenotype, float(row.z_wsi), int(row.n_slides)
            )
            for j, (features, coords) in enumerate(slides, start=1):
                fmt.write_features_h5(features_dir / f"{row.case_id}-01Z-00-DX{j}.h5", features, coords)
        logger.info("synth %s: %d patients in %.1fs", site, len(rows), time.perf_counter() - start)

    _write_csv(root / fmt.PATIENTS, table)
    with_rna = table["has_rna"].to_numpy() == 1
    _write_rna(root / fmt.RNA, table["case_id"][with_rna].tolist(), structure.genes, np.concatenate(rna_blocks))
    pathways = pd.DataFrame(structure.membership.astype(int), columns=list(structure.pathways))
    pathways.insert(0, "gene", list(structure.genes))
    _write_csv(root / fmt.PATHWAYS, pathways)
    family_names = np.asarray(fmt.GENE_FAMILIES)[structure.families]
    families = pd.DataFrame({"gene": list(structure.genes), "family": family_names})
    _write_csv(root / fmt.FAMILIES, families)

    site_entries = {}
    for site in sites:
        info: SiteInfo = site_info(site)
        site_entries[site] = {
            "classes": {str(k): names[0] for k, names in enumerate(info.class_names)},
            "bin_upper_months": list(info.bin_upper_months),
        }
    fmt.write_json(
        root / fmt.MANIFEST,
        fmt.manifest(
            name=f"synthetic-{spec.name}-seed{seed}",
            provenance={"kind": "synthetic", "generator": GENERATOR, "seed": seed, "scale": spec.name},
            sites=site_entries,
            feature_dim=spec.feature_dim,
            genes=structure.genes,
            n_pathways=len(structure.pathways),
        ),
    )
    stamp_fingerprint(root)


def generate_cohort(
    out_dir: str | Path, scale: str = "tiny", seed: int = 0, sites: Sequence[str] | None = None
) -> Path:
    """Write a complete synthetic cohort to ``out_dir`` and return its path.

    ``scale`` is a key of :data:`SCALES`; ``sites`` (case-insensitive, default all six) selects
    sites without changing any selected site's data. The cohort is built in a temporary sibling
    directory and renamed onto ``out_dir`` at the end, so an interrupted run leaves nothing behind;
    ``out_dir`` may be absent, empty or an earlier cohort (replaced), and any other non-empty
    directory is refused with ``FileExistsError``.
    """
    spec, seed = _scale_spec(scale), _check_seed(seed)
    chosen = _resolve_sites(sites)
    out = Path(out_dir).absolute()
    _check_target(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    try:
        _write_cohort(tmp, spec, seed, chosen)
        _install(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    logger.info(
        "synthetic %s cohort (seed %d, %s) written to %s in %.1fs",
        spec.name, seed, ",".join(chosen), out, time.perf_counter() - start,
    )
    return out
