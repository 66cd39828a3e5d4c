"""Tables (and a bar chart) of results from run folders, without the W&B API.

    python -m cpoly.report <dir> [<dir> ...] [--metric NAME] [--which final|best]
                           [--format markdown|csv] [--plot out.png] [--no-per-task]

Every `results.json` below the given folders is one run; runs are grouped by their `group` (the run
name without the seed) and each group becomes one row: the mean ± sample standard deviation over
seeds of the average main metric, the per-task means and the trainable parameter count."""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import re
import statistics
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# The order the paper compares methods in; unknown methods sort after these, by name.
METHOD_ORDER = ["shared_lora", "task_lora", "moe_lora", "poly", "mhr", "cpoly"]


@dataclass
class GroupSummary:
    group: str
    benchmark: str
    backbone: str
    method: str
    metric: str
    which: str
    seeds: list[Any] = field(default_factory=list)
    values: list[float] = field(default_factory=list)  # the average metric of each seed that has it
    per_task: dict[str, list[float]] = field(default_factory=dict)
    skill_recovery: list[float] = field(default_factory=list)
    parameters: dict[str, int] = field(default_factory=dict)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values) if self.values else math.nan

    @property
    def std(self) -> float:
        """Sample standard deviation over seeds (n - 1); NaN for a single seed."""
        return statistics.stdev(self.values) if len(self.values) > 1 else math.nan

    def task_mean(self, task: str) -> float:
        values = self.per_task.get(task, [])
        return statistics.fmean(values) if values else math.nan


def find_results(paths: Iterable[str | Path]) -> list[Path]:
    """Every `results.json` at or below `paths` (files or folders), each once, skipping hidden folders
    (the temporary folders of atomic writes)."""
    found: dict[Path, None] = {}
    for root in map(Path, paths):
        if root.is_file():
            found[root.resolve()] = None
            continue
        for path in sorted(root.rglob("results.json")):
            if not any(part.startswith(".") for part in path.relative_to(root).parts):
                found[path.resolve()] = None
    return list(found)


def _stderr(message: str) -> None:
    print(f"cpoly.report: {message}", file=sys.stderr)


def load_runs(paths: Iterable[str | Path], warn=_stderr) -> list[dict[str, Any]]:
    """The finished runs below `paths`; unreadable files and unfinished runs are reported and skipped."""
    runs = []
    for path in find_results(paths):
        try:
            run = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as error:
            warn(f"skipped {path}: {error}")
            continue
        status = run.get("status", "finished")
        if status != "finished":
            warn(f"skipped {path}: status {status!r}")
            continue
        run["_path"] = str(path)
        runs.append(run)
    return runs


def group_name(run: dict[str, Any]) -> str:
    if run.get("group"):
        return run["group"]
    return re.sub(r"-s\d+$", "", run.get("run_name", "unnamed"))


def summarise(
    runs: Sequence[dict[str, Any]], metric: str | None = None, which: str = "final", warn=_stderr
) -> list[GroupSummary]:
    """One summary per group, sorted by benchmark, backbone, method (paper order) and name. `metric`
    defaults to each run's `main_metric`; `which` is `final` or `best`."""
    groups: dict[str, GroupSummary] = {}
    for run in runs:
        name = group_name(run)
        summary = groups.get(name)
        if summary is None:
            summary = groups[name] = GroupSummary(
                group=name,
                benchmark=str(run.get("benchmark", "")),
                backbone=str(run.get("backbone", "")),
                method=str(run.get("method", "")),
                metric=metric or run.get("main_metric") or "",
                which=which,
                parameters=dict(run.get("parameters") or {}),
            )
        seed = run.get("seed")
        if seed in summary.seeds:
            warn(f"group {name}: seed {seed} appears more than once ({run.get('_path', '?')})")
        summary.seeds.append(seed)
        scores = run.get(which) or {}
        value = (scores.get("avg") or {}).get(summary.metric)
        if value is None:
            warn(f"{run.get('_path', name)}: no {which} avg/{summary.metric}")
        else:
            summary.values.append(float(value))
        for task, task_scores in (scores.get("per_task") or {}).items():
            if task_scores.get(summary.metric) is not None:
                summary.per_task.setdefault(task, []).append(float(task_scores[summary.metric]))
        if run.get("skill_recovery") is not None:
            summary.skill_recovery.append(float(run["skill_recovery"]))
    return sorted(groups.values(), key=_sort_key)


def _sort_key(g: GroupSummary) -> tuple:
    return (g.benchmark, g.metric, g.backbone, _method_rank(g.method), g.method, g.group)


def sections(groups: Sequence[GroupSummary]) -> dict[tuple[str, str], list[GroupSummary]]:
    """Groups split by (benchmark, metric): their tasks and metric are comparable within a section."""
    out: dict[tuple[str, str], list[GroupSummary]] = {}
    for g in groups:
        out.setdefault((g.benchmark, g.metric), []).append(g)
    return out


def task_names(groups: Sequence[GroupSummary]) -> list[str]:
    return sorted({task for g in groups for task in g.per_task})


def markdown_table(groups: Sequence[GroupSummary], per_task: bool = True) -> str:
    blocks = []
    for (benchmark, metric), members in sections(groups).items():
        tasks = task_names(members) if per_task else []
        recovery = any(g.skill_recovery for g in members)
        header = ["group", "backbone", "method", "seeds", f"{metric} (avg)"]
        header += ["skill recovery"] * recovery + ["trainable params", "trainable %"] + tasks
        rows = []
        for g in members:
            row = [g.group, g.backbone, g.method, str(len(g.seeds)), _mean_std(g.values)]
            row += [_mean_std(g.skill_recovery, digits=3)] * recovery
            row += [_count(g.parameters.get("trainable")), _percent(g.parameters)]
            row += [_number(g.task_mean(t)) for t in tasks]
            rows.append(row)
        which = members[0].which
        title = f"## {benchmark or 'unknown benchmark'}: {metric}, {which} (mean ± std over seeds)"
        blocks.append(
            "\n".join([title, "", _markdown_row(header), _markdown_rule(header)] + [_markdown_row(r) for r in rows])
        )
    return "\n\n".join(blocks) + "\n"


def csv_table(groups: Sequence[GroupSummary], per_task: bool = True) -> str:
    tasks = task_names(groups) if per_task else []
    header = [
        "group",
        "benchmark",
        "backbone",
        "method",
        "metric",
        "which",
        "n_seeds",
        "seeds",
        "mean",
        "std",
        "skill_recovery",
        "trainable",
        "total",
    ] + [f"task:{t}" for t in tasks]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    for g in groups:
        recovery = statistics.fmean(g.skill_recovery) if g.skill_recovery else math.nan
        writer.writerow(
            [
                g.group,
                g.benchmark,
                g.backbone,
                g.method,
                g.metric,
                g.which,
                len(g.seeds),
                ";".join(str(s) for s in g.seeds),
                _csv_number(g.mean),
                _csv_number(g.std),
                _csv_number(recovery),
                g.parameters.get("trainable", ""),
                g.parameters.get("total", ""),
            ]
            + [_csv_number(g.task_mean(t)) for t in tasks]
        )
    return buffer.getvalue()


def plot_groups(groups: Sequence[GroupSummary], path: str | Path) -> Path:
    """Horizontal bars of each group's mean with its std as error bars, one panel per benchmark/metric."""
    from cpoly.logging.figures import label_fontsize, new_figure, save_figure

    parts = sections(groups)
    n_rows = sum(len(m) for m in parts.values())
    fig = new_figure(9.0, min(40.0, 1.2 * len(parts) + 0.35 * n_rows + 0.8))
    axes = fig.subplots(len(parts), 1, squeeze=False, height_ratios=[len(m) + 1 for m in parts.values()])[:, 0]
    methods = sorted({g.method for g in groups}, key=lambda m: (_method_rank(m), m))
    colours = {m: f"C{i % 10}" for i, m in enumerate(methods)}
    for ax, ((benchmark, metric), members) in zip(axes, parts.items(), strict=True):
        y = list(range(len(members)))[::-1]  # first group on top
        errors = [0.0 if math.isnan(g.std) else g.std for g in members]
        ax.barh(y, [g.mean for g in members], xerr=errors, capsize=3, color=[colours[g.method] for g in members])
        ax.set_yticks(y, [f"{g.group} (n={len(g.seeds)})" for g in members], fontsize=label_fontsize(len(members)))
        ax.set_xlabel(f"{metric} ({members[0].which}, mean ± std over seeds)")
        ax.set_title(benchmark)
        ax.grid(axis="x", alpha=0.3)
    return save_figure(fig, path)


def _method_rank(method: str) -> int:
    return METHOD_ORDER.index(method) if method in METHOD_ORDER else len(METHOD_ORDER)


def _mean_std(values: Sequence[float], digits: int = 2) -> str:
    if not values:
        return "n/a"
    mean = statistics.fmean(values)
    if len(values) == 1:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def _number(value: float, digits: int = 2) -> str:
    return "n/a" if math.isnan(value) else f"{value:.{digits}f}"


def _csv_number(value: float) -> str:
    return "" if math.isnan(value) else f"{value:.6g}"


def _count(value: Any) -> str:
    return "n/a" if value is None else f"{int(value):,}"


def _percent(parameters: dict[str, int]) -> str:
    trainable, total = parameters.get("trainable"), parameters.get("total")
    if not trainable or not total:
        return "n/a"
    return f"{100 * trainable / total:.3g}%"


def _markdown_row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"


def _markdown_rule(header: Sequence[str]) -> str:
    # Text columns left, numbers right.
    return "|" + "|".join(":---" if i < 3 else "---:" for i in range(len(header))) + "|"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cpoly.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("dirs", nargs="+", help="run folders, multirun folders or results.json files")
    parser.add_argument("--metric", help="the metric to report (default: each run's main_metric)")
    parser.add_argument("--which", choices=["final", "best"], default="final", help="final or best checkpoint scores")
    parser.add_argument("--format", choices=["markdown", "csv"], default="markdown")
    parser.add_argument("--plot", type=Path, help="also write a bar chart of the groups to this PNG")
    parser.add_argument(
        "--per-task",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="per-task columns (default on)",
    )
    args = parser.parse_args(argv)

    runs = load_runs(args.dirs)
    if not runs:
        _stderr(f"no finished results.json below {', '.join(args.dirs)}")
        return 1
    groups = summarise(runs, metric=args.metric, which=args.which)
    table = markdown_table if args.format == "markdown" else csv_table
    sys.stdout.write(table(groups, per_task=args.per_task))
    if args.plot:
        _stderr(f"wrote {plot_groups(groups, args.plot)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
