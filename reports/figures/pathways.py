"""Pathway attributions (the paper's Fig. 3e, f): Integrated Gradients (captum) on the gene inputs,
summed per pathway, and the top pathways per task.

What is attributed: a ModalTune model's general-task embedding read out by the run's linear probe
of the task, ``f(rna) = w . embedding(features, coords, rna)`` — for subtype the logit of the
patient's own class (logistic regression), for survival the Cox model's log partial hazard (higher
= riskier). The image inputs stay fixed; only the expression vector moves along the straight path
from the baseline, the training patients' mean expression (0 after the per-run z-scoring), to the
patient's. A gene's attribution is captum's Integrated Gradients (Gauss–Legendre quadrature); by
completeness, the attributions of a patient sum to ``f(rna) - f(baseline)`` up to the quadrature
error captum reports as the convergence delta. A pathway's attribution is the sum of its member
genes' attributions (a gene in several pathways counts in each), and pathways are ranked by their
mean absolute attribution over the patients attributed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure
from torch import nn

from reports.figures.common import new_figure

TOP = 10


@dataclass(frozen=True)
class Attribution:
    """One patient's gene attributions ``[G]``, the read-out's value at the input and at the baseline,
    and captum's convergence delta (``sum(genes) - (at_input - at_baseline)``)."""

    genes: np.ndarray
    at_input: float
    at_baseline: float
    delta: float


def integrated_gradients(model: nn.Module, batch: dict, weight: torch.Tensor, n_steps: int = 16) -> Attribution:
    """Integrated Gradients of ``weight . model.forward_features(batch)`` with respect to ``batch["rna"]``
    (one patient, ``rna [1, G]``), from the all-zero expression baseline, in ``n_steps`` steps."""
    from captum.attr import IntegratedGradients

    if batch["rna"].shape[0] != 1:
        raise ValueError(f"attributions are computed one patient at a time; the batch holds {batch['rna'].shape[0]}")
    weight = weight.detach().float()
    model.eval()

    def readout(rna: torch.Tensor, features: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
        return model.forward_features({"features": features, "coords": coords, "rna": rna}).float() @ weight

    rna = batch["rna"].float()
    baseline = torch.zeros_like(rna)
    attributions, delta = IntegratedGradients(readout).attribute(
        rna, baselines=baseline, additional_forward_args=(batch["features"], batch["coords"]), n_steps=n_steps,
        internal_batch_size=n_steps, return_convergence_delta=True)
    with torch.no_grad():
        ends = readout(torch.cat([rna, baseline]), batch["features"].expand(2, -1, -1),
                       batch["coords"].expand(2, -1, -1))
    return Attribution(attributions[0].detach().cpu().numpy(), float(ends[0]), float(ends[1]), float(delta[0]))


def pathway_attributions(genes: np.ndarray, membership: np.ndarray) -> np.ndarray:
    """Pathway attributions ``[..., P]``: the sum of the member genes' attributions ``genes [..., G]``
    (``membership`` bool ``[G, P]``)."""
    genes = np.asarray(genes, dtype=np.float64)
    membership = np.asarray(membership, dtype=np.float64)
    if genes.shape[-1] != membership.shape[0]:
        raise ValueError(f"{genes.shape[-1]} gene attributions for a membership table of {membership.shape[0]} genes")
    return genes @ membership


def top_pathways(scores: np.ndarray, names: Sequence[str], top: int = TOP) -> pd.DataFrame:
    """The ``top`` pathways of ``scores [patients, P]`` by mean absolute attribution: ``pathway``,
    ``mean`` (signed), ``mean_abs``, ``std``, ``patients``; ties broken by name."""
    scores = np.atleast_2d(np.asarray(scores, dtype=np.float64))
    if scores.shape[1] != len(names):
        raise ValueError(f"{scores.shape[1]} pathway scores for {len(names)} pathway names")
    frame = pd.DataFrame({"pathway": list(names), "mean": scores.mean(axis=0), "mean_abs": np.abs(scores).mean(axis=0),
                          "std": scores.std(axis=0), "patients": len(scores)})
    return frame.sort_values(["mean_abs", "pathway"], ascending=[False, True], kind="mergesort").head(top).reset_index(
        drop=True)


@dataclass(frozen=True)
class PathwayPanel:
    """One panel: a title (site, task), its top pathways (:func:`top_pathways`) and a footnote."""

    title: str
    top: pd.DataFrame
    note: str = ""


def pathway_figure(panels: Sequence[PathwayPanel], n_cols: int = 2, title: str = "") -> Figure:
    """Horizontal bars of each panel's top pathways: the signed mean attribution (red raises the read-out:
    the patient's class / the risk), error bars one standard deviation over the patients."""
    if not panels:
        raise ValueError("no pathway attributions to draw")
    n_rows = -(-len(panels) // n_cols)
    fig, axes = new_figure(n_rows, n_cols, width=3.6, height=2.8)
    for index, panel in enumerate(panels):
        ax = axes[index // n_cols][index % n_cols]
        top = panel.top.iloc[::-1]
        colors = ["#c0392b" if m > 0 else "#2471a3" for m in top["mean"]]
        ax.barh(top["pathway"], top["mean"], xerr=top["std"], color=colors, error_kw={"lw": 0.6})
        ax.axvline(0.0, color="black", lw=0.5)
        ax.set_title(panel.title + (f"\n{panel.note}" if panel.note else ""), fontsize=7)
        ax.set_xlabel("Integrated Gradients (sum over the pathway's genes)")
    for index in range(len(panels), n_rows * n_cols):
        axes[index // n_cols][index % n_cols].set_axis_off()
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig
