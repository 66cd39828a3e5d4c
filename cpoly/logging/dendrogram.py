"""Task dendrograms of learned allocations, as in the C-Poly paper's figure: tasks are clustered by the
rows of their T x K task-to-skill allocation (average linkage on cosine distance), one panel per method.

`cophenetic_agreement` compares such a tree to a known task structure (the synthetic benchmark's true
skill sets): the Spearman correlation, over task pairs, between the tree's cophenetic distances and
1 - the reference similarity."""

from __future__ import annotations

import math
import textwrap
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from cpoly.logging.figures import label_fontsize, new_figure, save_figure

# An all-zero row has no direction: it gets this value in every column (a uniform row) instead.
ZERO_ROW_EPSILON = 1e-12


def _rows(matrix: np.ndarray | Sequence[Sequence[float]]) -> np.ndarray:
    rows = np.asarray(matrix, dtype=float)
    if rows.ndim != 2 or rows.shape[1] == 0:
        raise ValueError(f"an allocation must be a T x K matrix with K >= 1, got shape {rows.shape}")
    if not np.all(np.isfinite(rows)):
        raise ValueError("an allocation must be finite")
    if np.any(rows < 0):
        raise ValueError(f"an allocation must hold non-negative scores (min {rows.min():.3g})")
    rows = rows.copy()
    rows[~rows.any(axis=1)] = ZERO_ROW_EPSILON
    return rows


def task_distances(matrix: np.ndarray | Sequence[Sequence[float]]) -> np.ndarray:
    """Condensed cosine distances between the rows (all-zero rows count as uniform rows)."""
    from scipy.spatial.distance import pdist

    rows = _rows(matrix)
    if rows.shape[0] < 2:
        return np.zeros(0)
    return np.clip(pdist(rows, metric="cosine"), 0.0, 2.0)  # rounding can leave -1e-16


def task_linkage(matrix: np.ndarray | Sequence[Sequence[float]]) -> np.ndarray:
    """The average-linkage, cosine-distance clustering of the allocation's rows (tasks): scipy's
    (T - 1) x 4 linkage matrix; (0, 4) for a single task."""
    from scipy.cluster.hierarchy import linkage

    distances = task_distances(matrix)
    if distances.size == 0:
        return np.zeros((0, 4))
    return linkage(distances, method="average")


def cophenetic_agreement(
    matrix: np.ndarray | Sequence[Sequence[float]], reference_similarity: np.ndarray | Sequence[Sequence[float]]
) -> float:
    """Spearman correlation over task pairs between the tree's cophenetic distance and 1 - the T x T
    `reference_similarity` (1: same structure). NaN with fewer than 3 tasks or a constant side."""
    from scipy.cluster.hierarchy import cophenet
    from scipy.stats import spearmanr

    n_tasks = np.asarray(matrix).shape[0]
    reference = np.asarray(reference_similarity, dtype=float)
    if reference.shape != (n_tasks, n_tasks):
        raise ValueError(f"reference_similarity must be {n_tasks} x {n_tasks} (one row per task): {reference.shape}")
    if n_tasks < 3:
        return math.nan
    tree = cophenet(task_linkage(matrix))
    upper = np.triu_indices(n_tasks, k=1)  # the order of condensed distances
    truth = 1.0 - reference[upper]
    if np.ptp(tree) == 0 or np.ptp(truth) == 0:
        return math.nan
    return float(spearmanr(tree, truth).statistic)


def plot_dendrograms(
    panels: Sequence[tuple[str, Sequence[str], np.ndarray | Sequence[Sequence[float]]]], path: str | Path
) -> Path:
    """Side-by-side task dendrograms, one panel per (title, task names, T x K allocation) with rows in
    task order; leaves are labelled with the task names. Returns `path` (a PNG)."""
    from matplotlib.ticker import FormatStrFormatter
    from scipy.cluster.hierarchy import dendrogram

    if not panels:
        raise ValueError("plot_dendrograms needs at least one panel")
    checked = []
    for title, tasks, matrix in panels:
        rows = _rows(matrix)
        if len(tasks) != rows.shape[0]:
            raise ValueError(f"panel {title!r}: {len(tasks)} task names for {rows.shape[0]} allocation rows")
        checked.append((title, [str(t) for t in tasks], rows))

    most = max(len(tasks) for _, tasks, _ in checked)
    longest = max(len(t) for _, tasks, _ in checked for t in tasks)
    panel_width = 3.0 + min(4.0, 0.07 * longest)
    fig = new_figure(panel_width * len(checked), min(24.0, 1.6 + 0.28 * most))
    axes = fig.subplots(1, len(checked), squeeze=False)[0]
    for ax, (title, tasks, rows) in zip(axes, checked, strict=True):
        wrapped = "\n".join(textwrap.fill(line, width=int(12 * panel_width)) for line in str(title).splitlines())
        ax.set_title(wrapped, fontsize=9)
        if len(tasks) < 2:
            ax.text(0.5, 0.5, tasks[0] if tasks else "(no tasks)", ha="center", va="center", transform=ax.transAxes)
            ax.set_axis_off()
            continue
        linkage = task_linkage(rows)
        with warnings.catch_warnings():  # identical rows: every height 0, scipy's x limits collapse
            warnings.filterwarnings("ignore", "Attempting to set identical", UserWarning)
            dendrogram(
                linkage,
                labels=tasks,
                orientation="left",  # root on the left, task names on the right
                ax=ax,
                leaf_font_size=label_fontsize(len(tasks)),
                above_threshold_color="0.4",
            )
        if not np.any(linkage[:, 2] > 0):
            ax.set_xlim(1.0, 0.0)
        ax.xaxis.set_major_formatter(FormatStrFormatter("%.2g"))  # no offset text under tiny distances
        ax.set_xlabel("cosine distance (average linkage)")
        ax.spines[["top", "left", "bottom"]].set_visible(False)
        ax.grid(axis="x", alpha=0.3)
    return save_figure(fig, path)
