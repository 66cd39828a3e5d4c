"""The learned task-to-skill allocation as a heatmap, a scalar (entropy) and table rows.

Tasks are rows; the shared skills of every split are columns, splits side by side. C-Poly's
exclusive-skill weights W_B (T, T*B) get a second panel."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from cpoly.logging.figures import label_fontsize, new_figure, save_figure, tick_positions
from cpoly.skills.model import Allocation

MAX_TICK_LABELS = 40
ANNOTATE_MAX_CELLS = 200  # values are written in the cells of small matrices only


def allocation_rows(allocation: Allocation) -> list[tuple[str, int, int, float]]:
    """(task, split, skill, weight) for every entry of the layer-averaged shared allocation."""
    mean = allocation.mean
    return [
        (task, q, k, float(mean[t, q, k]))
        for t, task in enumerate(allocation.task_names)
        for q in range(mean.shape[1])
        for k in range(mean.shape[2])
    ]


def allocation_entropy(allocation: Allocation) -> float:
    """Mean normalised entropy (0 = one skill per task, 1 = uniform) of the allocation rows, one row per
    task and split. Averaged over the layers' own allocations, not taken from the layer mean: layers
    that pick different skills would otherwise look like undecided ones."""
    matrices = list(allocation.per_layer.values()) or [allocation.mean]
    n_skills = matrices[0].shape[-1]
    if n_skills < 2:
        return 0.0
    p = torch.stack([m.float() for m in matrices]).clamp_min(0)
    p = p / p.sum(-1, keepdim=True).clamp_min(1e-12)
    entropy = -(p * p.clamp_min(1e-12).log()).sum(-1) / math.log(n_skills)
    return float(entropy.mean())


def plot_allocation(allocation: Allocation, path: str | Path, title: str = "Task-to-skill allocation") -> Path:
    """Write a PNG heatmap of every layer's allocation side by side (and of W_B averaged over layers,
    when present) to `path`. Not the layer mean: skill k of one layer is unrelated to skill k of another,
    so averaging over layers shows a near-uniform matrix even when every layer's allocation is peaked."""
    n_tasks, n_splits, n_skills = allocation.mean.shape
    n_layers = max(len(allocation.per_layer), 1)
    task_weights = allocation.task_weights
    panels = [allocation.stacked.float()]
    if task_weights is not None:
        panels.append(task_weights.float())

    widths = [min(12.0, max(3.0, 0.35 * p.shape[1])) for p in panels]
    # room for W_B's rotated owner-task labels under the panel
    height = min(16.0, 2.0 + 0.3 * n_tasks + (1.8 if task_weights is not None else 0.0))
    fig = new_figure(sum(widths) + 2.0 + 1.2 * len(panels), height)
    axes = fig.subplots(1, len(panels), width_ratios=widths, squeeze=False)[0]
    fig.suptitle(title)

    _heatmap(fig, axes[0], panels[0], allocation.task_names, widths[0], vmin=0.0, vmax=1.0, cmap="viridis")
    if n_layers > 1:
        _label_layer_columns(axes[0], n_layers, n_splits * n_skills)
    else:
        _label_shared_columns(axes[0], n_splits, n_skills)

    if task_weights is not None:
        _heatmap(fig, axes[1], panels[1], allocation.task_names, widths[1], **_weight_colours(panels[1]))
        _label_task_skill_columns(axes[1], allocation.task_names, panels[1].shape[1])
        axes[1].set_yticks([])
        axes[1].set_title("exclusive-skill weights $W_B$")

    return save_figure(fig, path)


def _short(name: str, limit: int = 24) -> str:
    """Tick labels of bounded length (SuperNI task names run to 60 characters)."""
    return name if len(name) <= limit else name[: limit - 1] + "…"


def _heatmap(fig, ax, matrix: torch.Tensor, task_names: list[str], width: float, *, vmin, vmax, cmap) -> None:
    values = matrix.numpy()
    image = ax.imshow(values, aspect="auto", interpolation="nearest", vmin=vmin, vmax=vmax, cmap=cmap)
    fig.colorbar(image, ax=ax, fraction=0.25 / width, pad=0.02)  # about a quarter inch, whatever the panel
    rows = tick_positions(len(task_names), MAX_TICK_LABELS)
    ax.set_yticks(rows, [_short(task_names[i]) for i in rows], fontsize=label_fontsize(len(task_names)))
    ax.set_ylabel("task")
    if values.size <= ANNOTATE_MAX_CELLS:
        for (i, j), v in _cells(values):
            r, g, b, _ = image.cmap(image.norm(v))
            colour = "black" if 0.299 * r + 0.587 * g + 0.114 * b > 0.5 else "white"
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7, color=colour)


def _cells(values):
    for i in range(values.shape[0]):
        for j in range(values.shape[1]):
            yield (i, j), float(values[i, j])


def _label_shared_columns(ax, n_splits: int, n_skills: int) -> None:
    n_columns = n_splits * n_skills
    columns = tick_positions(n_columns, MAX_TICK_LABELS)
    ax.set_xticks(columns, [str(c % n_skills) for c in columns], fontsize=label_fontsize(n_columns))
    ax.set_xlabel("shared skill")
    ax.set_title("shared-skill allocation")
    if n_splits > 1:
        for q in range(1, n_splits):
            ax.axvline(q * n_skills - 0.5, color="white", linewidth=2)
        top = ax.secondary_xaxis("top")
        centres = [q * n_skills + (n_skills - 1) / 2 for q in range(n_splits)]
        top.set_xticks(centres, [f"split {q}" for q in range(n_splits)], fontsize=label_fontsize(n_splits * 3))
        ax.set_title("shared-skill allocation", pad=18)


def _label_layer_columns(ax, n_layers: int, per_layer: int) -> None:
    for layer in range(1, n_layers):
        ax.axvline(layer * per_layer - 0.5, color="white", linewidth=0.8)
    layers = tick_positions(n_layers, MAX_TICK_LABELS)
    centres = [q * per_layer + (per_layer - 1) / 2 for q in layers]
    ax.set_xticks(centres, [str(q) for q in layers], fontsize=label_fontsize(n_layers))
    ax.set_xlabel(f"adapted layer ({per_layer} shared-skill columns each)")
    ax.set_title("shared-skill allocation, layer by layer")


def _label_task_skill_columns(ax, task_names: list[str], n_columns: int) -> None:
    per_task = max(1, n_columns // max(len(task_names), 1))
    columns = tick_positions(n_columns, MAX_TICK_LABELS)

    def name(c: int) -> str:
        owner = task_names[c // per_task] if c // per_task < len(task_names) else str(c)
        return _short(owner) if per_task == 1 else f"{_short(owner)}.{c % per_task}"

    ax.set_xticks(columns, [name(c) for c in columns], rotation=90, fontsize=label_fontsize(n_columns))
    ax.set_xlabel("exclusive skill (owner task)")


def _weight_colours(weights: torch.Tensor) -> dict:
    # W_B is raw (trainable, may go negative): a diverging map centred on 0 then, else 0..max.
    low, high = float(weights.min()), float(weights.max())
    if low < 0:
        bound = max(abs(low), abs(high), 1e-12)
        return dict(vmin=-bound, vmax=bound, cmap="RdBu_r")
    return dict(vmin=0.0, vmax=max(high, 1e-12), cmap="viridis")
