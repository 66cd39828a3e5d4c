"""Sample-efficiency curves: the metric against a config key (`--x`), one line per group label without
that key; the points and their table (`--curve-table`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pandas as pd

from cpoly.report.groups import GroupSummary, sections
from cpoly.report.runs import ReportError, differing_keys, format_value, is_bookkeeping, value_sort_key
from cpoly.report.tables import markdown, mean_std_n

DEFAULT_CURVE_X = "benchmark.n_train_per_task"


def curve_keys(groups: Sequence[GroupSummary]) -> list[str]:
    """The keys an x axis can use: those that differ between the groups' configs."""
    return differing_keys([g.config for g in groups if g.settings is not None])


def check_curve_key(groups: Sequence[GroupSummary], x_key: str) -> None:
    """Raises ReportError unless `x_key` is a non-bookkeeping key of some group's config."""
    if is_bookkeeping(x_key) or not any(x_key in g.config for g in groups):
        choices = ", ".join(curve_keys(groups)) or "(no config key differs between the runs)"
        reason = "is per-run bookkeeping" if is_bookkeeping(x_key) else "is in no run's config"
        raise ReportError(f"unknown --x key {x_key!r} ({reason}); keys that differ between the runs: {choices}")


def curve_points(
    groups: Sequence[GroupSummary], x_key: str
) -> dict[tuple[str, str], dict[str, dict[Any, GroupSummary]]]:
    """Per section, per line (the group label without `x_key`), the group at each x value. Groups whose
    config lacks `x_key` are left out."""
    out: dict[tuple[str, str], dict[str, dict[Any, GroupSummary]]] = {}
    for section, members in sections(groups).items():
        lines: dict[str, dict[Any, GroupSummary]] = {}
        for g in members:
            if x_key not in g.config:
                continue
            line = " ".join([g.group] + [f"{k}={v}" for k, v in g.shown.items() if k != x_key])
            x = g.config[x_key]
            x = tuple(x) if isinstance(x, list) else x
            if x in lines.setdefault(line, {}):
                raise ReportError(f"--x {x_key}: {lines[line][x].label!r} and {g.label!r} share line and x value")
            lines[line][x] = g
        if lines:
            out[section] = lines
    return out


def x_values(lines: dict[str, dict[Any, GroupSummary]]) -> list[Any]:
    return sorted({x for points in lines.values() for x in points}, key=value_sort_key)


def curve_table(groups: Sequence[GroupSummary], x_key: str = DEFAULT_CURVE_X, titles: bool = True) -> str:
    """Markdown, one table per section: rows = lines (methods), columns = x values, `mean ± std (n)`."""
    blocks = []
    for (benchmark, metric), lines in curve_points(groups, x_key).items():
        xs = x_values(lines)
        first = next(iter(next(iter(lines.values())).values()))
        frame = pd.DataFrame(
            [[mean_std_n(points[x]) if x in points else "" for x in xs] for points in lines.values()],
            columns=[f"{x_key}={format_value(x)}" for x in xs],
        )
        frame.insert(0, f"{metric} ({first.short_label})", list(lines), allow_duplicates=True)
        title = (
            f"## {benchmark or 'unknown benchmark'}: {metric} against {x_key}, {first.scores_label} "
            "(mean ± std (n) over seeds)"
        )
        blocks.append("\n".join([title, ""] * titles + [markdown(frame, text_columns=1)]))
    return "\n\n".join(blocks) + "\n"
