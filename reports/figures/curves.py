"""Learning curves: per-epoch training loss and validation metric, and for text-distillation runs the
collapse diagnostics (``diag_*``), read from a run's Lightning ``csv/metrics.csv``.

The x axis counts completed epochs: 0 is the model before training (the ``init/`` values a
distillation run logs), ``e + 1`` the end of Lightning's epoch ``e``. The validation metric is the
one the run selects its best epoch by (balanced accuracy or C-index; a distillation run's subtype
probe on the general embedding).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from reports.figures.common import new_figure

#: Curves drawn, in panel order, when the run logged them.
CURVES = ("train_loss", "val_metric", "diag_centered_cosine", "diag_kl_floor_ratio", "diag_general_std")
CURVE_TITLES = {"train_loss": "training loss", "val_metric": "validation metric (model selection)",
                "diag_centered_cosine": "centred cosine, student vs teacher (val)",
                "diag_kl_floor_ratio": "val loss / mean-target floor",
                "diag_general_std": "general embedding spread across patients (val)"}


def read_curves(path: str | Path) -> pd.DataFrame:
    """One row per completed-epoch count (0 = before training) and one column per logged curve of
    :data:`CURVES`; a ValueError naming the file when it logged none of them."""
    frame = pd.read_csv(path)
    if "epoch" not in frame.columns:
        raise ValueError(f"{path}: no 'epoch' column; not a Lightning CSVLogger metrics file")
    per_epoch = frame[frame["epoch"].notna()]
    columns = [c for c in CURVES if c in frame.columns]
    if not columns:
        raise ValueError(f"{path}: none of the curves {', '.join(CURVES)} was logged")
    curves = per_epoch.groupby(per_epoch["epoch"].astype(int) + 1)[columns].first()
    initial = {c: frame[f"init/{c}"].dropna().iloc[0] for c in columns
               if f"init/{c}" in frame.columns and frame[f"init/{c}"].notna().any()}
    if initial:
        curves = pd.concat([pd.DataFrame(initial, index=[0]), curves])
    curves.index.name = "epoch"
    return curves[columns].sort_index()


def curves_figure(runs: Mapping[str, pd.DataFrame], title: str,
                  thresholds: Mapping[str, float] | None = None) -> Figure:
    """One panel per curve any run logged; one line per run (label -> :func:`read_curves` frame).
    ``thresholds``: a dashed line per curve (e.g. the collapse rule's limits)."""
    present = [c for c in CURVES if any(c in frame.columns and frame[c].notna().any() for frame in runs.values())]
    if not present:
        raise ValueError("no learning curves to draw")
    n_cols = min(3, len(present))
    n_rows = -(-len(present) // n_cols)
    fig, axes = new_figure(n_rows, n_cols, width=3.2, height=2.5)
    for index, curve in enumerate(present):
        ax = axes[index // n_cols][index % n_cols]
        for label, frame in runs.items():
            if curve in frame.columns and frame[curve].notna().any():
                series = frame[curve].dropna()
                ax.plot(series.index.to_numpy(), series.to_numpy(dtype=np.float64), marker="o", ms=2.5, lw=1,
                        label=label)
        if thresholds and curve in thresholds:
            ax.axhline(thresholds[curve], color="grey", ls="--", lw=0.8, label="collapse limit")
        ax.set_title(CURVE_TITLES.get(curve, curve))
        ax.set_xlabel("epochs completed")
        ax.legend(fontsize=6)
    for index in range(len(present), n_rows * n_cols):
        axes[index // n_cols][index % n_cols].set_axis_off()
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig
