"""The report's tables: each row built as a mapping of column to cell (a pandas DataFrame), written as
markdown (`markdown_table`) or as CSV (`csv_table`, `--format summary-csv`)."""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import pandas as pd

from cpoly.report.groups import Comparison, GroupSummary, sections, task_names
from cpoly.report.runs import format_value
from cpoly.report.stats import BOOTSTRAP_RESAMPLES, TESTS

TASK_PREFIX = "task:"  # a per-task column's key (task names may be any string); the markdown header drops it


def markdown_table(
    groups: Sequence[GroupSummary],
    per_task: bool = True,
    comparisons: Sequence[Comparison] | None = None,
    titles: bool = True,
) -> str:
    blocks = []
    for (benchmark, metric), members in sections(groups).items():
        tasks = task_names(members) if per_task else []
        recovery = any(g.skill_recovery for g in members)
        frame = pd.DataFrame([_markdown_group_row(g, metric, tasks, recovery) for g in members])
        title = f"## {benchmark or 'unknown benchmark'}: {metric}, {members[0].scores_label} (mean ± std over seeds)"
        block = [title, ""] * titles + [markdown(frame)]
        if comparisons is not None:
            block += ["", _comparison_block(members, comparisons, titles)]
        blocks.append("\n".join(block))
    return "\n\n".join(blocks) + "\n"


def _markdown_group_row(g: GroupSummary, metric: str, tasks: Sequence[str], recovery: bool) -> dict[str, str]:
    row = {
        "group": g.label,
        "backbone": g.backbone,
        "method": g.method,
        "seeds": str(g.n) if g.n == len(g.seeds) else f"{g.n} of {len(g.seeds)}",
        f"{metric} ({g.short_label})": _mean_std(g.values),
        "95% CI": _interval(*g.ci),
    }
    if recovery:
        row["skill recovery"] = _mean_std(g.skill_recovery, digits=3)
    row |= {"trainable params": _count(g.parameters.get("trainable")), "trainable %": _percent(g.parameters)}
    return row | {f"{TASK_PREFIX}{t}": _number(g.task_mean(t)) for t in tasks}


def _comparison_block(members: Sequence[GroupSummary], comparisons: Sequence[Comparison], titles: bool = True) -> str:
    mine = [c for c in comparisons if any(c.group is g for g in members)]
    test = mine[0].test if mine else "ttest"
    reference = mine[0].reference if mine else ""
    title = f"vs {reference or 'baseline'}: paired by seed, group - baseline ({TESTS[test]})"
    title = f"### {title}" if titles else f"*{title}*"
    if not mine:
        return f"{title}\n\nno other group to compare"
    notes = any(c.note for c in mine)
    rows = []
    for c in mine:
        row = {
            "group": c.group.label,
            "baseline": c.baseline.label if c.baseline else "n/a",
            "pairs": str(c.n_pairs),
            "mean diff": _number(c.mean),
            "std diff": _number(c.std),
            "95% CI": _interval(c.ci_low, c.ci_high),
            f"p ({TESTS[test]})": _p_value(c.p_value, c.test),
        }
        rows.append(row | ({"note": c.note} if notes else {}))
    return "\n".join([title, "", markdown(pd.DataFrame(rows), text_columns=2)])


def csv_table(
    groups: Sequence[GroupSummary],
    per_task: bool = True,
    comparisons: Sequence[Comparison] | None = None,
    titles: bool = True,
) -> str:
    """The groups' statistics as CSV (`--format summary-csv`), one row per group: who it is and its
    statistics over seeds (`GROUP_CELLS`), its comparison with the baseline (`COMPARISON_CELLS`, empty
    without one), the label's config keys (`config:<key>`) and the per-task means (`task:<task>`)."""
    tasks = task_names(groups) if per_task else []
    shown = list(dict.fromkeys(k for g in groups for k in g.shown))
    by_group = {id(c.group): c for c in comparisons or []}
    columns = [*GROUP_CELLS, *COMPARISON_CELLS, *(f"config:{k}" for k in shown), *(TASK_PREFIX + t for t in tasks)]
    rows = []
    for g in groups:
        row = {name: cell(g) for name, cell in GROUP_CELLS.items()} | _comparison_cells(by_group.get(id(g)))
        row |= {f"config:{k}": "" if g.settings is None else format_value(g.settings.get(k)) for k in shown}
        rows.append(row | {TASK_PREFIX + t: _csv_number(g.task_mean(t)) for t in tasks})
    return pd.DataFrame(rows, columns=columns).to_csv(index=False, lineterminator="\n")


def _recovery(g: GroupSummary) -> str:
    return _csv_number(statistics.fmean(g.skill_recovery) if g.skill_recovery else math.nan)


# A summary CSV's group columns and how each cell is read from the group.
GROUP_CELLS: dict[str, Callable[[GroupSummary], Any]] = {
    "group": lambda g: g.group,
    "benchmark": lambda g: g.benchmark,
    "backbone": lambda g: g.backbone,
    "method": lambda g: g.method,
    "metric": lambda g: g.metric,
    "split": lambda g: g.split,
    "which": lambda g: g.which,
    "n_seeds": lambda g: len(g.seeds),
    "seeds": lambda g: ";".join(str(s) for s in g.seeds),
    "label": lambda g: g.label,
    "n": lambda g: g.n,
    "mean": lambda g: _csv_number(g.mean),
    "std": lambda g: _csv_number(g.std),
    "ci_low": lambda g: _csv_number(g.ci[0]),
    "ci_high": lambda g: _csv_number(g.ci[1]),
    "skill_recovery": _recovery,
    "trainable": lambda g: g.parameters.get("trainable", ""),
    "total": lambda g: g.parameters.get("total", ""),
}
# Its comparison columns, read from the group's comparison with a baseline group.
COMPARISON_CELLS: dict[str, Callable[[Comparison], Any]] = {
    "baseline": lambda c: c.baseline.label,
    "diff_mean": lambda c: _csv_number(c.mean),
    "diff_std": lambda c: _csv_number(c.std),
    "diff_ci_low": lambda c: _csv_number(c.ci_low),
    "diff_ci_high": lambda c: _csv_number(c.ci_high),
    "p_value": lambda c: _csv_number(c.p_value),
    "n_pairs": lambda c: c.n_pairs,
    "test": lambda c: c.test,
}


def _comparison_cells(c: Comparison | None) -> dict[str, Any]:
    """Empty without --baseline; `n/a` (and the test) for a group without a baseline group."""
    if c is not None and c.baseline is not None:
        return {name: cell(c) for name, cell in COMPARISON_CELLS.items()}
    return {name: "" for name in COMPARISON_CELLS} | ({} if c is None else {"baseline": "n/a", "test": c.test})


def markdown(frame: pd.DataFrame, text_columns: int = 3) -> str:
    """A DataFrame of text cells as a markdown table: the first `text_columns` columns and a `note` column
    left-aligned, the others (numbers) right-aligned; `|` in a cell escaped; a `task:` prefix dropped."""
    header = [str(c).removeprefix(TASK_PREFIX) for c in frame.columns]
    rule = [":---" if i < text_columns or name == "note" else "---:" for i, name in enumerate(header)]
    rows = [_markdown_row(header), "|" + "|".join(rule) + "|"]
    return "\n".join(rows + [_markdown_row(cells) for cells in frame.itertuples(index=False, name=None)])


def _markdown_row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"


def _mean_std(values: Sequence[float], digits: int = 2) -> str:
    if not values:
        return "n/a"
    mean = statistics.fmean(values)
    if len(values) == 1:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def mean_std_n(g: GroupSummary) -> str:
    return f"{_mean_std(g.values)} ({g.n})"


def _interval(low: float, high: float, digits: int = 2) -> str:
    if math.isnan(low) or math.isnan(high):
        return "n/a"
    return f"[{low:.{digits}f}, {high:.{digits}f}]"


def _p_value(p: float, test: str) -> str:
    if math.isnan(p):
        return "n/a"
    if test == "bootstrap" and p == 0:
        return f"< {1 / BOOTSTRAP_RESAMPLES:g}"
    return f"{p:.2g}" if p < 0.001 else f"{p:.3f}"


def _number(value: float, digits: int = 2) -> str:
    return "n/a" if math.isnan(value) else f"{value:.{digits}f}"


def _csv_number(value: float) -> str:
    return "" if math.isnan(value) else f"{value:.6g}"


def _count(value: Any) -> str:
    return "n/a" if value is None else f"{int(value):,}"


def _percent(parameters: Mapping[str, int]) -> str:
    trainable, total = parameters.get("trainable"), parameters.get("total")
    if not trainable or not total:
        return "n/a"
    return f"{100 * trainable / total:.3g}%"
