"""The patients of a synthetic cohort: latents, clinical variables and survival (``patients.csv``).

The generative model of a site's patient table (counts from :mod:`bench.data.synth_counts`; the
slides and expression these latents drive are in :mod:`bench.data.synth_omics`):

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

Signal strengths
    Set so that the benchmark can *rank* methods, never fitted to the paper's figures: through the
    harness (``small`` profile, seed 0) single-modality subtype balanced accuracy lands around
    0.7-0.9 (not saturated), single-modality survival C-index around 0.55-0.70, and models that
    fuse both modalities beat either alone. Per-site weights (:data:`SITE_SIGNAL`) only echo which
    modality dominated a site in the paper (WSI for BRCA and RCC subtyping, RNA for GBMLGG
    subtyping and RCC survival; weaker out-of-domain subtypes).

Treatment type and receptor status (BRCA only)
    The optional columns of :data:`models.clinical.CLINICAL_COLUMNS`, drawn from their own random
    stream (``STREAM_CLINICAL``) *after* everything above, given the patient's subtype group, stage
    and log-hazard ``eta``, so that adding them changed no other value. Receptor status follows the
    subtype: ``P(ER+) = sigmoid(logit(p_group) - 0.6 r)`` with ``p_group`` 0.75 (ductal), 0.95
    (lobular), 0.80 (rare set) and ``r`` the patient's ``eta`` standardised over the site; PR is
    positive with probability 0.85 when ER is, 0.08 otherwise; HER2 is positive with probability
    0.20 / 0.04 / 0.12 by group and equivocal with 0.06; ER and PR are indeterminate for 2 %.
    Treatment follows risk and receptors: ``P(type) = softmax`` of the scores chemotherapy
    ``1.2 r + 1.0 [ER, PR not positive, HER2 negative] + 0.6 [stage III-IV]``, hormone therapy
    ``1.2 [ER+] - 0.4 r``, targeted therapy ``2.0 [HER2+] - 0.5``, radiation therapy ``-0.3``, none
    ``-0.8 - 1.0 r``; so chemotherapy marks the short survivors and "none" the long ones, beyond
    what WSI and RNA carry (``eta`` holds their interaction). Each column is left empty for ~5 % of
    the patients (not recorded); at every other site all four are empty (not applicable).

A patient's WSI tumour phenotype (a latent here) and slide count are drawn with the table; the
patch features they shape are simulated in :mod:`bench.data.synth_omics`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from bench.data import format as fmt
from models.clinical import CLINICAL_COLUMNS, TREATMENT_TYPES
from models.paper.sites import ALL_SITES, site_info
from bench.data.synth_counts import (
    STREAM_CLINICAL,
    STREAM_PARAMS,
    STREAM_TABLE,
    ScaleSpec,
    check_seed,
    keyed_rng,
    resolve_sites,
    round_half_up,
    scale_spec,
    site_counts,
    site_key,
)

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

# WSI latents: slides per patient and the tumour phenotype.
SLIDES_PER_PATIENT_P = (0.83, 0.14, 0.03)
WSI_CLASS_SIGNAL = 3.0  # mean tumour phenotype along the patient's own group direction
WSI_PHENOTYPE_SD = 1.3  # patient-level spread of the tumour phenotype along every group direction

# Clinical model.
STAGE_P = (0.25, 0.35, 0.28, 0.12)
MISSING_P = 0.05
NO_RNA_FRACTION = 0.03

# Treatment type and receptor status (module docstring, "Treatment type and receptor status").
ER_POSITIVE_P = (0.75, 0.95, 0.80)  # ductal, lobular, rare set
ER_RISK_SLOPE = 0.6
PR_POSITIVE_P = {True: 0.85, False: 0.08}  # given ER positive / not
HER2_POSITIVE_P = (0.20, 0.04, 0.12)
HER2_EQUIVOCAL_P = 0.06
RECEPTOR_INDETERMINATE_P = 0.02


@dataclass(frozen=True)
class SignalWeights:
    """Per-site multipliers of the planted signal (1.0 = the module's base constants).

    ``wsi_class`` scales :data:`WSI_CLASS_SIGNAL`, ``rna_class``
    :data:`bench.data.synth_omics.RNA_CLASS_SHIFT`, ``wsi_hazard`` :data:`HAZARD_WSI` and
    ``rna_hazard`` :data:`HAZARD_RNA`; ``class_hazard[k]`` is added to the log-hazard of class ``k``
    (classes beyond its length, and the rare set, get 0).
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
    rng = keyed_rng(seed, site_key(site), STREAM_PARAMS)
    return _SiteParams(
        hazard_offset=rng.normal(0.0, HAZARD_GROUP_SD, n_groups),
        age_shift=rng.normal(0.0, 4.0, n_groups),
    )


@dataclass(frozen=True)
class SyntheticPatients:
    """The patient table of a synthetic cohort and the latents behind it.

    ``table`` has exactly :data:`bench.data.format.PATIENT_COLUMNS` then
    :data:`models.clinical.CLINICAL_COLUMNS` (sorted by site, case_id).
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
    """The patient table and latents of one site (module docstring), in case-number order."""
    info = site_info(site)
    counts = site_counts(site, spec)
    n_groups = counts.table.shape[0]
    params = _site_params(site, seed, n_groups)
    weights = SITE_SIGNAL[site]
    rng = keyed_rng(seed, site_key(site), STREAM_TABLE)

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
    has_rna[rng.choice(n, size=max(1, int(round_half_up(NO_RNA_FRACTION * n))), replace=False)] = 0
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
    for column, values in _treatment_and_receptors(site, seed, group, stage, risk).items():
        table[column] = values
    return table, latents


def _treatment_and_receptors(site: str, seed: int, group: np.ndarray, stage: np.ndarray,
                             risk: np.ndarray) -> dict[str, np.ndarray]:
    """The :data:`~models.clinical.CLINICAL_COLUMNS` of one site's patients (module docstring): drawn for
    BRCA from the site's own ``STREAM_CLINICAL`` generator, empty (not applicable) elsewhere."""
    n = len(group)
    if site != "BRCA":
        return {column: np.full(n, "", dtype=object) for column in CLINICAL_COLUMNS}
    rng = keyed_rng(seed, site_key(site), STREAM_CLINICAL)
    r = (risk - risk.mean()) / (risk.std() or 1.0)
    er, pr, her2 = _receptor_status(rng, group, r)
    columns = {"treatment_type": _treatment(rng, r, stage, er, pr, her2), "er_status": er, "pr_status": pr,
               "her2_status": her2}
    for values in columns.values():
        values[rng.random(n) < MISSING_P] = ""
    return columns


def _receptor_status(rng: np.random.Generator, group: np.ndarray,
                     r: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ER, PR and HER2 status (object arrays) given the subtype group and the standardised risk ``r``."""
    n = len(group)
    base = np.asarray(ER_POSITIVE_P)[group]
    er_pos = rng.random(n) < 1.0 / (1.0 + np.exp(-(np.log(base / (1.0 - base)) - ER_RISK_SLOPE * r)))
    pr_pos = rng.random(n) < np.where(er_pos, PR_POSITIVE_P[True], PR_POSITIVE_P[False])
    u = rng.random(n)
    her2_p = np.asarray(HER2_POSITIVE_P)[group]
    her2 = np.where(u < her2_p, "positive", np.where(u < her2_p + HER2_EQUIVOCAL_P, "equivocal", "negative"))
    er = np.where(er_pos, "positive", "negative").astype(object)
    pr = np.where(pr_pos, "positive", "negative").astype(object)
    er[rng.random(n) < RECEPTOR_INDETERMINATE_P] = "indeterminate"
    pr[rng.random(n) < RECEPTOR_INDETERMINATE_P] = "indeterminate"
    return er, pr, her2.astype(object)


def _treatment(rng: np.random.Generator, r: np.ndarray, stage: np.ndarray, er: np.ndarray, pr: np.ndarray,
               her2: np.ndarray) -> np.ndarray:
    """Treatment type (object array) drawn from the softmax of the scores in the module docstring."""
    triple_negative = (er != "positive") & (pr != "positive") & (her2 == "negative")
    scores = {
        "none": -0.8 - 1.0 * r,
        "chemotherapy": 1.2 * r + 1.0 * triple_negative + 0.6 * (stage >= 2),
        "hormone therapy": 1.2 * (er == "positive") - 0.4 * r,
        "targeted therapy": 2.0 * (her2 == "positive") - 0.5,
        "radiation therapy": np.full(len(r), -0.3),
    }
    logits = np.stack([scores[t] for t in TREATMENT_TYPES], axis=1)
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    return np.asarray(TREATMENT_TYPES, dtype=object)[_sample_categorical(rng, probs / probs.sum(1, keepdims=True))]


def simulate_patients(scale: str = "tiny", seed: int = 0, sites: Sequence[str] | None = None) -> SyntheticPatients:
    """The patient table (and its latents) of the cohort ``generate_cohort`` would write.

    Cheap (no patch features, no RNA): tests and the CLI use it to inspect counts and splits.
    """
    spec, seed = scale_spec(scale), check_seed(seed)
    parts = [_simulate_site(site, spec, seed) for site in resolve_sites(sites)]
    table = pd.concat([p[0] for p in parts], ignore_index=True)
    latents = pd.concat([p[1] for p in parts], ignore_index=True)
    order = np.lexsort((table["case_id"].to_numpy(), table["site"].map(ALL_SITES.index).to_numpy()))
    return SyntheticPatients(table.iloc[order].reset_index(drop=True), latents.iloc[order].reset_index(drop=True))


def build_patient_table(scale: str = "tiny", seed: int = 0, sites: Sequence[str] | None = None) -> pd.DataFrame:
    """``patients.csv`` of the cohort as a DataFrame: :data:`bench.data.format.PATIENT_COLUMNS`, then
    :data:`models.clinical.CLINICAL_COLUMNS`."""
    return simulate_patients(scale, seed, sites).table
