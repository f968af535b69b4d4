"""What every figure shares: the headless Agg backend, one style, and PNG + PDF output written
atomically and byte-reproducibly (no creation dates or software versions in the files)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: figures are files, never windows

import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

FORMATS = ("png", "pdf")
DPI = 120
#: Deterministic output: no timestamp or version in the PNG / PDF metadata.
_METADATA = {"png": {"Software": None}, "pdf": {"CreationDate": None, "ModDate": None, "Producer": None,
                                                 "Creator": None}}
STYLE = {"font.size": 9, "axes.titlesize": 9, "axes.labelsize": 9, "legend.fontsize": 7,
         "xtick.labelsize": 8, "ytick.labelsize": 8, "figure.dpi": DPI, "savefig.dpi": DPI,
         "svg.hashsalt": "modaltune-bench", "pdf.compression": 6}
matplotlib.rcParams.update(STYLE)  # the figures' process-wide style (read when artists are created)


def new_figure(n_rows: int, n_cols: int, *, width: float = 3.2, height: float = 2.8, **kwargs) -> tuple[Figure, list]:
    """A figure of ``n_rows x n_cols`` panels of ``width x height`` inches in the house style; the axes as
    a list of rows (each a list), whatever the shape."""
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(width * n_cols, height * n_rows), squeeze=False, **kwargs)
    return fig, [list(row) for row in axes]


def save_figure(fig: Figure, out_dir: str | Path, stem: str) -> list[Path]:
    """Write ``fig`` as ``<out_dir>/<stem>.png`` and ``.pdf`` (each to a temporary file, then renamed),
    close it, and return the paths written."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    try:
        for fmt in FORMATS:
            target = out_dir / f"{stem}.{fmt}"
            fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=out_dir)
            os.close(fd)
            try:
                fig.savefig(tmp, format=fmt, metadata=_METADATA[fmt], bbox_inches="tight")
                os.chmod(tmp, 0o644)
                os.replace(tmp, target)
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
            paths.append(target)
    finally:
        plt.close(fig)
    return paths
