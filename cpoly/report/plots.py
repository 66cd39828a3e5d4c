"""The report's figures: bars of the group means (`--plot`), the sample-efficiency curve (`--curve`) and
task dendrograms of the learned allocations (`--dendrogram`)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from cpoly.report.curves import DEFAULT_CURVE_X, curve_points, x_values
from cpoly.report.groups import GroupSummary, _method_rank, sections
from cpoly.report.runs import ReportError, format_value, value_sort_key

NO_ALLOCATION = "--dendrogram: no run records a learned allocation (results.json 'allocation')"


def log_x_axis(values: Sequence[float]) -> bool:
    """A log x axis for positive x values that span more than 8x."""
    return bool(values) and min(values) > 0 and max(values) / min(values) > 8


def plot_curves(groups: Sequence[GroupSummary], path: str | Path, x_key: str = DEFAULT_CURVE_X) -> Path:
    """The sample-efficiency figure: the metric against `x_key`, one line per group label without the x
    key (mean over seeds, ± 1 std band, markers), log x axis when x spans more than 8x; one panel per
    (benchmark, metric)."""
    from cpoly.logging.figures import label_fontsize, new_figure, save_figure

    parts = curve_points(groups, x_key)
    if not parts:
        raise ReportError(f"--curve: no group's config has {x_key!r}")
    longest = max(len(line) for lines in parts.values() for line in lines)
    fig = new_figure(min(40.0, (6.0 + min(10.0, 0.055 * longest)) * len(parts)), 4.8)
    axes = fig.subplots(1, len(parts), squeeze=False)[0]
    for ax, ((benchmark, metric), lines) in zip(axes, parts.items(), strict=True):
        xs = x_values(lines)
        numeric = all(isinstance(x, int | float) and not isinstance(x, bool) for x in xs)
        position = {x: (float(x) if numeric else float(i)) for i, x in enumerate(xs)}
        for i, (line, points) in enumerate(lines.items()):
            at = [x for x in xs if x in points and points[x].values]
            px = np.array([position[x] for x in at])
            mean = np.array([points[x].mean for x in at])
            std = np.nan_to_num(np.array([points[x].std for x in at]))  # one seed: no band
            colour = f"C{i % 10}"
            ax.plot(px, mean, marker="o", color=colour, label=line)
            ax.fill_between(px, mean - std, mean + std, color=colour, alpha=0.2, linewidth=0)
        values = [position[x] for x in xs]
        if numeric and log_x_axis(values):
            ax.set_xscale("log")
            ax.minorticks_off()
        ax.set_xticks(values, [format_value(x) for x in xs])
        ax.set_xlabel(x_key)
        first = next(iter(next(iter(lines.values())).values()))
        ax.set_ylabel(f"{metric} ({first.scores_label}, mean ± std over seeds)")
        ax.set_title(benchmark)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=min(8.0, label_fontsize(3 * len(lines))), loc="upper left", bbox_to_anchor=(1.02, 1.0))
    return save_figure(fig, path)


def plot_groups(groups: Sequence[GroupSummary], path: str | Path) -> Path:
    """Horizontal bars of each group's mean with its 95% CI as error bars (none for a single seed), one
    panel per benchmark/metric."""
    from cpoly.logging.figures import label_fontsize, new_figure, save_figure

    parts = sections(groups)
    n_rows = sum(len(m) for m in parts.values())
    longest = max(len(g.label) for g in groups) + 6
    fig = new_figure(min(30.0, 6.0 + 0.07 * longest), min(40.0, 1.2 * len(parts) + 0.35 * n_rows + 0.8))
    axes = fig.subplots(len(parts), 1, squeeze=False, height_ratios=[len(m) + 1 for m in parts.values()])[:, 0]
    methods = sorted({g.method for g in groups}, key=lambda m: (_method_rank(m), m))
    colours = {m: f"C{i % 10}" for i, m in enumerate(methods)}
    for ax, ((benchmark, metric), members) in zip(axes, parts.items(), strict=True):
        y = list(range(len(members)))[::-1]  # first group on top
        low = [0.0 if math.isnan(g.ci[0]) else g.mean - g.ci[0] for g in members]
        high = [0.0 if math.isnan(g.ci[1]) else g.ci[1] - g.mean for g in members]
        means = [g.mean for g in members]
        ax.barh(y, means, xerr=[low, high], capsize=3, color=[colours[g.method] for g in members])
        ax.set_yticks(y, [f"{g.label} (n={g.n})" for g in members], fontsize=label_fontsize(len(members)))
        ax.set_xlabel(f"{metric} ({members[0].scores_label}, mean over seeds; error bars: 95% CI of the mean)")
        ax.set_title(benchmark)
        ax.grid(axis="x", alpha=0.3)
    return save_figure(fig, path)


def allocation_panels(groups: Sequence[GroupSummary]) -> list[tuple[str, list[str], list[list[float]]]]:
    """(title, tasks, T x K shared allocation) of each group that records one, from its lowest seed."""
    panels = []
    for g in groups:
        if g.allocations:
            seed, tasks, matrix = min(g.allocations, key=lambda a: value_sort_key(a[0]))
            n = len(g.seeds)
            panels.append((f"{g.label}\n(seed {seed}, the first of {n} seed{'s' * (n != 1)})", tasks, matrix))
    return panels


def plot_group_dendrograms(groups: Sequence[GroupSummary], path: str | Path) -> Path:
    from cpoly.logging.dendrogram import plot_dendrograms

    panels = allocation_panels(groups)
    if not panels:
        raise ReportError(NO_ALLOCATION)
    return plot_dendrograms(panels, path)
