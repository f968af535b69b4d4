"""The modalities of a synthetic cohort: genes and pathways, RNA expression and WSI patch features.

Driven by the patient latents of :mod:`bench.data.synth_patients` (``z_wsi``, ``z_rna``, group,
tumour phenotype, slide count); the geometry and signal strengths:

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
    scale the membership of :func:`models.paper.omics.paper_pathways` with the paper's 331 pathway
    sizes). Pathway activities are ``N(0, 1)`` plus ``+1.0 r`` (``r`` the site's ``rna_class``
    weight) on 1-3 pathways specific to the patient's group (the rare set included) and
    ``+-1.5 z_rna`` on 4 prognostic pathways; the ``N(0, 1)`` activity is patient-level, so classes
    overlap as for the WSI phenotype. A gene's expression is the
    loading-weighted mean of its pathways' activities plus a per-site gene offset and
    ``N(0, 0.7^2)`` noise, i.e. values on a z-score-like scale as SurvPath's preprocessed RNA.
    ~3 % of patients have no RNA (``has_rna = 0``; absent from ``rna.parquet``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import pandas as pd

from bench.data import format as fmt
from bench.data.synth_counts import (
    GLOBAL_SITE_KEY,
    STREAM_PARAMS,
    STREAM_PATIENT,
    STREAM_RNA,
    STREAM_TABLE,
    ScaleSpec,
    check_seed,
    keyed_rng,
    round_half_up,
    scale_spec,
    site_counts,
    site_key,
)
from bench.data.synth_patients import SITE_SIGNAL
from models.paper.reference import paper_reference

# WSI model.
N_PROTOTYPES = 8
PROTOTYPE_SCALE = 2.0
SLIDE_OFFSET_SD = 0.1
TUMOUR_FRACTION = (0.10, 0.25)
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
    :func:`models.paper.omics.paper_pathways` (the reference pathway sizes and gene degrees of
    ModalTune's ``gene_pathway_processed_v2.csv``); otherwise each gene gets one primary pathway
    (round-robin over a shuffle, so none is empty) and, with probability 0.25, one more.
    """
    spec, seed = scale_spec(scale), check_seed(seed)
    rng = keyed_rng(seed, GLOBAL_SITE_KEY, STREAM_TABLE)
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


def rna_matrix(site: str, latents: pd.DataFrame, n_groups: int, structure: GeneStructure, seed: int) -> np.ndarray:
    """Expression ``float32 [n, G]`` of a site's patients (row order of ``latents``).

    Pathway activities ``A = N(0, 1) + shift[group] + z_rna * prognostic`` ``[n, P]`` (``shift`` is
    ``0.8 x`` the site's ``rna_class`` weight on the group's pathways), then
    ``X = A @ mixing + site offset + N(0, 0.7^2)``.
    """
    rng = keyed_rng(seed, site_key(site), STREAM_RNA)
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
class WsiModel:
    """Feature-space geometry of a cohort and the per-site signal directions.

    ``prototypes [K, D]`` span the background subspace; ``directions[site] [n_groups + 1, D]``
    holds one unit vector per group and, last, the prognostic direction ``u_prog``. A site's signal
    directions are orthonormal and orthogonal to the prototypes (a thin QR of a random
    ``[D, K + 24]`` matrix; sites draw theirs from the same pool of 24, so they may share some).
    """

    prototypes: np.ndarray
    directions: dict[str, np.ndarray]


def wsi_model(spec: ScaleSpec, seed: int, sites: Sequence[str]) -> WsiModel:
    """The background prototypes and each site's signal directions at ``spec`` (see :class:`WsiModel`)."""
    d = spec.feature_dim
    rng = keyed_rng(seed, GLOBAL_SITE_KEY, STREAM_PARAMS)
    basis, _ = np.linalg.qr(rng.standard_normal((d, min(d, N_PROTOTYPES + SIGNAL_POOL))))
    background = basis[:, :N_PROTOTYPES]
    signal = basis[:, N_PROTOTYPES:]
    prototypes = PROTOTYPE_SCALE * rng.standard_normal((N_PROTOTYPES, N_PROTOTYPES)) @ background.T
    directions = {}
    for site in sites:
        n_dirs = site_counts(site, spec).table.shape[0] + 1
        if signal.shape[1] < n_dirs:
            raise ValueError(f"feature_dim {d} too small for {n_dirs} signal directions plus {N_PROTOTYPES} prototypes")
        site_rng = keyed_rng(seed, site_key(site), STREAM_PARAMS, 1)
        directions[site] = signal[:, site_rng.choice(signal.shape[1], n_dirs, replace=False)].T
    return WsiModel(prototypes.astype(np.float32), {s: v.astype(np.float32) for s, v in directions.items()})


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
    n_tumour = max(1, int(round_half_up(tumour_fraction * n)))
    closeness = np.linalg.norm(xy - focus, axis=1) + 0.1 * rng.random(n)
    tumour = np.zeros(n, dtype=bool)
    tumour[np.argpartition(closeness, n_tumour - 1)[:n_tumour]] = True
    origin = rng.integers(0, 64, 2)
    coords = ((xy + origin) * fmt.PATCH_SIZE_PX).astype(np.int64)
    return coords, tumour


def patient_slides(
    seed: int,
    site: str,
    spec: ScaleSpec,
    wsi: WsiModel,
    case_number: int,
    phenotype: np.ndarray,
    z_wsi: float,
    n_slides: int,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """``[(features float32 [n_s, D], coords int64 [n_s, 2]), ...]`` for each of a patient's slides.

    ``phenotype [n_groups]`` (the patient's ``wsi_phenotype`` latent) and ``z_wsi`` set the shift
    ``phenotype @ directions[:-1] + 3.0 z_wsi u_prog`` shared by the patient's tumour patches.
    """
    rng = keyed_rng(seed, site_key(site), STREAM_PATIENT, case_number)
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
