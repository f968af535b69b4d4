"""Patch features: the one reader of feature files, and a memory-mapped bag store per set of patients.

:func:`open_feature_file` reads a slide's CLAM/TRIDENT ``.h5`` or ``.pt`` (:class:`FeatureFile` says
which layouts, and where a ``.pt`` without coordinates places its patches); runs, ``data validate``,
the content fingerprint (:mod:`bench.data.fingerprint`) and the importer all read through it.

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
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from bench.data import format as fmt
from bench.errors import BenchError, CohortError

log = logging.getLogger(__name__)
FEATURE_SUFFIXES = (".h5", ".pt")  # the order a slide's files are preferred in: its .h5 wins over its .pt
RASTER_WIDTH = 1000  # tiles per row of the raster a .pt without coordinates is placed on


class FeatureFile:
    """One slide's patch features, open for reading (from :func:`open_feature_file`).

    The one reader of feature files: runs (:class:`BagStore`, ``data validate``), the content
    fingerprint and the importer all read through it, so they see the same arrays. Two layouts:

    - a CLAM/TRIDENT ``.h5`` with datasets ``features [N, D]`` and ``coords [N, 2]``;
    - a ``.pt`` holding a tensor ``[N, D]``, or a dict with ``features`` and optionally ``coords``.

    A leading axis of 1 (``[1, N, D]``, ``[1, N, 2]``) is dropped from either array; a scalar
    ``features`` is refused (it has no patch axis). A ``.pt``
    without coordinates is not refused: its patches are placed in file order on a raster of
    256-px tiles, :data:`RASTER_WIDTH` per row (:func:`raster_coords`), the layout runs have always
    given such a file, fixed by its patch count alone. Features are read lazily (:meth:`rows`), so a
    large ``.h5`` can be hashed block by block; a ``.pt`` is memory-mapped where torch can.
    """

    def __init__(self, path: Path, shape: tuple[int, ...], read_rows: Callable[[slice], np.ndarray],
                 read_coords: Callable[[], np.ndarray | None]):
        if not shape:
            raise CohortError(f"{path}: 'features' is a scalar, not patches x dims [N, D]; re-extract the slide")
        self.path = path
        self.shape = shape  # of the features, a leading axis of 1 dropped: (N, D) for a well-formed file
        self._read_rows = read_rows
        self._read_coords = read_coords

    def rows(self, index: slice = slice(None)) -> np.ndarray:
        """Features of the patches ``index`` as float32."""
        with _decoding(self.path):
            return self._read_rows(index)

    def stored_coords(self) -> np.ndarray | None:
        """Coordinates as the file stores them (dtype kept, a leading axis of 1 dropped), None if it stores none."""
        with _decoding(self.path):
            coords = self._read_coords()
        if coords is not None and coords.ndim == 3 and coords.shape[0] == 1:
            coords = coords[0]
        return coords

    def coords(self) -> np.ndarray:
        """Coordinates of the patches: the stored ones, else the raster of a ``.pt`` without them."""
        stored = self.stored_coords()
        return raster_coords(self.shape[0]) if stored is None else stored


def raster_coords(n: int) -> np.ndarray:
    """``int64 [n, 2]`` level-0 pixel coordinates of ``n`` patches laid out row by row on a raster of
    256-px tiles, :data:`RASTER_WIDTH` tiles per row: the layout of a ``.pt`` that stores no coordinates."""
    idx = np.arange(n)
    return np.stack([idx % RASTER_WIDTH, idx // RASTER_WIDTH], axis=1) * fmt.PATCH_SIZE_PX


@contextmanager
def _decoding(path: Path) -> Iterator[None]:
    """Turn whatever h5py / torch raise for a broken file into a :class:`CohortError` naming it."""
    try:
        yield
    except BenchError:
        raise
    except Exception as err:  # h5py / torch raise many unrelated types for a corrupt file
        raise CohortError(f"{path}: unreadable feature file ({type(err).__name__}: {err}); re-extract the slide"
                          ) from err


@contextmanager
def open_feature_file(path: Path) -> Iterator[FeatureFile]:
    """Open an ``.h5`` or ``.pt`` feature file (layouts in :class:`FeatureFile`); closed on leaving the block.

    Raises :class:`CohortError` naming the file when it cannot be decoded or lacks its arrays.
    """
    path = Path(path)
    if path.suffix == ".pt":
        import torch

        with _decoding(path):
            feats, coords = _load_pt(path)
        squeeze = feats.ndim == 3 and feats.shape[0] == 1
        yield FeatureFile(path, tuple(feats.shape[1:] if squeeze else feats.shape),
                          lambda index: (feats[0, index] if squeeze else feats[index]).to(torch.float32).numpy(),
                          lambda: coords)
        return
    import h5py

    with _decoding(path):
        handle = h5py.File(path, "r")
    try:
        if "features" not in handle or "coords" not in handle:
            raise CohortError(f"{path}: expected datasets 'features' and 'coords' (CLAM/TRIDENT layout), found "
                              f"{sorted(handle.keys())}; re-extract the slide")
        feats = handle["features"]
        squeeze = feats.ndim == 3 and feats.shape[0] == 1
        yield FeatureFile(path, tuple(feats.shape[1:] if squeeze else feats.shape),
                          lambda index: np.asarray(feats[0, index] if squeeze else feats[index], dtype=np.float32),
                          lambda: np.asarray(handle["coords"][()]))
    finally:
        handle.close()


def _load_pt(path: Path) -> tuple[Any, np.ndarray | None]:
    """Features (a tensor, memory-mapped where torch can) and stored coordinates (None if none) of a ``.pt``."""
    import torch

    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:  # a legacy (non-zip) .pt cannot be memory-mapped
        obj = torch.load(path, map_location="cpu", weights_only=True)
    coords = None
    if isinstance(obj, dict):
        if "features" not in obj:
            raise CohortError(f"{path}: a dict .pt needs a 'features' entry, found {sorted(map(str, obj))}; "
                              "re-extract the slide")
        obj, coords = obj["features"], obj.get("coords")
    if coords is not None:
        coords = torch.as_tensor(coords)
        if coords.dtype == torch.bfloat16:  # numpy has no bfloat16; float32 holds every value exactly
            coords = coords.to(torch.float32)
        coords = coords.numpy()
    return torch.as_tensor(obj), coords


def read_feature_file(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """``(features float32 [N, D], coords float32 [N, 2])`` of an ``.h5`` or ``.pt`` (:class:`FeatureFile`).

    Raises :class:`CohortError` naming the file.
    """
    with open_feature_file(path) as slide:
        return slide.rows(), np.asarray(slide.coords(), dtype=np.float32)


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
    """Every problem of one slide's feature file (unreadable, layout, dimension, NaN/Inf); empty if none."""
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
    for suffix in FEATURE_SUFFIXES:
        path = base / f"{slide_id}{suffix}"
        if path.exists():
            return path
    raise BenchError(f"patient {case}: feature file {base / (slide_id + '.h5')} of slide {slide_id} is missing "
                     "(nor is there a .pt); extract its features, or remove the slide from slide_ids / set has_wsi = 0")


def _slide_len(path: Path, case: str) -> int:
    """Number of patches in a slide file without reading its features (0 if they are not ``[N, D]``)."""
    try:
        with open_feature_file(path) as slide:
            return slide.shape[0] if len(slide.shape) == 2 else 0
    except BenchError as err:
        raise BenchError(f"patient {case}: {err}") from err
