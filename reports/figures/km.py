"""Kaplan–Meier curves of predicted risk groups (the paper's Fig. 6).

Per panel (one model at one site), the test patients are split at the **median predicted risk of
the test patients themselves**: risk above that median is "high risk", at or below it "low risk".
(The paper's alternative, the training patients' median, needs predictions for the training
patients, which runs do not keep.) Each group gets a lifelines Kaplan–Meier estimate, and the
two groups are compared with the log-rank test; its p-value is printed in the panel.

Input: a DataFrame of one run's test predictions with at least ``time`` (months), ``event`` (1 =
died, 0 = censored) and ``risk`` (higher = shorter expected survival, the convention of the
C-index the tables report).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from reports.figures.common import new_figure

REQUIRED = ("time", "event", "risk")
SPLIT_RULE = ("high / low risk: above / at or below the median predicted risk of the test patients "
              "(training patients' predictions are not stored); p: log-rank test")
COLORS = {"high": "#c0392b", "low": "#2471a3"}


@dataclass(frozen=True)
class KMStats:
    """One panel's split: the threshold (median test risk), group sizes and events, the log-rank p-value
    (NaN when a group is empty or has no event to compare)."""

    threshold: float
    n_high: int
    n_low: int
    events_high: int
    events_low: int
    p_value: float


@dataclass(frozen=True)
class KMPanel:
    """One panel to draw: its title and the predictions (None, with ``note``, when there are none)."""

    title: str
    predictions: pd.DataFrame | None
    note: str = ""


def check_predictions(df: pd.DataFrame) -> pd.DataFrame:
    """The rows of ``df`` with a finite time and risk, as floats / ints; ValueError naming missing columns."""
    missing = [c for c in REQUIRED if c not in df.columns]
    if missing:
        raise ValueError(f"predictions lack column(s) {', '.join(missing)}; expected {', '.join(REQUIRED)}")
    out = pd.DataFrame({"time": pd.to_numeric(df["time"], errors="coerce"),
                        "event": pd.to_numeric(df["event"], errors="coerce"),
                        "risk": pd.to_numeric(df["risk"], errors="coerce")})
    out = out[np.isfinite(out["time"]) & np.isfinite(out["risk"]) & np.isfinite(out["event"])]
    return out.assign(event=out["event"].astype(int))


def risk_groups(risk: np.ndarray) -> tuple[np.ndarray, float]:
    """``(high, threshold)``: ``high[i]`` is True when ``risk[i]`` exceeds the median of ``risk``."""
    risk = np.asarray(risk, dtype=float)
    threshold = float(np.median(risk))
    return risk > threshold, threshold


def km_stats(df: pd.DataFrame) -> KMStats:
    """The median split of ``df``'s patients and the log-rank p-value between the two groups."""
    from lifelines.statistics import logrank_test

    data = check_predictions(df)
    high, threshold = risk_groups(data["risk"].to_numpy())
    t, e = data["time"].to_numpy(), data["event"].to_numpy()
    n_high, n_low = int(high.sum()), int((~high).sum())
    p = math.nan
    if n_high and n_low and e.sum() > 0:
        p = float(logrank_test(t[high], t[~high], event_observed_A=e[high], event_observed_B=e[~high]).p_value)
    return KMStats(threshold, n_high, n_low, int(e[high].sum()), int(e[~high].sum()), p)


def format_p(p: float) -> str:
    """A p-value for a panel: ``p = 0.012``, ``p < 1e-4``, or ``p: n/a``."""
    if math.isnan(p):
        return "p: n/a"
    return "p < 1e-4" if p < 1e-4 else f"p = {p:.2g}" if p < 0.01 else f"p = {p:.3f}"


def plot_km(ax, df: pd.DataFrame, title: str) -> KMStats:
    """Draw the high- and low-risk Kaplan–Meier curves of ``df`` on ``ax``; returns the split's stats."""
    from lifelines import KaplanMeierFitter

    data = check_predictions(df)
    stats = km_stats(data)
    high, _ = risk_groups(data["risk"].to_numpy())
    for name, members, n in (("high", high, stats.n_high), ("low", ~high, stats.n_low)):
        if n:
            fitter = KaplanMeierFitter(label=f"{name} risk (n={n})")
            fitter.fit(data["time"].to_numpy()[members], data["event"].to_numpy()[members])
            fitter.plot_survival_function(ax=ax, ci_show=False, show_censors=True, color=COLORS[name],
                                          censor_styles={"ms": 4, "marker": "|"})
    ax.set_title(title)
    ax.set_xlabel("months")
    ax.set_ylabel("survival probability")
    ax.set_ylim(0.0, 1.05)
    ax.text(0.03, 0.05, format_p(stats.p_value), transform=ax.transAxes, fontsize=8,
            bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.8})
    ax.legend(loc="upper right")
    return stats


def km_figure(df: pd.DataFrame, title: str = "") -> tuple[Figure, KMStats]:
    """One Kaplan–Meier panel of ``df`` (``time``, ``event``, ``risk``), with the log-rank p-value."""
    fig, axes = new_figure(1, 1, width=4.0, height=3.2)
    stats = plot_km(axes[0][0], df, title)
    fig.suptitle(SPLIT_RULE, fontsize=6, y=0.01, va="bottom")
    return fig, stats


def km_grid(panels: Sequence[KMPanel], n_cols: int, title: str = "") -> tuple[Figure, list[KMStats | None]]:
    """Panels in rows of ``n_cols`` (e.g. one row per model, one column per site); a panel without
    predictions shows its note instead of curves."""
    n_rows = max(1, math.ceil(len(panels) / n_cols))
    fig, axes = new_figure(n_rows, n_cols, width=3.0, height=2.6)
    out: list[KMStats | None] = []
    for index, panel in enumerate(panels):
        ax = axes[index // n_cols][index % n_cols]
        if panel.predictions is None or check_predictions(panel.predictions).empty:
            ax.set_title(panel.title)
            ax.text(0.5, 0.5, panel.note or "no predictions", ha="center", va="center", wrap=True,
                    transform=ax.transAxes, fontsize=7)
            ax.set_axis_off()
            out.append(None)
        else:
            out.append(plot_km(ax, panel.predictions, panel.title))
    for index in range(len(panels), n_rows * n_cols):
        axes[index // n_cols][index % n_cols].set_axis_off()
    fig.suptitle(f"{title}\n{SPLIT_RULE}" if title else SPLIT_RULE, fontsize=8)
    fig.tight_layout()
    return fig, out
