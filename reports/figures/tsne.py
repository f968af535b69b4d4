"""t-SNE maps of patient embeddings (the paper's Fig. 5): one column per embedding source (ModalTune,
ModalTune Pan-Cancer, the text embeddings), coloured by cancer site (top row) and by primary
diagnosis (bottom row).

scikit-learn's Barnes–Hut t-SNE with PCA initialisation, :data:`MAX_ITER` steps and a fixed
``random_state`` (on one thread): the same embeddings and seed give the same map. Embeddings are L2-normalised
first (the linear probes and the distillation compare directions), and a colour means the same
site or diagnosis in every panel.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from matplotlib.figure import Figure

from reports.figures.common import new_figure

MIN_POINTS = 5
#: Optimisation steps (scikit-learn's default is 1,000; maps of a few hundred patients settle well before).
MAX_ITER = 500


@dataclass(frozen=True)
class EmbeddingSet:
    """One column: ``embeddings [n, E]`` with each patient's ``sites`` and ``diagnoses``; ``note`` is
    printed under the title (e.g. what the points are)."""

    title: str
    embeddings: np.ndarray
    sites: Sequence[str]
    diagnoses: Sequence[str]
    note: str = ""


def tsne_coords(embeddings: np.ndarray, seed: int = 0) -> np.ndarray:
    """``[n, 2]`` t-SNE coordinates of L2-normalised ``embeddings [n, E]`` (perplexity ``min(30, (n-1)/3)``)."""
    from sklearn.manifold import TSNE
    from threadpoolctl import threadpool_limits

    x = np.asarray(embeddings, dtype=np.float64)
    if x.ndim != 2 or len(x) < MIN_POINTS:
        raise ValueError(f"t-SNE needs at least {MIN_POINTS} embeddings [n, E], got shape {x.shape}")
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    x = x / np.where(norms > 0, norms, 1.0)
    perplexity = float(min(30.0, max(1.0, (len(x) - 1) / 3.0)))
    tsne = TSNE(n_components=2, perplexity=perplexity, init="pca", learning_rate="auto", max_iter=MAX_ITER,
                random_state=seed)
    with threadpool_limits(1):  # one thread: the same map on every machine, and no oversubscription
        return tsne.fit_transform(x)


def palette(labels: Sequence[str]) -> dict[str, tuple]:
    """One colour per distinct label (sorted), from tab10 (up to 10 labels) or tab20."""
    import matplotlib

    names = sorted(set(labels))
    cmap = matplotlib.colormaps["tab10" if len(names) <= 10 else "tab20"]
    return {name: cmap(i % cmap.N) for i, name in enumerate(names)}


def _scatter(ax, coords: np.ndarray, labels: Sequence[str], colors: dict[str, tuple]) -> None:
    labels = np.asarray(labels)
    for name, color in colors.items():
        members = labels == name
        if members.any():
            ax.scatter(coords[members, 0], coords[members, 1], s=6, color=color, label=name, linewidths=0)
    ax.set_xticks([])
    ax.set_yticks([])


def tsne_figure(sets: Sequence[EmbeddingSet], seed: int = 0,
                coords: Sequence[np.ndarray] | None = None) -> tuple[Figure, list[np.ndarray]]:
    """The figure (rows: by site, by diagnosis; one column per set) and each set's coordinates
    (``coords``: already computed :func:`tsne_coords` of the sets, e.g. cached, with this ``seed``)."""
    if not sets:
        raise ValueError("no embeddings to map")
    coords = [tsne_coords(s.embeddings, seed) for s in sets] if coords is None else list(coords)
    if len(coords) != len(sets) or any(len(c) != len(s.embeddings) for c, s in zip(coords, sets)):
        raise ValueError("one [n, 2] coordinate array per embedding set is needed")
    site_colors = palette([x for s in sets for x in s.sites])
    diagnosis_colors = palette([x for s in sets for x in s.diagnoses])
    fig, axes = new_figure(2, len(sets), width=3.4, height=3.0)
    for column, (data, xy) in enumerate(zip(sets, coords, strict=True)):
        for row, (labels, colors, by) in enumerate(((data.sites, site_colors, "site"),
                                                     (data.diagnoses, diagnosis_colors, "diagnosis"))):
            ax = axes[row][column]
            _scatter(ax, xy, labels, colors)
            ax.set_title(f"{data.title}\nby {by} (n={len(xy)})" + (f"\n{data.note}" if data.note and row == 0 else ""),
                         fontsize=8)
    for row in range(2):
        handles, names = [], []
        for column in range(len(sets)):
            for handle, name in zip(*axes[row][column].get_legend_handles_labels()):
                if name not in names:
                    handles.append(handle)
                    names.append(name)
        axes[row][-1].legend(handles, names, loc="center left", bbox_to_anchor=(1.02, 0.5), markerscale=2,
                             frameon=False)
    fig.suptitle(f"t-SNE of patient embeddings (scikit-learn, PCA init, seed {seed}; L2-normalised)", fontsize=9)
    fig.tight_layout()
    return fig, coords
