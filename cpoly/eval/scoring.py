"""Per-task scoring with the metrics shipped as `evaluate` modules in cpoly/eval/metrics/<name>/<name>.py.

Modules are loaded by path (`evaluate.load` copies them into its module cache), never from the Hub, so
scoring works offline. Every backbone goes through the same path: encoder backbones hand in the label word
of their predicted index (`Example.choices[i]`) as the prediction.
"""

from __future__ import annotations

import functools
import inspect
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from cpoly.data.example import Example

METRICS_DIR = Path(__file__).parent / "metrics"
# Example fields a metric may take besides predictions/references, passed when its _compute names them.
_EXTRA_INPUTS = ("task", "choices", "groups")


def available_metrics() -> list[str]:
    return sorted(p.name for p in METRICS_DIR.iterdir() if (p / f"{p.name}.py").is_file())


def metric_path(name: str) -> Path:
    """The module file of a shipped metric, or `name` itself when it is a path to a module file or folder."""
    shipped = METRICS_DIR / name / f"{name}.py"
    if shipped.is_file():
        return shipped
    path = Path(name).expanduser()
    if path.is_dir() and (path / f"{path.name}.py").is_file():
        return path / f"{path.name}.py"
    if path.is_file() and path.suffix == ".py":
        return path
    raise ValueError(f"unknown metric {name!r}: expected one of {available_metrics()} or a path to an evaluate module")


@functools.cache
def load_metric(name: str):
    """The `evaluate` module of a metric, loaded by path (works with HF_HUB_OFFLINE=1), cached per process."""
    import evaluate  # imported here: importing cpoly.eval must stay cheap

    return evaluate.load(str(metric_path(name)), keep_in_memory=True)


def score_by_task(
    metric_name: str, examples: Sequence[Example], predictions: Sequence[str]
) -> dict[str, dict[str, float]]:
    """Metrics of each task (examples grouped by `Example.task`) plus "avg": the macro average of every key.

    `avg[key]` is the mean of `key` over the tasks that report it (SuperGLUE tasks report different keys;
    all report `score`).
    """
    if len(examples) != len(predictions):
        raise ValueError(f"{len(predictions)} predictions for {len(examples)} examples")
    metric = load_metric(metric_name)
    accepted = set(inspect.signature(metric._compute).parameters)
    by_task: dict[str, list[int]] = {}
    for i, example in enumerate(examples):
        by_task.setdefault(example.task, []).append(i)
    results: dict[str, dict[str, float]] = {}
    for task, indices in by_task.items():
        task_examples = [examples[i] for i in indices]
        extra = {
            "task": task,
            "choices": task_examples[0].choices,
            "groups": [ex.group if ex.group is not None else ex.id for ex in task_examples],
        }
        scores = metric.compute(
            predictions=[predictions[i] for i in indices],
            references=[ex.references for ex in task_examples],
            **{k: v for k, v in extra.items() if k in accepted and k in _EXTRA_INPUTS},
        )
        results[task] = {k: float(v) for k, v in scores.items()}
    results["avg"] = macro_average(results)
    return results


def macro_average(per_task: dict[str, dict[str, float]]) -> dict[str, float]:
    keys = dict.fromkeys(k for task, scores in per_task.items() if task != "avg" for k in scores)
    averages = {}
    for key in keys:
        values = [scores[key] for task, scores in per_task.items() if task != "avg" and key in scores]
        averages[key] = sum(values) / len(values)
    return averages


def majority_baseline(
    metric_name: str, train: Sequence[Example], examples: Sequence[Example]
) -> dict[str, dict[str, float]] | None:
    """The scores of answering every eval example of a classification task with its most frequent training
    label (ties: the first label of `choices`), per task and "avg"; None when no task has choices. The bar
    a classifier must clear before its accuracy means anything (SuperGLUE's BoolQ is 62% "yes")."""
    counts: dict[str, Counter] = {}
    for example in train:
        if example.choices:
            counts.setdefault(example.task, Counter())[example.train_target] += 1
    scored = [ex for ex in examples if ex.task in counts]
    if not scored:
        return None

    def most_frequent(example: Example) -> str:
        frequency = counts[example.task]
        return max(example.choices, key=lambda label: (frequency[label], -example.choices.index(label)))

    return score_by_task(metric_name, scored, [most_frequent(ex) for ex in scored])
