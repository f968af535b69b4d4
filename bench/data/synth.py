"""Synthetic TCGA-like cohorts with planted, recoverable signal (the benchmark's default data).

``generate_cohort(out_dir, scale, seed, sites)`` writes a complete cohort in the format of
:mod:`bench.data.format` for the six sites of the ModalTune paper
(ICCV 2025): BRCA, GBMLGG, NSCLC, RCC (Table 2) and COADREAD, BLCA (Table 3, out of domain).
At ``small`` and ``paper`` scale every site has exactly the paper's Table 1 counts (patients per
split, events / censored, subtype class counts and rare set); ``tiny`` keeps their proportions at
about 10 %. Scales differ only in patches per patient, feature dimension, gene / pathway counts and
patient counts (:data:`bench.data.synth_counts.SCALES`); the generative model is the same at every
scale. It is split by concern, each module's docstring stating its part:
:mod:`bench.data.synth_counts` (scales, Table 1 counts and splits, random streams),
:mod:`bench.data.synth_patients` (latents, clinical variables, survival: the patient table) and
:mod:`bench.data.synth_omics` (gene structure, RNA expression, WSI patch features); this module
writes the files.

Every file is written atomically into a private sibling directory which is published onto
``out_dir`` only when the cohort is complete (:mod:`bench.data.publish`). Files are byte-identical
for the same seed and scale with the same pandas / pyarrow / h5py; the content fingerprint stored in
``cohort.json`` (:mod:`bench.data.fingerprint`) is the same whatever their versions.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from bench.data import format as fmt
from bench.data.publish import publish_cohort
from models.paper.sites import SiteInfo, site_info
from bench.data.synth_counts import ScaleSpec, check_seed, resolve_sites, scale_spec, site_counts
from bench.data.synth_omics import gene_structure, patient_slides, rna_matrix, wsi_model
from bench.data.synth_patients import simulate_patients

logger = logging.getLogger(__name__)

GENERATOR = "bench.data.synth"


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
    """Every file of the cohort of ``sites`` at ``spec`` and ``seed`` into the empty directory ``root``."""
    sim = simulate_patients(spec.name, seed, sites)
    table, latents = sim.table, sim.latents
    structure = gene_structure(spec, seed)
    wsi = wsi_model(spec, seed, sites)
    features_dir = root / fmt.FEATURES_DIR
    features_dir.mkdir()

    rna_blocks = []
    for site in sites:
        start = time.perf_counter()
        rows = np.flatnonzero(table["site"].to_numpy() == site)
        site_latents = latents.iloc[rows]
        n_groups = site_counts(site, spec).table.shape[0]
        rna = rna_matrix(site, site_latents, n_groups, structure, seed)
        rna_blocks.append(rna[table["has_rna"].to_numpy()[rows] == 1])
        for row in site_latents.itertuples(index=False):
            case_number = int(row.case_id.rsplit("-", 1)[1])
            slides = patient_slides(
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


def generate_cohort(
    out_dir: str | Path, scale: str = "tiny", seed: int = 0, sites: Sequence[str] | None = None
) -> Path:
    """Write a complete synthetic cohort to ``out_dir`` and return its path.

    ``scale`` is a key of :data:`bench.data.synth_counts.SCALES`; ``sites`` (case-insensitive,
    default all six) selects sites without changing any selected site's data. The cohort is
    published by :func:`bench.data.publish.publish_cohort`: built in a private sibling directory,
    its content fingerprint stamped, then renamed onto ``out_dir``, so an interrupted run leaves
    nothing behind; ``out_dir`` may be absent, empty or an earlier cohort (replaced), and anything
    else is refused with :class:`~bench.errors.CohortTargetError` (a ``FileExistsError``).
    """
    spec, seed = scale_spec(scale), check_seed(seed)
    chosen = resolve_sites(sites)
    out = Path(out_dir).absolute()
    start = time.perf_counter()
    with publish_cohort(out) as private:
        _write_cohort(private, spec, seed, chosen)
    logger.info(
        "synthetic %s cohort (seed %d, %s) written to %s in %.1fs",
        spec.name, seed, ",".join(chosen), out, time.perf_counter() - start,
    )
    return out
