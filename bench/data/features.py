"""Patch features: reading CLAM/TRIDENT files and a memory-mapped bag store per set of patients.

A patient's bag is the concatenation of all its slides' patches. Reading hundreds of small HDF5
files every epoch is slow, and holding every bag in RAM does not scale to the paper's cohorts, so
:class:`BagStore` copies the bags of the patients a run needs, once, into one ``float32 [total, D]``
array on disk (``<cohort>/.cache/``, or ``$BENCH_CACHE``) and memory-maps it; each sample is then a
slice. The copy is where every feature file is checked (missing, unreadable, wrong dimension, empty,
NaN/Inf) — a run fails there, before any training, naming the file and patient.

Coordinates of a patient's 2nd, 3rd, … slides are shifted along x past the previous slides (by their
maximum x plus two tiles), so that slides never overlap when a slide encoder places all of the
patient's tiles in one positional grid (as ModalTune does with Prov-GigaPath / TITAN).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import numpy as np

from bench.data import format as fmt
from bench.errors import BenchError

log = logging.getLogger(__name__)
_GRID = 1000  # raster width used when a .pt file holds features without coordinates


def read_feature_file(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """``(features float32 [N, D], coords float32 [N, 2])`` from an ``.h5`` or ``.pt`` file.

    A ``.pt`` may hold a tensor ``[N, D]`` (coordinates then follow a 256-px raster of width 1000)
    or a dict with ``features`` and optionally ``coords``. Raises ``BenchError`` naming the file.
    """
    try:
        if path.suffix == ".pt":
            import torch

            obj = torch.load(path, map_location="cpu", weights_only=True)
            feats = obj["features"] if isinstance(obj, dict) else obj
            coords = obj.get("coords") if isinstance(obj, dict) else None
            feats = np.asarray(feats, dtype=np.float32)
            if coords is None:
                idx = np.arange(len(feats))
                coords = np.stack([idx % _GRID, idx // _GRID], axis=1) * fmt.PATCH_SIZE_PX
            coords = np.asarray(coords, dtype=np.float32)
        else:
            import h5py

            with h5py.File(path, "r") as f:
                if "features" not in f or "coords" not in f:
                    raise BenchError(f"{path}: expected datasets 'features' and 'coords' (CLAM/TRIDENT layout), "
                                     f"found {sorted(f.keys())}; re-extract the features")
                feats = np.asarray(f["features"][()], dtype=np.float32)
                coords = np.asarray(f["coords"][()], dtype=np.float32)
    except BenchError:
        raise
    except Exception as err:  # h5py / torch raise many types for a corrupt file
        raise BenchError(f"{path}: unreadable feature file ({type(err).__name__}: {err}); re-extract it") from err
    if feats.ndim == 3 and feats.shape[0] == 1:
        feats = feats[0]
    if coords.ndim == 3 and coords.shape[0] == 1:
        coords = coords[0]
    return feats, coords


def feature_problems(path: Path, feats: np.ndarray, coords: np.ndarray, dim: int | None) -> list[str]:
    """What is wrong with one slide's features (empty list if nothing)."""
    if feats.ndim != 2:
        return [f"{path}: features must be 2-D [N, D], found shape {list(feats.shape)}"]
    problems = []
    if feats.shape[0] == 0:
        problems.append(f"{path}: empty bag (0 patches); re-extract the slide or drop it from slide_ids")
    if dim is not None and feats.shape[1] != dim:
        problems.append(f"{path}: feature dimension {feats.shape[1]} but the cohort's is {dim} (cohort.json "
                        "feature_dim); extract every slide with the same tile encoder")
    if coords.shape != (feats.shape[0], 2):
        problems.append(f"{path}: coords shape {list(coords.shape)} does not match {feats.shape[0]} patches x 2")
    if feats.size and not np.isfinite(feats).all():
        bad = int((~np.isfinite(feats)).any(axis=1).sum())
        problems.append(f"{path}: {bad} patches contain NaN/Inf features; re-extract the slide")
    return problems


def check_feature_file(path: Path, dim: int | None) -> list[str]:
    try:
        feats, coords = read_feature_file(path)
    except BenchError as err:
        return [str(err)]
    return feature_problems(path, feats, coords, dim)


def cache_dir(cohort_root: Path) -> Path:
    """Where derived data of a cohort (bag arrays, embeddings) are cached: ``$BENCH_CACHE`` or ``<cohort>/.cache``."""
    env = os.environ.get("BENCH_CACHE")
    candidates = [Path(env)] if env else [Path(cohort_root) / ".cache", Path.home() / ".cache" / "modaltune-bench"]
    for path in candidates:
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError:
            continue
        if os.access(path, os.W_OK):
            return path
    raise BenchError(f"no writable cache directory ({', '.join(map(str, candidates))}); set BENCH_CACHE")


class BagStore:
    """Memory-mapped bags of ``case_ids`` (each a ``(case_id, [slide ids])`` pair) of one cohort.

    ``bag(case_id) -> (features float32 [N, D], coords float32 [N, 2])`` are read-only views.
    """

    def __init__(self, cohort_root: Path, fingerprint: str, bags: list[tuple[str, list[str]]], dim: int):
        self.dim = dim
        key = hashlib.sha256(json.dumps([fingerprint, bags]).encode()).hexdigest()[:16]
        cache = cache_dir(Path(cohort_root))
        feats_path, coords_path, index_path = (cache / f"bags-{key}.{s}" for s in ("features.npy", "coords.npy", "index.json"))
        if not index_path.is_file():
            self._build(Path(cohort_root), bags, feats_path, coords_path, index_path)
        self.features = np.load(feats_path, mmap_mode="r")
        self.coords = np.load(coords_path, mmap_mode="r")
        self.offsets = {case: (start, end) for case, start, end in json.loads(index_path.read_text())}

    def bag(self, case_id: str) -> tuple[np.ndarray, np.ndarray]:
        start, end = self.offsets[case_id]
        return self.features[start:end], self.coords[start:end]

    def size(self, case_id: str) -> int:
        start, end = self.offsets[case_id]
        return end - start

    def _build(self, root: Path, bags: list[tuple[str, list[str]]], feats_path: Path, coords_path: Path,
               index_path: Path) -> None:
        """Copy every slide of every bag into one memory-mapped array, checking each file."""
        from tqdm.auto import tqdm

        paths = {sid: slide_path(root, case, sid) for case, sids in bags for sid in sids}
        total = sum(_slide_len(paths[sid], case) for case, sids in bags for sid in sids)
        tmp_feats = feats_path.with_name(f".{feats_path.name}.{os.getpid()}.tmp")
        tmp_coords = coords_path.with_name(f".{coords_path.name}.{os.getpid()}.tmp")
        try:
            out_f = np.lib.format.open_memmap(tmp_feats, mode="w+", dtype=np.float32, shape=(total, self.dim))
            out_c = np.lib.format.open_memmap(tmp_coords, mode="w+", dtype=np.float32, shape=(total, 2))
            index, cursor = [], 0
            progress = tqdm(bags, desc="caching patch features", unit="patient", leave=False,
                            disable=len(bags) < 200)
            for case, sids in progress:
                start, x_shift = cursor, 0.0
                for sid in sids:
                    path = paths[sid]
                    feats, coords = read_feature_file(path)
                    problems = feature_problems(path, feats, coords, self.dim)
                    if problems:
                        raise BenchError(f"patient {case}: " + "; ".join(problems))
                    n = feats.shape[0]
                    coords = coords.copy()
                    coords[:, 0] += x_shift
                    x_shift = float(coords[:, 0].max()) + 2 * fmt.PATCH_SIZE_PX
                    out_f[cursor:cursor + n] = feats
                    out_c[cursor:cursor + n] = coords
                    cursor += n
                index.append((case, start, cursor))
            out_f.flush()
            out_c.flush()
            del out_f, out_c
            os.replace(tmp_feats, feats_path)
            os.replace(tmp_coords, coords_path)
            fmt.write_json(index_path, index)
        finally:
            for tmp in (tmp_feats, tmp_coords):
                if tmp.exists():
                    tmp.unlink()


def slide_path(root: Path, case: str, slide_id: str) -> Path:
    """The feature file of one slide of patient ``case``: ``features/<slide>.h5``, else ``.pt``."""
    base = root / fmt.FEATURES_DIR
    for suffix in (".h5", ".pt"):
        path = base / f"{slide_id}{suffix}"
        if path.exists():
            return path
    raise BenchError(f"patient {case}: feature file {base / (slide_id + '.h5')} of slide {slide_id} is missing "
                     "(nor is there a .pt); extract its features, or remove the slide from slide_ids / set has_wsi = 0")


def _slide_len(path: Path, case: str) -> int:
    """Number of patches in a slide file without reading its data."""
    if path.suffix == ".h5":
        try:
            import h5py

            with h5py.File(path, "r") as f:
                if "features" in f:
                    shape = f["features"].shape
                    return int(shape[1] if len(shape) == 3 else shape[0])
        except Exception as err:
            raise BenchError(f"patient {case}: {path}: unreadable feature file ({type(err).__name__}: {err}); "
                             "re-extract it") from err
    feats, _ = read_feature_file(path)
    return int(feats.shape[0]) if feats.ndim == 2 else 0
