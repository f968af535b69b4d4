"""A cohort's content fingerprint: a hash of its decoded data, independent of how the files were written.

The same cohort written by another version of pandas, pyarrow or h5py, with another parquet
compression or another HDF5 chunking, has the same fingerprint; changing any value a run can read
changes it. :func:`content_fingerprint` says exactly what enters it. The generator and the importer
store it in ``cohort.json`` (key ``fingerprint``) when they write a cohort, so loading a cohort never
rereads its feature files; ``python -m bench data validate`` recomputes it and reports a mismatch.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import re
import struct
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bench.data import format as fmt
from bench.data.features import FEATURE_SUFFIXES, FeatureFile, open_feature_file
from bench.errors import CohortError

log = logging.getLogger(__name__)

KEY = "fingerprint"
# Part of every hash: changing what enters the fingerprint, or how, must change this name.
SCHEME = "modaltune-bench cohort content fingerprint, scheme 1"
_HEX16 = re.compile(r"^[0-9a-f]{16}$")
_INT_COLUMNS = ("label", "event", "survival_bin", "has_rna", "has_wsi")
_FLOAT_COLUMNS = ("survival_months", "age")
_BLOCK_ELEMENTS = 1 << 22  # feature values hashed per block (16 MiB of float32)
_PROGRESS_MIN_SLIDES = 2000


class _Digest:
    """SHA-256 over framed items (tag, length, payload), so different sequences never share a stream."""

    def __init__(self) -> None:
        self._sha = hashlib.sha256()
        self.text(SCHEME)

    def _frame(self, tag: bytes, length: int) -> None:
        self._sha.update(tag + struct.pack("<Q", length))

    def text(self, value: str) -> None:
        """One string (UTF-8)."""
        data = value.encode("utf-8")
        self._frame(b"T", len(data))
        self._sha.update(data)

    def strings(self, values: Sequence[str]) -> None:
        """A list of strings, its length first."""
        self._frame(b"L", len(values))
        for value in values:
            self.text(value)

    def array_header(self, dtype: np.dtype, shape: Sequence[int]) -> None:
        """Announce an array's canonical dtype and shape; its blocks must follow, in C order."""
        self.text(f"array {np.dtype(dtype).str} {list(map(int, shape))}")

    def block(self, values: np.ndarray) -> None:
        """Raw bytes of one canonical (contiguous, little-endian, NaN-normalised) block."""
        values = np.ascontiguousarray(values)
        if values.size:  # an empty array adds no bytes (its header already says so)
            self._sha.update(memoryview(values).cast("B"))

    def array(self, values: np.ndarray, dtype: str) -> None:
        """A whole array in canonical form (header, then its bytes)."""
        canon = _canonical(values, dtype)
        self.array_header(canon.dtype, canon.shape)
        self.block(canon)

    def hexdigest(self) -> str:
        return self._sha.hexdigest()[:16]


def _canonical(values: Any, dtype: str) -> np.ndarray:
    """``values`` as a contiguous array of ``dtype`` (e.g. ``<f4``), every NaN the same bit pattern."""
    out = np.ascontiguousarray(np.asarray(values).astype(dtype, copy=False))
    if out.dtype.kind == "f":
        nan = np.isnan(out)
        if nan.any():
            out = np.where(nan, out.dtype.type(np.nan), out).astype(dtype, copy=False)
    return out


# ---------------------------------------------------------------------------------------------- entry points
def content_fingerprint(root: str | Path) -> str:
    """The content fingerprint (16 hex chars) of the cohort in ``root``, computed from its decoded data.

    What enters it, in this order (each file decoded, never its bytes or size; an absent file enters
    as "absent"):

    1. ``cohort.json``: only its content facts — ``format_version``; ``sites`` with each site's
       ``classes`` (index -> name) and ``bin_upper_months`` (as floats); ``genes`` in order;
       ``feature_dim``; ``patch_size_px`` (256 when absent); ``n_pathways`` — as canonical JSON. Not
       ``name``, ``provenance`` (machine-specific source paths, seed), ``text_encoders`` (derived
       caches) nor the stored ``fingerprint`` itself.
    2. ``patients.csv`` (read with Python's csv module, so no dtype inference): rows in file order
       (the order runs iterate patients in); columns in the format's order, then any extra columns
       sorted by name; ``label``, ``event``, ``survival_bin``, ``has_rna``, ``has_wsi`` as int64
       ("1" and "1.0" alike), ``survival_months`` and ``age`` as float64 (empty = NaN, "61" and
       "61.0" alike), every other column as its text (empty = "").
    3. ``rna.parquet``: case ids, and values as float32 ``[patients, genes]`` with genes in the
       cohort's gene order and rows sorted by case id (runs look rows up by case id); pandas index
       columns are ignored.
    4. ``pathways.csv``: pathway names in file order (a pathway's index is its column), then the
       membership values as float64 with rows sorted by gene.
    5. ``gene_families.csv``: its header and its rows as text, rows sorted.
    6. Every feature file ``features/<slide>.h5`` or ``.pt`` (the ``.h5`` when a slide has both, as
       runs read it), sorted by slide id: the slide id, ``features`` as little-endian float32 in its
       shape (a leading axis of 1 dropped), hashed block by block, and ``coords`` as float64 (exact
       for integer pixel coordinates, so int32/int64/float coords alike), or "absent" for a ``.pt``
       that stores none. Files are decoded by :func:`bench.data.features.open_feature_file`, the
       reader runs use. Other files under ``features/`` and hidden files are ignored.

    Every NaN hashes alike. Raises :class:`CohortError` naming the file, row and field when a file
    cannot be decoded.
    """
    root = Path(root)
    start = time.perf_counter()
    digest = _Digest()
    digest.text("manifest")
    facts = _manifest_facts(root)
    digest.text(json.dumps(facts, sort_keys=True, separators=(",", ":"), ensure_ascii=True))
    _hash_patients(digest, root / fmt.PATIENTS)
    _hash_rna(digest, root / fmt.RNA, facts["genes"])
    _hash_pathways(digest, root / fmt.PATHWAYS)
    _hash_families(digest, root / fmt.FAMILIES)
    n_slides = _hash_features(digest, root / fmt.FEATURES_DIR)
    value = digest.hexdigest()
    log.info("content fingerprint of %s: %s (%d feature files, %.2fs)", root, value, n_slides,
             time.perf_counter() - start)
    return value


def stored_fingerprint(manifest: dict[str, Any]) -> str | None:
    """The fingerprint a manifest stores, or None if it has none (a cohort written before they were stored)."""
    value = manifest.get(KEY)
    return value if isinstance(value, str) and _HEX16.match(value) else None


def store_fingerprint(root: str | Path, value: str) -> None:
    """Write ``value`` into ``root``'s ``cohort.json`` (key ``fingerprint``) atomically, keeping every other key."""
    path = Path(root) / fmt.MANIFEST
    if not _HEX16.match(value):
        raise ValueError(f"a content fingerprint is 16 lower-case hex characters, got {value!r}")
    manifest = _read_manifest(path)
    manifest[KEY] = value
    fmt.write_json(path, manifest)


def stamp_fingerprint(root: str | Path) -> str:
    """Compute the content fingerprint of a freshly written cohort and store it in its ``cohort.json``."""
    value = content_fingerprint(root)
    store_fingerprint(root, value)
    return value


# ---------------------------------------------------------------------------------------------- manifest
def _read_manifest(path: Path) -> dict[str, Any]:
    try:
        manifest = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise CohortError(f"{path}: unreadable manifest ({err}); regenerate or re-import the cohort") from err
    if not isinstance(manifest, dict):
        raise CohortError(f"{path}: manifest must be a JSON object; regenerate or re-import the cohort")
    return manifest


def _manifest_facts(root: Path) -> dict[str, Any]:
    """The manifest's content facts in canonical types (see :func:`content_fingerprint`, item 1)."""
    path = root / fmt.MANIFEST
    manifest = _read_manifest(path)
    try:
        sites = {
            str(site): {
                "classes": {str(k): str(v) for k, v in meta["classes"].items()},
                "bin_upper_months": [float(x) for x in meta["bin_upper_months"]],
            }
            for site, meta in manifest["sites"].items()
        }
        dim = manifest.get("feature_dim")
        return {
            "format_version": manifest.get("format_version"),
            "sites": sites,
            "genes": [str(g) for g in manifest["genes"]],
            "feature_dim": None if dim is None else int(dim),
            "patch_size_px": int(manifest.get("patch_size_px", fmt.PATCH_SIZE_PX)),
            "n_pathways": None if manifest.get("n_pathways") is None else int(manifest["n_pathways"]),
        }
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise CohortError(f"{path}: malformed manifest ({type(err).__name__}: {err}); it needs 'sites' (each "
                          "with 'classes' and 'bin_upper_months') and 'genes' — regenerate or re-import the cohort"
                          ) from err


# ---------------------------------------------------------------------------------------------- tables
def _read_csv(path: Path) -> tuple[list[str], list[list[str]]]:
    """Header and rows of a CSV as text (blank lines skipped); every row must have the header's width."""
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            lines = [row for row in csv.reader(f) if row]
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise CohortError(f"{path}: unreadable CSV ({err}); regenerate or re-import the cohort") from err
    if not lines:
        raise CohortError(f"{path}: empty file (no header); regenerate or re-import the cohort")
    header, rows = lines[0], lines[1:]
    if len(set(header)) != len(header):
        raise CohortError(f"{path}: duplicate column names in the header {header}")
    for i, row in enumerate(rows):
        if len(row) != len(header):
            raise CohortError(f"{path}: data row {i + 1} has {len(row)} fields but the header has {len(header)}; "
                              "fix the file or regenerate the cohort")
    return header, rows


def _parse_floats(values: list[str], path: Path, column: str, row_names: Sequence[str]) -> np.ndarray:
    """float64 of each text value (empty = NaN); a value that is not a number raises naming its row."""
    out = np.empty(len(values), dtype=np.float64)
    for i, text in enumerate(values):
        text = text.strip()
        try:
            out[i] = float(text) if text else np.nan
        except ValueError:
            raise CohortError(f"{path}: {row_names[i]}, column {column}: {text!r} is not a number; "
                              "fix the file or regenerate the cohort") from None
    return out


def _hash_patients(digest: _Digest, path: Path) -> None:
    """Item 2 of :func:`content_fingerprint`."""
    digest.text("patients")
    if not path.is_file():
        digest.text("absent")
        return
    header, rows = _read_csv(path)
    columns = [c for c in fmt.PATIENT_COLUMNS if c in header] + sorted(set(header) - set(fmt.PATIENT_COLUMNS))
    case_col = header.index("case_id") if "case_id" in header else None
    names = [f"patient {r[case_col]}" if case_col is not None else f"data row {i + 1}" for i, r in enumerate(rows)]
    digest.strings(columns)
    for column in columns:
        j = header.index(column)
        values = [row[j] for row in rows]
        digest.text(column)
        if column in _INT_COLUMNS:
            numbers = _parse_floats(values, path, column, names)
            bad = ~np.isfinite(numbers) | (numbers != np.round(numbers))
            if bad.any():
                i = int(np.flatnonzero(bad)[0])
                raise CohortError(f"{path}: {names[i]}, column {column}: {values[i]!r} is not an integer; "
                                  "fix the file or regenerate the cohort")
            digest.array(numbers, "<i8")
        elif column in _FLOAT_COLUMNS:
            digest.array(_parse_floats(values, path, column, names), "<f8")
        else:
            digest.strings(values)


def _hash_rna(digest: _Digest, path: Path, genes: list[str]) -> None:
    """Item 3 of :func:`content_fingerprint`."""
    import pyarrow.parquet as pq

    digest.text("rna")
    if not path.is_file():
        digest.text("absent")
        return
    try:
        table = pq.read_table(path)
    except Exception as err:  # pyarrow raises several unrelated types for a broken file
        raise CohortError(f"{path}: unreadable parquet ({err}); re-import the RNA") from err
    columns = [c for c in table.column_names if not c.startswith("__index_level_")]
    if "case_id" not in columns:
        raise CohortError(f"{path}: no 'case_id' column; the first column must hold the patients' case ids")
    stored = set(columns) - {"case_id"}
    if stored != set(genes):
        lacking = [g for g in genes if g not in stored]
        extra = sorted(stored - set(genes))
        raise CohortError(f"{path}: RNA genes do not match the cohort's gene list in {fmt.MANIFEST} "
                          f"({len(lacking)} missing, e.g. {lacking[:3]}; {len(extra)} extra, e.g. {extra[:3]}); "
                          "re-import so both come from the same pathway file")
    case_ids = table.column("case_id").to_pylist()
    if any(not isinstance(c, str) for c in case_ids):
        raise CohortError(f"{path}: column case_id must hold text case ids (found {type(case_ids[0]).__name__} "
                          "or missing values); re-import the RNA")
    order = np.array(sorted(range(len(case_ids)), key=case_ids.__getitem__), dtype=np.int64)
    values = np.empty((len(case_ids), len(genes)), dtype="<f4")
    for j, gene in enumerate(genes):
        try:
            values[:, j] = table.column(gene).to_numpy().astype(np.float32)
        except (TypeError, ValueError) as err:
            raise CohortError(f"{path}: gene {gene}: values are not numbers ({err}); re-import the RNA") from err
    digest.strings([case_ids[i] for i in order])
    digest.array(values[order], "<f4")


def _hash_pathways(digest: _Digest, path: Path) -> None:
    """Item 4 of :func:`content_fingerprint`."""
    digest.text("pathways")
    if not path.is_file():
        digest.text("absent")
        return
    header, rows = _read_csv(path)
    if not header or header[0] != "gene":
        raise CohortError(f"{path}: first column must be 'gene' (combine_comps.csv layout), found {header[:1]}")
    rows = sorted(rows, key=lambda r: r[0])
    genes = [r[0] for r in rows]
    digest.strings(header[1:])
    digest.strings(genes)
    matrix = np.empty((len(rows), len(header) - 1), dtype=np.float64)
    for j, pathway in enumerate(header[1:]):
        matrix[:, j] = _parse_floats([r[j + 1] for r in rows], path, pathway, [f"gene {g}" for g in genes])
    digest.array(matrix, "<f8")


def _hash_families(digest: _Digest, path: Path) -> None:
    """Item 5 of :func:`content_fingerprint`."""
    digest.text("families")
    if not path.is_file():
        digest.text("absent")
        return
    header, rows = _read_csv(path)
    digest.strings(header)
    digest.strings([json.dumps(row, ensure_ascii=True) for row in sorted(rows)])


# ---------------------------------------------------------------------------------------------- features
def _feature_files(features_dir: Path) -> list[tuple[str, Path]]:
    """``(slide id, file)`` of every slide under ``features_dir``, the .h5 when both exist, sorted by id."""
    if not features_dir.is_dir():
        return []
    chosen: dict[str, Path] = {}
    for path in features_dir.iterdir():
        if path.name.startswith(".") or path.suffix not in FEATURE_SUFFIXES or not path.is_file():
            continue
        held = chosen.get(path.stem)
        if held is None or FEATURE_SUFFIXES.index(path.suffix) < FEATURE_SUFFIXES.index(held.suffix):
            chosen[path.stem] = path
    return sorted(chosen.items())


def _hash_features(digest: _Digest, features_dir: Path) -> int:
    """Item 6 of :func:`content_fingerprint`; returns the number of feature files hashed."""
    from tqdm.auto import tqdm

    files = _feature_files(features_dir)
    digest.text("features")
    digest.strings([slide for slide, _ in files])
    for slide, path in tqdm(files, desc="fingerprinting patch features", unit="slide", leave=False,
                            disable=len(files) < _PROGRESS_MIN_SLIDES):
        digest.text(slide)
        with open_feature_file(path) as opened:
            _hash_slide(digest, opened)
    return len(files)


def _hash_feature_rows(digest: _Digest, shape: tuple[int, ...], to_numpy: Callable[[slice], Any]) -> None:
    """Hash features of ``shape`` as float32, reading them in row blocks (``to_numpy(rows)``) of about 16 MiB."""
    digest.array_header(np.dtype("<f4"), shape)
    per_row = max(1, int(np.prod(shape[1:], dtype=np.int64)))
    step = max(1, _BLOCK_ELEMENTS // per_row)
    for start in range(0, shape[0], step):
        digest.block(_canonical(to_numpy(slice(start, min(start + step, shape[0]))), "<f4"))


def _hash_slide(digest: _Digest, slide: FeatureFile) -> None:
    """One slide: ``features`` block by block, then the coordinates it stores ("coords absent" if none).

    A ``.pt`` without coordinates hashes as "coords absent", not as the raster runs place it on: the
    raster is fixed by the patch count, which the features' shape already enters.
    """
    _hash_feature_rows(digest, slide.shape, slide.rows)
    coords = slide.stored_coords()
    if coords is None:
        digest.text("coords absent")
    else:
        digest.text("coords")
        digest.array(coords, "<f8")
