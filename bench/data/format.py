"""The on-disk cohort format, defined here (README "Cohort format" summarises it): names, columns, atomic writers.

A cohort is a directory::

    cohort.json          manifest (see :func:`manifest`)
    patients.csv         one row per patient, columns :data:`PATIENT_COLUMNS` (+ optional extras)
    features/<slide>.h5  CLAM/TRIDENT layout: "features" float [N, D], "coords" int [N, 2]
    rna.parquet          column "case_id" then one float column per gene, cohort gene order
    pathways.csv         column "gene" then one 0/1 column per pathway (combine_comps.csv layout)
    gene_families.csv    columns "gene", "family" (one of :data:`GENE_FAMILIES`)
    text/<encoder>.pt    cached text embeddings per case

Every writer writes to a temporary file in the target directory and renames it into place, so a
reader never sees a half-written file.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np

FORMAT_VERSION = 1
MANIFEST = "cohort.json"
PATIENTS = "patients.csv"
RNA = "rna.parquet"
PATHWAYS = "pathways.csv"
FAMILIES = "gene_families.csv"
FEATURES_DIR = "features"
TEXT_DIR = "text"
PATCH_SIZE_PX = 256

PATIENT_COLUMNS = (
    "case_id", "site", "split", "label", "primary_diagnosis", "survival_months", "event",
    "survival_bin", "age", "stage", "t", "n", "m", "slide_ids", "has_rna", "has_wsi",
)
SPLITS = ("train", "val", "test")
N_SURVIVAL_BINS = 4
RARE_LABEL = -1

# MCAT's six gene families, in MCAT's order.
GENE_FAMILIES = (
    "tumor suppressor genes",
    "oncogenes",
    "protein kinases",
    "cell differentiation markers",
    "transcription factors",
    "cytokines and growth factors",
)


def survival_bin(months: np.ndarray | Sequence[float], upper_edges: Sequence[float]) -> np.ndarray:
    """Discrete survival bin 0..3 of each time, from a site's 4 upper bin edges (Table 5).

    Bin 0 is "before e0 months", bin k "between e(k-1) and e(k) months"; a time equal to an edge
    falls in the later bin, and times beyond the last edge stay in bin 3.
    """
    edges = np.asarray(upper_edges, dtype=float)
    if edges.shape != (N_SURVIVAL_BINS,) or np.any(np.diff(edges) < 0):
        raise ValueError(f"expected 4 non-decreasing upper bin edges, got {list(upper_edges)}")
    return np.searchsorted(edges[:-1], np.asarray(months, dtype=float), side="right").astype(int)


def quartile_edges(months: np.ndarray | Sequence[float]) -> list[float]:
    """The 4 upper edges of the quartile bins of ``months`` (25/50/75 % quantiles and the maximum)."""
    values = np.asarray(months, dtype=float)
    values = values[np.isfinite(values)]
    if values.size == 0:
        raise ValueError("no finite survival times to derive bin edges from")
    q = np.quantile(values, [0.25, 0.5, 0.75, 1.0])
    return [float(x) for x in q]


@contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``target``; rename it onto ``target`` if the block succeeds."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if tmp_path.exists():  # mkstemp creates 0600 files; published files get the umask's usual modes
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp_path, 0o666 & ~umask)
        os.replace(tmp_path, target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_atomic(target: str | Path, write: Callable[[Path], Any]) -> None:
    """Call ``write(tmp_path)`` and rename the result onto ``target``."""
    with atomic_path(target) as tmp:
        write(tmp)


def write_json(target: str | Path, obj: Any) -> None:
    """Write ``obj`` as indented, key-sorted JSON atomically (byte-stable for equal content)."""
    text = json.dumps(obj, indent=2, sort_keys=True) + "\n"
    write_atomic(target, lambda p: p.write_text(text))


def write_features_h5(target: str | Path, features: np.ndarray, coords: np.ndarray) -> None:
    """Write one slide's patch features in the CLAM/TRIDENT layout, atomically and byte-stably."""
    import h5py

    features = np.asarray(features, dtype=np.float32)
    coords = np.asarray(coords, dtype=np.int64)
    if features.ndim != 2 or coords.shape != (features.shape[0], 2):
        raise ValueError(f"features must be [N, D] and coords [N, 2], got {features.shape} and {coords.shape}")

    def write(path: Path) -> None:
        # track_times=False keeps the file byte-identical for identical content.
        with h5py.File(path, "w", track_order=True) as f:
            f.create_dataset("features", data=features, track_times=False)
            f.create_dataset("coords", data=coords, track_times=False)

    write_atomic(target, write)


def manifest(
    *,
    name: str,
    provenance: dict[str, Any],
    sites: dict[str, dict[str, Any]],
    feature_dim: int | None,
    genes: Sequence[str],
    n_pathways: int,
    text_encoders: Sequence[str] = (),
) -> dict[str, Any]:
    """Build a ``cohort.json`` manifest.

    ``sites`` maps an upper-case site name to ``{"classes": {"0": "name", ...},
    "bin_upper_months": [4 floats]}``. ``provenance`` has ``kind`` ("synthetic" or "imported") plus
    ``seed``/``scale`` (synthetic) or ``source_paths`` (imported). ``feature_dim`` is None for a
    cohort imported without features. Once every file is written, the generator and the importer add
    the key ``fingerprint`` (:func:`bench.data.fingerprint.stamp_fingerprint`).
    """
    return {
        "format_version": FORMAT_VERSION,
        "name": name,
        "provenance": provenance,
        "sites": sites,
        "feature_dim": feature_dim,
        "patch_size_px": PATCH_SIZE_PX,
        "genes": list(genes),
        "n_genes": len(genes),
        "n_pathways": int(n_pathways),
        "text_encoders": list(text_encoders),
    }
