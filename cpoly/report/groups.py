"""Groups of runs (a group name and the values of the differing config keys) and their statistics over
seeds, and paired comparisons of a group with its baseline."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from cpoly.report.runs import (
    ReportError,
    canonical,
    differing_keys,
    format_value,
    group_name,
    is_method_key,
    run_config,
    stderr,
    value_sort_key,
)
from cpoly.report.stats import TESTS, mean_ci, paired_test
from cpoly.skills.methods import method_rank

# The methods' display order is the registry's (registration order); unknown methods sort after, by name.
_method_rank = method_rank


@dataclass
class GroupSummary:
    group: str
    benchmark: str
    backbone: str
    method: str
    metric: str
    which: str  # final (the last step's adapters) or best (best/'s: the step the dev split chose)
    split: str = "test"  # the split the scores are of: test, or dev (the split that chose best/)
    seeds: list[Any] = field(default_factory=list)
    values: list[float] = field(default_factory=list)  # the average metric of each seed that has it
    per_task: dict[str, list[float]] = field(default_factory=dict)
    skill_recovery: list[float] = field(default_factory=list)
    parameters: dict[str, int] = field(default_factory=dict)
    label: str = ""  # group name + `key=value` for the differing keys the name does not show
    # The group's values of the keys that differ between the loaded runs; None: no config was found.
    settings: dict[str, Any] | None = None
    shown: dict[str, str] = field(default_factory=dict)  # the label's keys and their formatted values
    config: dict[str, Any] = field(default_factory=dict)  # the flattened config of the group's first run
    seed_values: dict[Any, float] = field(default_factory=dict)  # seed -> average metric (first run)
    allocations: list[tuple[Any, list[str], list[list[float]]]] = field(default_factory=list)  # seed, tasks, T x K

    def __post_init__(self) -> None:
        self.label = self.label or self.group

    @property
    def short_label(self) -> str:
        """The column's split and selection: `test, final` or `test, best on dev`."""
        return f"{self.split}, {'final' if self.which == 'final' else 'best on dev'}"

    @property
    def scores_label(self) -> str:
        """Which split and which selection the scores are, as every table and figure says it."""
        which = "final adapters" if self.which == "final" else "best/ (the step chosen on dev)"
        return f"{self.split} split, {which}"

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values) if self.values else math.nan

    @property
    def std(self) -> float:
        """Sample standard deviation over seeds (n - 1); NaN for a single seed."""
        return statistics.stdev(self.values) if len(self.values) > 1 else math.nan

    @property
    def ci(self) -> tuple[float, float]:
        """The Student-t 95% confidence interval of the mean; NaNs for fewer than 2 seeds."""
        return mean_ci(self.values)

    def task_mean(self, task: str) -> float:
        values = self.per_task.get(task, [])
        return statistics.fmean(values) if values else math.nan


@dataclass
class Comparison:
    """A group against its baseline, paired by seed: differences are group - baseline."""

    group: GroupSummary
    baseline: GroupSummary | None
    test: str = "ttest"
    reference: str = ""  # the --baseline argument
    seeds: list[Any] = field(default_factory=list)  # the seeds both groups have
    diffs: list[float] = field(default_factory=list)
    ci_low: float = math.nan
    ci_high: float = math.nan
    p_value: float = math.nan
    note: str = ""  # why there is no baseline or no test

    @property
    def n_pairs(self) -> int:
        return len(self.diffs)

    @property
    def mean(self) -> float:
        """The mean difference; NaN for fewer than 2 pairs (as every statistic of the comparison)."""
        return statistics.fmean(self.diffs) if len(self.diffs) > 1 else math.nan

    @property
    def std(self) -> float:
        return statistics.stdev(self.diffs) if len(self.diffs) > 1 else math.nan


def summarise(
    runs: Sequence[dict[str, Any]],
    metric: str | None = None,
    which: str = "final",
    warn=stderr,
    split: str = "test",
) -> list[GroupSummary]:
    """One summary per group (group name and values of the differing config keys), sorted by benchmark,
    backbone, method (paper order), name and the label's values. `metric` defaults to each run's
    `main_metric`; `split` is `test` or `dev`; `which` is `final` (the last step) or `best` (best/, the
    step the dev split chose: the same step for both splits)."""
    configs = [run_config(run) for run in runs]
    keys = differing_keys(configs)
    shown_keys = _shown_keys(runs, configs, keys)
    groups: dict[tuple, GroupSummary] = {}
    for run, config in zip(runs, configs, strict=True):
        name = group_name(run)
        settings = None if config is None else {k: config.get(k) for k in keys}
        identity = (name, None if settings is None else tuple(canonical(v) for v in settings.values()))
        if identity not in groups:
            shown = {} if settings is None else {k: format_value(settings[k]) for k in shown_keys.get(name, [])}
            groups[identity] = GroupSummary(
                group=name,
                benchmark=str(run.get("benchmark", "")),
                backbone=str(run.get("backbone", "")),
                method=str(run.get("method", "")),
                metric=metric or run.get("main_metric") or "",
                which=which,
                split=split,
                parameters=dict(run.get("parameters") or {}),
                label=" ".join([name] + [f"{k}={v}" for k, v in shown.items()]),
                settings=settings,
                shown=shown,
                config=dict(config or {}),
            )
        _add_run(groups[identity], run, warn)
    # No-config groups whose name equals a configured group's label would read the same.
    labels = [g.label for g in groups.values()]
    for g in groups.values():
        if g.settings is None and keys and labels.count(g.label) > 1:
            g.label += " (no config)"
    return sorted(groups.values(), key=_sort_key)


def _shown_keys(
    runs: Sequence[dict[str, Any]], configs: Sequence[dict[str, Any] | None], keys: Sequence[str]
) -> dict[str, list[str]]:
    """Per group name, the differing keys its label shows: those the name does not determine, that take
    more than one value among the loaded runs of that name."""
    per_name: dict[str, dict[str, set[str]]] = {}
    for run, config in zip(runs, configs, strict=True):
        if config is not None:
            for key in keys:
                per_name.setdefault(group_name(run), {}).setdefault(key, set()).add(canonical(config.get(key)))
    return {name: [k for k in keys if len(values[k]) > 1] for name, values in per_name.items()}


def _add_run(summary: GroupSummary, run: dict[str, Any], warn) -> None:
    """One run's seed, scores, skill recovery and allocation into its group's summary."""
    seed, split, which = run.get("seed"), summary.split, summary.which
    if seed in summary.seeds:
        warn(f"group {summary.label}: seed {seed} appears more than once ({run.get('_path', '?')})")
    summary.seeds.append(seed)
    scores = (run.get(split) or {}).get(which) or {}
    value = (scores.get("avg") or {}).get(summary.metric)
    if value is None:
        warn(f"{run.get('_path', summary.group)}: no {split}/{which}/avg/{summary.metric}")
    else:
        summary.values.append(float(value))
        summary.seed_values.setdefault(seed, float(value))
    for task, task_scores in (scores.get("per_task") or {}).items():
        if task_scores.get(summary.metric) is not None:
            summary.per_task.setdefault(task, []).append(float(task_scores[summary.metric]))
    if run.get("skill_recovery") is not None:
        summary.skill_recovery.append(float(run["skill_recovery"]))
    allocation = run.get("allocation")
    if isinstance(allocation, dict) and allocation.get("shared") and allocation.get("tasks"):
        summary.allocations.append((seed, list(allocation["tasks"]), allocation["shared"]))


def _sort_key(g: GroupSummary) -> tuple:
    label_values = tuple(value_sort_key((g.settings or {}).get(k)) for k in g.shown)
    return (g.benchmark, g.metric, g.backbone, _method_rank(g.method), g.method, g.group, label_values, g.label)


def sections(groups: Sequence[GroupSummary]) -> dict[tuple[str, str], list[GroupSummary]]:
    """Groups split by (benchmark, metric): their tasks and metric are comparable within a section."""
    out: dict[tuple[str, str], list[GroupSummary]] = {}
    for g in groups:
        out.setdefault((g.benchmark, g.metric), []).append(g)
    return out


def task_names(groups: Sequence[GroupSummary]) -> list[str]:
    return sorted({task for g in groups for task in g.per_task})


def _matching_settings(g: GroupSummary) -> tuple | None:
    """What a group must share with its baseline: backbone and every differing non-method key."""
    if g.settings is None:
        return (g.backbone, None)
    return (g.backbone, tuple((k, canonical(v)) for k, v in g.settings.items() if not is_method_key(k)))


def baseline_choices(groups: Sequence[GroupSummary]) -> str:
    methods = sorted({g.method for g in groups if g.method}, key=lambda m: (_method_rank(m), m))
    labels = list(dict.fromkeys(g.label for g in groups))
    return f"methods: {', '.join(methods) or '(none)'}; group labels: {', '.join(labels)}"


def compare(groups: Sequence[GroupSummary], baseline: str, test: str = "ttest") -> list[Comparison]:
    """Every non-baseline group against its baseline, paired by seed, section by section (see the
    module docstring for how `baseline` picks a group). Raises ReportError when no group matches."""
    if test not in TESTS:
        raise ReportError(f"unknown --test {test!r}; choose one of {', '.join(TESTS)}")
    if not any(baseline in (g.label, g.method, g.group) for g in groups):
        choices = baseline_choices(groups)
        raise ReportError(f"unknown --baseline {baseline!r}; choose a method or a group label ({choices})")
    comparisons = []
    for members in sections(groups).values():
        by_label = [g for g in members if g.label == baseline]
        by_name = [g for g in members if baseline in (g.method, g.group)]
        references = by_label or by_name
        for g in members:
            if any(g is r for r in references):
                continue
            if not references:
                comparisons.append(Comparison(g, None, test, baseline, note=f"no {baseline} group in this section"))
                continue
            if by_label:
                candidates = by_label
            else:
                wanted = _matching_settings(g)
                candidates = [r for r in references if _matching_settings(r) == wanted]
            if not candidates:
                note = f"no {baseline} group with the same {_unmatched(g, references)}"
                comparisons.append(Comparison(g, None, test, baseline, note=note))
                continue
            if len(candidates) > 1:
                names = ", ".join(r.label for r in candidates)
                note = f"ambiguous: {names}; pass one label as --baseline"
                comparisons.append(Comparison(g, None, test, baseline, note=note))
                continue
            comparisons.append(pair(g, candidates[0], test, reference=baseline))
    return comparisons


def _unmatched(g: GroupSummary, references: Sequence[GroupSummary]) -> str:
    """The group's settings no baseline candidate shares, as `key=value` (for the note)."""
    if g.settings is None or any(r.settings is None for r in references):
        return "settings (some runs have no config)"
    parts = [] if any(r.backbone == g.backbone for r in references) else [f"backbone={g.backbone}"]
    for key, value in g.settings.items():
        if not is_method_key(key) and all(canonical(r.settings.get(key)) != canonical(value) for r in references):
            parts.append(f"{key}={format_value(value)}")
    if len(parts) > 4:
        parts = parts[:4] + [f"{len(parts) - 4} more"]
    return ", ".join(parts) or "combination of settings"


def pair(group: GroupSummary, baseline: GroupSummary, test: str = "ttest", reference: str = "") -> Comparison:
    """`group` against `baseline` on the seeds both have a value for (in `group`'s seed order)."""
    seeds = [s for s in group.seed_values if s in baseline.seed_values]
    a = [group.seed_values[s] for s in seeds]
    b = [baseline.seed_values[s] for s in seeds]
    diffs = [x - y for x, y in zip(a, b, strict=True)]
    comparison = Comparison(group, baseline, test, reference or baseline.label, seeds=seeds, diffs=diffs)
    if len(seeds) < 2:
        comparison.note = f"{len(seeds)} common seed{'s' * (len(seeds) != 1)}: no test"
        return comparison
    comparison.ci_low, comparison.ci_high, comparison.p_value = paired_test(a, b, test)
    return comparison
