"""Tables, paired comparisons and figures of results from run folders, without the W&B API.

    python -m cpoly.report <dir> [<dir> ...] [--metric NAME] [--which final|best]
                           [--format markdown|csv] [--per-task | --no-per-task]
                           [--baseline METHOD_OR_LABEL] [--test ttest|bootstrap]
                           [--plot bars.png] [--curve curve.png] [--x CONFIG_KEY] [--dendrogram tree.png]

Every `results.json` at or below the given folders (or given directly) is one run; unfinished runs are
skipped with a note on stderr.

Groups. Runs are grouped by their group name (the run name without the seed) *and* by the values of every
config key that differs between the loaded runs, read from the `config_resolved.yaml` beside each
`results.json` (else from `results["config"]`, else the group name alone). Per-run bookkeeping keys
(`BOOKKEEPING_KEYS`: seed, run name, paths, logger, ...) never split groups; a key missing from a config
counts as null (configs written before the key existed). A group's label is its group name plus
`key=value` for the differing keys that the group name does not already determine (those with more than
one value among the runs of that name), e.g. `synthetic-strings_t5-cpoly-a3b1r2 optim.lr=0.001`. Groups
are split into sections by (benchmark, metric); only groups within one section are compared.

Statistics. Each group row has n (seeds with the metric), the mean ± sample standard deviation over
seeds of the macro-averaged metric, the Student-t 95% confidence interval of the mean (n/a for n = 1),
skill recovery (synthetic benchmark), trainable parameters and per-task means.

Flags:
  dirs                  run folders, multirun folders or results.json files
  --metric NAME         the metric to report (default: each run's main_metric)
  --which final|best    the final or the best checkpoint's scores (default final)
  --format markdown|csv markdown tables (default) or one CSV table on stdout; the CSV has the statistics
                        (n, mean, std, ci_low, ci_high), the comparison (baseline, diff_mean, diff_std,
                        diff_ci_low, diff_ci_high, p_value, n_pairs, test; empty without --baseline) and
                        a `config:<key>` column per key shown in the labels
  --per-task / --no-per-task
                        per-task columns (default on)
  --baseline M          compare every group with a baseline, paired by seed (seeds present in both). M is
                        a group label (that one group is the baseline of every group in its section), or a
                        method or group name: then each group is paired with the group of that method that
                        has the same backbone and the same values of every differing key except the
                        method's own (`method.*`, METHOD_DERIVED_KEYS, and `init_from` and `transfer.*`:
                        a transfer variant is part of its arm); none or several: n/a, and why.
                        Prints a "vs M" table per section: pairs, mean and std of the differences
                        (group - baseline), their 95% CI and a two-sided p-value; n/a with < 2 pairs
  --test ttest|bootstrap
                        the paired test: Student t (scipy.stats.ttest_rel, default) or a paired bootstrap
                        of the mean difference (10,000 resamples, numpy Generator(0); percentile CI;
                        p = 2 min(P(d <= 0), P(d >= 0)), at most 1)
  --plot PATH           a PNG of horizontal bars, one per group: the mean with its 95% CI as error bars
  --curve PATH          a PNG sample-efficiency figure: the metric against the --x config key, one line
                        per group label without the x key, mean over seeds with a ± 1 std band, log x
                        axis when x spans more than 8x; one panel per section. Its table (rows = lines,
                        columns = x values, cells `mean ± std (n)`) is printed too: on stdout after the
                        tables, on stderr with --format csv
  --x KEY               the config key of --curve's x axis (default benchmark.n_train_per_task)
  --dendrogram PATH     a PNG of task dendrograms (cpoly.logging.dendrogram), one panel per group whose
                        runs record a learned allocation (`results["allocation"]["shared"]`), from the
                        group's lowest seed (named in the panel title)

Exit status: 0; 1 when no finished run was found; 2 for bad arguments (an unknown --baseline or --x, no
allocation to draw), with one line on stderr naming the value and the choices."""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import re
import statistics
import sys
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# The methods' display order is the registry's (registration order); unknown methods sort after, by name.
from cpoly.skills.methods import method_rank

# Config keys that are per-run bookkeeping, not part of a setting: they never split groups. An entry
# ending in "." is a prefix; any other entry is the key itself and everything below it.
BOOKKEEPING_KEYS = (
    "seed",
    "run_name",
    "group",
    "task_name",
    "tags",
    "resume",
    "paths.",
    "logger.",
    "hydra.",
    "trainer.progress_bar",
    "trainer.cpu_threads",
    "trainer.eval_batch_size",
    "trainer.log_every",
)
# Keys that define the method (a baseline of the same method name is matched on every other key).
METHOD_KEY_PREFIX = "method."
# Keys outside `method.` that the config interpolates from it (conf/optim/adamw.yaml:
# `router_lr: ${method.router_lr}`): they differ between methods and count as the method's.
METHOD_DERIVED_KEYS = ("optim.router_lr",)
# A run started from a library: where from and what trained make the (method, variant) arm, so a baseline
# from scratch (--baseline task_lora) is matched on every other key (docs/transfer.md).
TRANSFER_KEY_PREFIXES = ("init_from", "transfer.")

CONFIDENCE = 0.95
BOOTSTRAP_RESAMPLES = 10_000
BOOTSTRAP_SEED = 0
DEFAULT_CURVE_X = "benchmark.n_train_per_task"
TESTS = {"ttest": "paired t-test", "bootstrap": "paired bootstrap"}
NO_ALLOCATION = "--dendrogram: no run records a learned allocation (results.json 'allocation')"


class ReportError(ValueError):
    """Bad input for the report (an unknown --baseline or --x, nothing to draw): one line for stderr."""


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


# ---------------------------------------------------------------------------------------------- statistics


def mean_ci(values: Sequence[float], confidence: float = CONFIDENCE) -> tuple[float, float]:
    """mean ± t_{(1+confidence)/2, n-1} * std / sqrt(n); NaNs for fewer than 2 values."""
    n = len(values)
    if n < 2:
        return math.nan, math.nan
    from scipy import stats

    mean = statistics.fmean(values)
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * statistics.stdev(values) / math.sqrt(n)
    return mean - half, mean + half


def paired_test(values: Sequence[float], baseline: Sequence[float], test: str = "ttest") -> tuple[float, float, float]:
    """(ci_low, ci_high, p_value) of the mean of `values - baseline` (pairs in order), two-sided. `ttest`:
    the Student-t CI and scipy.stats.ttest_rel; `bootstrap`: the percentile CI and p-value of 10,000
    paired resamples (numpy Generator(BOOTSTRAP_SEED)). NaNs for fewer than 2 pairs."""
    import numpy as np

    if test not in TESTS:
        raise ValueError(f"unknown test {test!r}; choose one of {', '.join(TESTS)}")
    a, b = np.asarray(values, dtype=float), np.asarray(baseline, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"paired samples differ in length: {a.size} and {b.size}")
    if a.size < 2:
        return math.nan, math.nan, math.nan
    diffs = a - b
    if test == "ttest":
        from scipy import stats

        low, high = mean_ci(diffs.tolist())
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore", RuntimeWarning)  # identical differences: scipy says NaN
            p_value = float(stats.ttest_rel(a, b).pvalue)
        return low, high, p_value
    rng = np.random.default_rng(BOOTSTRAP_SEED)
    means = diffs[rng.integers(0, diffs.size, size=(BOOTSTRAP_RESAMPLES, diffs.size))].mean(axis=1)
    alpha = (1 - CONFIDENCE) / 2
    low, high = np.quantile(means, [alpha, 1 - alpha])
    p_value = min(1.0, 2 * min(float(np.mean(means <= 0)), float(np.mean(means >= 0))))
    return float(low), float(high), p_value


# ------------------------------------------------------------------------------------------- loading runs


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


def flatten_config(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings as dotted keys (`optim.lr`); lists, scalars and empty mappings are leaves."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten_config(value, name + "."))
        else:
            out[name] = value
    return out


def read_config(results_path: str | Path, warn=_stderr) -> dict[str, Any] | None:
    """The flattened `config_resolved.yaml` beside a `results.json`; None when there is none."""
    import yaml

    path = Path(results_path).with_name("config_resolved.yaml")
    if not path.is_file():
        return None
    try:
        loaded = yaml.load(path.read_text(encoding="utf-8"), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except (OSError, yaml.YAMLError) as error:
        warn(f"ignored {path}: {error}")
        return None
    if not isinstance(loaded, dict):
        warn(f"ignored {path}: not a mapping")
        return None
    return flatten_config(loaded)


def load_runs(paths: Iterable[str | Path], warn=_stderr) -> list[dict[str, Any]]:
    """The finished runs below `paths`; unreadable files and unfinished runs are reported and skipped.
    Each run gets `_path` and `_config` (its flattened config_resolved.yaml, or None). A `.csv` path is a
    per-run table written by `--format csv` (`read_runs_csv`)."""
    paths = [Path(p) for p in paths]
    runs = [run for p in paths if p.suffix == ".csv" for run in read_runs_csv(p)]
    for path in find_results(p for p in paths if p.suffix != ".csv"):
        try:
            run = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as error:
            warn(f"skipped {path}: {error}")
            continue
        status = run.get("status", "finished")
        if status != "finished":
            warn(f"skipped {path}: status {status!r}")
            continue
        if "test" not in run:
            warn(f"skipped {path}: written before the dev split (no 'test' section; its best/ was chosen on test)")
            continue
        run["_path"] = str(path)
        run["_config"] = read_config(path, warn=warn)
        runs.append(run)
    return runs


# ------------------------------------------------------------------------------------------ per-run CSV

# The columns of a per-run table before the varying config keys and the scores (`--format csv`).
RUN_COLUMNS = [
    "group", "benchmark", "backbone", "method", "seed", "main_metric", "selection_metric", "selection_step",
    "steps", "trainable", "total", "skill_recovery", "train_seconds", "wall_time_s", "git_sha",
]  # fmt: skip
SPLITS = ("dev", "test")
WHICH = ("final", "best")


def runs_frame(runs: Sequence[dict[str, Any]]):
    """One row per run (a pandas DataFrame): who it is, the config keys that differ between the runs
    (`config:<key>`), the dev and test averages of every metric, final and best (`<split>/<which>/avg/<m>`),
    the test split's per-task scores (`test/<which>/<task>/<m>`), wall time and git SHA."""
    import pandas as pd

    configs = [run_config(run) for run in runs]
    keys = differing_keys(configs)
    rows = []
    for run, config in zip(runs, configs, strict=True):
        parameters = run.get("parameters") or {}
        selection = run.get("selection") or {}
        row: dict[str, Any] = {
            "group": group_name(run),
            **{k: run.get(k) for k in ("benchmark", "backbone", "method", "seed", "main_metric", "steps")},
            "selection_metric": selection.get("metric"),
            "selection_step": selection.get("step"),
            "trainable": parameters.get("trainable"),
            "total": parameters.get("total"),
            **{k: run.get(k) for k in ("skill_recovery", "train_seconds", "wall_time_s", "git_sha")},
        }
        row |= {f"config:{k}": format_value((config or {}).get(k)) for k in keys}
        for split in SPLITS:
            for which in WHICH:
                scores = (run.get(split) or {}).get(which) or {}
                row |= {f"{split}/{which}/avg/{m}": v for m, v in (scores.get("avg") or {}).items()}
                if split == "test":
                    for task, per in (scores.get("per_task") or {}).items():
                        row |= {f"test/{which}/{task}/{m}": v for m, v in per.items()}
        rows.append(row)
    return pd.DataFrame(rows, columns=list(dict.fromkeys([*RUN_COLUMNS, *(k for r in rows for k in r)])))


def runs_csv(runs: Sequence[dict[str, Any]]) -> str:
    return runs_frame(runs).to_csv(index=False, lineterminator="\n")


def read_runs_csv(path: str | Path) -> list[dict[str, Any]]:
    """The runs of a per-run table (`--format csv`) as results.json-like dicts, for every table and test
    the report computes from run folders (allocations and dendrograms need the folders)."""
    import pandas as pd
    import yaml

    path = Path(path)
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as error:
        raise ReportError(f"{path}: not a per-run table ({error})") from None
    missing = [c for c in ("group", "benchmark", "method", "seed", "main_metric") if c not in frame.columns]
    if missing:
        raise ReportError(f"{path}: not a per-run table written by --format csv (no column {missing[0]!r})")
    number = lambda v: None if v == "" else float(v)  # noqa: E731
    runs = []
    for i, row in enumerate(frame.to_dict("records"), start=2):
        run: dict[str, Any] = {
            k: row.get(k) or None for k in ("group", "benchmark", "backbone", "method", "main_metric")
        }
        run |= {"_path": f"{path}:{i}", "git_sha": row.get("git_sha") or None}
        run["seed"] = yaml.safe_load(row["seed"]) if row["seed"] else None
        run["skill_recovery"] = number(row.get("skill_recovery", ""))
        run["wall_time_s"] = number(row.get("wall_time_s", ""))
        run["parameters"] = {k: int(float(row[k])) for k in ("trainable", "total") if row.get(k)}
        run["selection"] = {
            "metric": row.get("selection_metric") or None,
            "step": number(row.get("selection_step", "")),
        }
        configs = {k.removeprefix("config:"): yaml.safe_load(v) for k, v in row.items() if k.startswith("config:")}
        run["_config"] = configs
        for split in SPLITS:
            run[split] = {which: {"avg": {}, "per_task": {}} for which in WHICH}
        for key, value in row.items():
            parts = key.split("/")
            if len(parts) >= 4 and parts[0] in SPLITS and parts[1] in WHICH and value != "":
                split, which, task, metric = parts[0], parts[1], "/".join(parts[2:-1]), parts[-1]
                target = (
                    run[split][which]["avg"] if task == "avg" else run[split][which]["per_task"].setdefault(task, {})
                )
                target[metric] = float(value)
        runs.append(run)
    return runs


def run_config(run: dict[str, Any]) -> dict[str, Any] | None:
    """A run's flattened config: `_config` (from load_runs), else `results["config"]`, else None."""
    if run.get("_config") is not None:
        return run["_config"]
    if isinstance(run.get("config"), dict):
        return flatten_config(run["config"])
    return None


def group_name(run: dict[str, Any]) -> str:
    if run.get("group"):
        return run["group"]
    return re.sub(r"-s\d+$", "", run.get("run_name", "unnamed"))


def is_bookkeeping(key: str) -> bool:
    for entry in BOOKKEEPING_KEYS:
        if entry.endswith("."):
            if key.startswith(entry):
                return True
        elif key == entry or key.startswith(entry + "."):
            return True
    return False


def is_method_key(key: str) -> bool:
    return key.startswith(METHOD_KEY_PREFIX) or key in METHOD_DERIVED_KEYS or key.startswith(TRANSFER_KEY_PREFIXES)


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def differing_keys(configs: Iterable[dict[str, Any] | None]) -> list[str]:
    """The non-bookkeeping keys whose value is not the same in every given config; a key a config lacks
    counts as null there (a config written before the key existed)."""
    configs = [c for c in configs if c is not None]
    keys = sorted({k for c in configs for k in c if not is_bookkeeping(k)})
    return [k for k in keys if len({_canonical(c.get(k)) for c in configs}) > 1]


def format_value(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(value, separators=(",", ":"), default=str)


def _value_sort_key(value: Any) -> tuple:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return (0, float(value), "")
    return (1, 0.0, format_value(value))


# ----------------------------------------------------------------------------------------------- grouping


def summarise(
    runs: Sequence[dict[str, Any]],
    metric: str | None = None,
    which: str = "final",
    warn=_stderr,
    split: str = "test",
) -> list[GroupSummary]:
    """One summary per group (group name and values of the differing config keys), sorted by benchmark,
    backbone, method (paper order), name and the label's values. `metric` defaults to each run's
    `main_metric`; `split` is `test` or `dev`; `which` is `final` (the last step) or `best` (best/, the
    step the dev split chose: the same step for both splits)."""
    configs = [run_config(run) for run in runs]
    keys = differing_keys(configs)
    # A group's label shows the differing keys its group name does not determine: those that take
    # more than one value among the loaded runs of that name.
    per_name: dict[str, dict[str, set[str]]] = {}
    for run, config in zip(runs, configs, strict=True):
        if config is not None:
            for key in keys:
                per_name.setdefault(group_name(run), {}).setdefault(key, set()).add(_canonical(config.get(key)))
    shown_keys = {name: [k for k in keys if len(values[k]) > 1] for name, values in per_name.items()}

    groups: dict[tuple, GroupSummary] = {}
    for run, config in zip(runs, configs, strict=True):
        name = group_name(run)
        settings = None if config is None else {k: config.get(k) for k in keys}
        identity = (name, None if settings is None else tuple(_canonical(v) for v in settings.values()))
        summary = groups.get(identity)
        if summary is None:
            shown = {} if settings is None else {k: format_value(settings[k]) for k in shown_keys.get(name, [])}
            summary = groups[identity] = GroupSummary(
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
        seed = run.get("seed")
        if seed in summary.seeds:
            warn(f"group {summary.label}: seed {seed} appears more than once ({run.get('_path', '?')})")
        summary.seeds.append(seed)
        scores = (run.get(split) or {}).get(which) or {}
        value = (scores.get("avg") or {}).get(summary.metric)
        if value is None:
            warn(f"{run.get('_path', name)}: no {split}/{which}/avg/{summary.metric}")
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

    # No-config groups whose name equals a configured group's label would read the same.
    labels = [g.label for g in groups.values()]
    for g in groups.values():
        if g.settings is None and keys and labels.count(g.label) > 1:
            g.label += " (no config)"
    return sorted(groups.values(), key=_sort_key)


def _sort_key(g: GroupSummary) -> tuple:
    label_values = tuple(_value_sort_key((g.settings or {}).get(k)) for k in g.shown)
    return (g.benchmark, g.metric, g.backbone, _method_rank(g.method), g.method, g.group, label_values, g.label)


def sections(groups: Sequence[GroupSummary]) -> dict[tuple[str, str], list[GroupSummary]]:
    """Groups split by (benchmark, metric): their tasks and metric are comparable within a section."""
    out: dict[tuple[str, str], list[GroupSummary]] = {}
    for g in groups:
        out.setdefault((g.benchmark, g.metric), []).append(g)
    return out


def task_names(groups: Sequence[GroupSummary]) -> list[str]:
    return sorted({task for g in groups for task in g.per_task})


# ---------------------------------------------------------------------------------------------- baselines


def _matching_settings(g: GroupSummary) -> tuple | None:
    """What a group must share with its baseline: backbone and every differing non-method key."""
    if g.settings is None:
        return (g.backbone, None)
    return (g.backbone, tuple((k, _canonical(v)) for k, v in g.settings.items() if not is_method_key(k)))


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
        if not is_method_key(key) and all(_canonical(r.settings.get(key)) != _canonical(value) for r in references):
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


# ------------------------------------------------------------------------------------------------- tables


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
        header = ["group", "backbone", "method", "seeds", f"{metric} ({members[0].short_label})", "95% CI"]
        header += ["skill recovery"] * recovery + ["trainable params", "trainable %"] + tasks
        rows = []
        for g in members:
            seeds = str(g.n) if g.n == len(g.seeds) else f"{g.n} of {len(g.seeds)}"
            row = [g.label, g.backbone, g.method, seeds, _mean_std(g.values), _interval(*g.ci)]
            row += [_mean_std(g.skill_recovery, digits=3)] * recovery
            row += [_count(g.parameters.get("trainable")), _percent(g.parameters)]
            row += [_number(g.task_mean(t)) for t in tasks]
            rows.append(row)
        title = f"## {benchmark or 'unknown benchmark'}: {metric}, {members[0].scores_label} (mean ± std over seeds)"
        block = (
            [title, ""] * titles + [_markdown_row(header), _markdown_rule(header)] + [_markdown_row(r) for r in rows]
        )
        if comparisons is not None:
            block += ["", _comparison_block(members, comparisons, titles)]
        blocks.append("\n".join(block))
    return "\n\n".join(blocks) + "\n"


def _comparison_block(members: Sequence[GroupSummary], comparisons: Sequence[Comparison], titles: bool = True) -> str:
    mine = [c for c in comparisons if any(c.group is g for g in members)]
    test = mine[0].test if mine else "ttest"
    reference = mine[0].reference if mine else ""
    title = f"vs {reference or 'baseline'}: paired by seed, group - baseline ({TESTS[test]})"
    title = f"### {title}" if titles else f"*{title}*"
    if not mine:
        return f"{title}\n\nno other group to compare"
    notes = any(c.note for c in mine)
    header = ["group", "baseline", "pairs", "mean diff", "std diff", "95% CI", f"p ({TESTS[test]})"]
    header += ["note"] * notes
    rows = []
    for c in mine:
        row = [c.group.label, c.baseline.label if c.baseline else "n/a", str(c.n_pairs)]
        row += [_number(c.mean), _number(c.std), _interval(c.ci_low, c.ci_high), _p_value(c.p_value, c.test)]
        rows.append(row + [c.note] * notes)
    return "\n".join(
        [title, "", _markdown_row(header), _markdown_rule(header, text_columns=2)] + [_markdown_row(r) for r in rows]
    )


def csv_table(
    groups: Sequence[GroupSummary],
    per_task: bool = True,
    comparisons: Sequence[Comparison] | None = None,
    titles: bool = True,
) -> str:
    """The groups' statistics as CSV (`--format summary-csv`), one row per group."""
    tasks = task_names(groups) if per_task else []
    shown = list(dict.fromkeys(k for g in groups for k in g.shown))
    header = [
        "group",
        "benchmark",
        "backbone",
        "method",
        "metric",
        "split",
        "which",
        "n_seeds",
        "seeds",
        "label",
        "n",
        "mean",
        "std",
        "ci_low",
        "ci_high",
        "skill_recovery",
        "trainable",
        "total",
        "baseline",
        "diff_mean",
        "diff_std",
        "diff_ci_low",
        "diff_ci_high",
        "p_value",
        "n_pairs",
        "test",
    ]
    header += [f"config:{k}" for k in shown] + [f"task:{t}" for t in tasks]
    by_group = {id(c.group): c for c in comparisons or []}
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    for g in groups:
        recovery = statistics.fmean(g.skill_recovery) if g.skill_recovery else math.nan
        c = by_group.get(id(g))
        if c is None or c.baseline is None:
            diff = ["" if c is None else "n/a"] + [""] * 6 + ([""] if c is None else [c.test])
        else:
            diff = [c.baseline.label, _csv_number(c.mean), _csv_number(c.std), _csv_number(c.ci_low)]
            diff += [_csv_number(c.ci_high), _csv_number(c.p_value), c.n_pairs, c.test]
        writer.writerow(
            [
                g.group,
                g.benchmark,
                g.backbone,
                g.method,
                g.metric,
                g.split,
                g.which,
                len(g.seeds),
                ";".join(str(s) for s in g.seeds),
                g.label,
                g.n,
                _csv_number(g.mean),
                _csv_number(g.std),
                _csv_number(g.ci[0]),
                _csv_number(g.ci[1]),
                _csv_number(recovery),
                g.parameters.get("trainable", ""),
                g.parameters.get("total", ""),
            ]
            + diff
            + ["" if g.settings is None else format_value(g.settings.get(k)) for k in shown]
            + [_csv_number(g.task_mean(t)) for t in tasks]
        )
    return buffer.getvalue()


# ------------------------------------------------------------------------------------------------- curves


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


def _x_values(lines: dict[str, dict[Any, GroupSummary]]) -> list[Any]:
    return sorted({x for points in lines.values() for x in points}, key=_value_sort_key)


def curve_table(groups: Sequence[GroupSummary], x_key: str = DEFAULT_CURVE_X, titles: bool = True) -> str:
    """Markdown, one table per section: rows = lines (methods), columns = x values, `mean ± std (n)`."""
    blocks = []
    for (benchmark, metric), lines in curve_points(groups, x_key).items():
        xs = _x_values(lines)
        first = next(iter(next(iter(lines.values())).values()))
        header = [f"{metric} ({first.short_label})"] + [f"{x_key}={format_value(x)}" for x in xs]
        rows = []
        for line, points in lines.items():
            rows.append([line] + [_mean_std_n(points[x]) if x in points else "" for x in xs])
        label = next(iter(next(iter(lines.values())).values())).scores_label
        title = f"## {benchmark or 'unknown benchmark'}: {metric} against {x_key}, {label} (mean ± std (n) over seeds)"
        rule = _markdown_rule(header, text_columns=1)
        blocks.append(
            "\n".join([title, ""] * titles + [_markdown_row(header), rule] + [_markdown_row(r) for r in rows])
        )
    return "\n\n".join(blocks) + "\n"


def log_x_axis(values: Sequence[float]) -> bool:
    """A log x axis for positive x values that span more than 8x."""
    return bool(values) and min(values) > 0 and max(values) / min(values) > 8


def plot_curves(groups: Sequence[GroupSummary], path: str | Path, x_key: str = DEFAULT_CURVE_X) -> Path:
    """The sample-efficiency figure: the metric against `x_key`, one line per group label without the x
    key (mean over seeds, ± 1 std band, markers), log x axis when x spans more than 8x; one panel per
    (benchmark, metric)."""
    import numpy as np

    from cpoly.logging.figures import label_fontsize, new_figure, save_figure

    parts = curve_points(groups, x_key)
    if not parts:
        raise ReportError(f"--curve: no group's config has {x_key!r}")
    longest = max(len(line) for lines in parts.values() for line in lines)
    fig = new_figure(min(40.0, (6.0 + min(10.0, 0.055 * longest)) * len(parts)), 4.8)
    axes = fig.subplots(1, len(parts), squeeze=False)[0]
    for ax, ((benchmark, metric), lines) in zip(axes, parts.items(), strict=True):
        xs = _x_values(lines)
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


# ---------------------------------------------------------------------------------------- bars, dendrograms


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
            seed, tasks, matrix = min(g.allocations, key=lambda a: _value_sort_key(a[0]))
            n = len(g.seeds)
            panels.append((f"{g.label}\n(seed {seed}, the first of {n} seed{'s' * (n != 1)})", tasks, matrix))
    return panels


def plot_group_dendrograms(groups: Sequence[GroupSummary], path: str | Path) -> Path:
    from cpoly.logging.dendrogram import plot_dendrograms

    panels = allocation_panels(groups)
    if not panels:
        raise ReportError(NO_ALLOCATION)
    return plot_dendrograms(panels, path)


# ------------------------------------------------------------------------------------------------ helpers


def _method_rank(method: str) -> int:
    return method_rank(method)


def _mean_std(values: Sequence[float], digits: int = 2) -> str:
    if not values:
        return "n/a"
    mean = statistics.fmean(values)
    if len(values) == 1:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def _mean_std_n(g: GroupSummary) -> str:
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


def _percent(parameters: dict[str, int]) -> str:
    trainable, total = parameters.get("trainable"), parameters.get("total")
    if not trainable or not total:
        return "n/a"
    return f"{100 * trainable / total:.3g}%"


def _markdown_row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"


def _markdown_rule(header: Sequence[str], text_columns: int = 3) -> str:
    # Text columns (the first `text_columns` and a note) left, numbers right.
    cells = [":---" if i < text_columns or name == "note" else "---:" for i, name in enumerate(header)]
    return "|" + "|".join(cells) + "|"


# ------------------------------------------------------------------------------------ tables in the docs

# A results table in README.md or docs/*.md sits between these lines; the opening one holds the report's
# arguments (paths relative to the repository root), e.g.
#   <!-- report: docs/results/methods9.csv --metric exact_match --no-per-task --baseline cpoly -->
#   ...the table, written by `python -m cpoly.report --docs`...
#   <!-- /report -->
DOCS_TABLE = re.compile(r"(?P<open><!-- report: (?P<args>[^\n]*?) -->\n)(?P<body>.*?)(?P<close><!-- /report -->)", re.S)


def docs_files(root: Path) -> list[Path]:
    return [p for p in [root / "README.md", *sorted((root / "docs").glob("*.md"))] if p.is_file()]


def render_docs_table(args: str, root: Path) -> str:
    """The table a marker's arguments give, as `python -m cpoly.report <args> --no-titles` prints it, run
    from the repository root (no figure is written)."""
    import contextlib
    import shlex

    argv = shlex.split(args)
    refused = ("--plot", "--curve", "--dendrogram", "--docs", "--format", "--check", "--root")
    if any(a.split("=")[0] in refused for a in argv):
        raise ReportError(f"report: {args}: a docs table takes table arguments only (no figures, --format or --docs)")
    out, err = io.StringIO(), io.StringIO()
    with contextlib.chdir(root), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([*argv, "--no-titles"])
    if code != 0:
        raise ReportError(f"report: {args}: {err.getvalue().strip() or f'exit {code}'}")
    return out.getvalue().rstrip("\n") + "\n"


def rewrite_docs(root: Path, check: bool = False) -> list[str]:
    """Rewrite every results table of README.md and docs/*.md from the files its marker names; with `check`,
    write nothing. Returns the tables that differ(ed), as `file:line (report: args)`."""
    changed = []
    for path in docs_files(root):
        text = path.read_text(encoding="utf-8")
        pieces, position = [], 0
        for match in DOCS_TABLE.finditer(text):
            body = render_docs_table(match["args"], root)
            if body != match["body"]:
                line = text.count("\n", 0, match.start()) + 1
                changed.append(f"{path.relative_to(root)}:{line} (report: {match['args']})")
            pieces += [text[position : match.start("body")], body]
            position = match.end("body")
        new = "".join(pieces) + text[position:]
        if not check and new != text:
            path.write_text(new, encoding="utf-8")
    return changed


def docs_command(root: Path, check: bool) -> int:
    try:
        changed = rewrite_docs(root, check)
    except ReportError as error:
        _stderr(str(error))
        return 2
    for table in changed:
        _stderr(f"{'differs from its results' if check else 'rewrote'}: {table}")
    if check and changed:
        _stderr(f"{len(changed)} table(s) differ from the committed results: run python -m cpoly.report --docs")
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m cpoly.report",
        description=__doc__.split("\n\n")[0],
        epilog="See the module docstring (python -c 'import cpoly.report; help(cpoly.report)') for grouping rules.",
    )
    parser.add_argument(
        "dirs", nargs="*", help="run folders, multirun folders, results.json files or per-run CSV files (--format csv)"
    )
    parser.add_argument("--metric", help="the metric to report (default: each run's main_metric)")
    parser.add_argument(
        "--split",
        choices=list(SPLITS),
        default="test",
        help="the split's scores: test (default) or dev (the selecting one)",
    )
    parser.add_argument(
        "--which",
        choices=list(WHICH),
        default="final",
        help="final: the last step's adapters (default); best: best/'s, the step chosen on the dev split",
    )
    parser.add_argument(
        "--format",
        choices=["markdown", "csv", "summary-csv"],
        default="markdown",
        help="markdown tables (default); csv: one row per run (as docs/results/ holds); summary-csv: a row per group",
    )
    parser.add_argument(
        "--titles", action=argparse.BooleanOptionalAction, default=True, help="section titles (default on)"
    )
    parser.add_argument(
        "--docs",
        action="store_true",
        help="rewrite every results table of README.md and docs/*.md from what its <!-- report: ... --> marker names",
    )
    parser.add_argument(
        "--check", action="store_true", help="with --docs: write nothing, exit 1 naming each table that differs"
    )
    parser.add_argument(
        "--root", type=Path, default=Path.cwd(), help="with --docs: the repository root (default: here)"
    )
    parser.add_argument(
        "--per-task",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="per-task columns (default on)",
    )
    parser.add_argument(
        "--baseline",
        metavar="METHOD_OR_LABEL",
        help="compare every group with this method's (or this labelled) group, paired by seed",
    )
    parser.add_argument("--test", choices=list(TESTS), default="ttest", help="the paired test (default ttest)")
    parser.add_argument("--plot", type=Path, help="write a bar chart (mean, 95%% CI error bars) to this PNG")
    parser.add_argument("--curve", type=Path, help="write the metric against --x, one line per method, to this PNG")
    parser.add_argument(
        "--curve-table", action="store_true", help="print --x's curve table instead of the group table (no figure)"
    )
    parser.add_argument("--x", default=DEFAULT_CURVE_X, help=f"--curve's x axis config key (default {DEFAULT_CURVE_X})")
    parser.add_argument("--dendrogram", type=Path, help="write task dendrograms of the learned allocations to this PNG")
    args = parser.parse_args(argv)
    if args.docs:
        return docs_command(args.root, args.check)
    if not args.dirs:
        parser.error("give run folders or per-run CSV files (or --docs)")

    try:
        runs = load_runs(args.dirs)
    except ReportError as error:
        _stderr(str(error))
        return 2
    if not runs:
        _stderr(f"no finished results.json below {', '.join(args.dirs)}")
        return 1
    if args.format == "csv":
        sys.stdout.write(runs_csv(runs))
        return 0
    groups = summarise(runs, metric=args.metric, which=args.which, split=args.split)
    try:  # every check of the arguments before anything is printed or written
        comparisons = compare(groups, args.baseline, args.test) if args.baseline else None
        if args.curve or args.curve_table:
            check_curve_key(groups, args.x)
            curves = curve_table(groups, args.x, titles=args.titles)
        if args.dendrogram and not allocation_panels(groups):
            raise ReportError(NO_ALLOCATION)
    except ReportError as error:
        _stderr(str(error))
        return 2
    if args.curve_table:
        sys.stdout.write(curves)
        return 0
    table = markdown_table if args.format == "markdown" else csv_table
    sys.stdout.write(table(groups, per_task=args.per_task, comparisons=comparisons, titles=args.titles))
    if args.curve:
        if args.format == "markdown":
            sys.stdout.write("\n" + curves)
        else:
            sys.stderr.write(curves)
        _stderr(f"wrote {plot_curves(groups, args.curve, args.x)}")
    if args.plot:
        _stderr(f"wrote {plot_groups(groups, args.plot)}")
    if args.dendrogram:
        _stderr(f"wrote {plot_group_dendrograms(groups, args.dendrogram)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
