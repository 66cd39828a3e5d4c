"""The record every benchmark produces and every later stage consumes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Example:
    """One multi-task example.

    `target` is one string or several acceptable references (SuperNI); the first reference is the
    training target and metrics take the maximum over all of them. `choices` are the label words of a
    classification task (the target is one of them); encoder backbones predict their index.
    `prefix` is instruction text placed before `source` (SuperNI's definition and demonstrations) that
    the tokeniser shortens first when the prompt is too long, so the instance itself is never cut for
    it. `id` is stable across runs and written to predictions.jsonl; `group` ties examples scored
    together (a MultiRC question's answer options).
    """

    task: str
    source: str
    target: str | list[str]
    choices: list[str] | None = None
    id: str = ""
    group: str | None = None
    prefix: str = ""

    @property
    def prompt(self) -> str:
        return self.prefix + self.source

    @property
    def references(self) -> list[str]:
        return [self.target] if isinstance(self.target, str) else list(self.target)

    @property
    def train_target(self) -> str:
        return self.references[0]

    @property
    def label(self) -> int:
        """Index of the target among `choices` (classification tasks only)."""
        if self.choices is None:
            raise ValueError(f"example {self.id!r} of task {self.task!r} has no choices")
        return self.choices.index(self.train_target)


@dataclass
class BenchmarkData:
    """What a benchmark loader returns: examples in three disjoint splits, the routing task list, and how
    to score. `dev` is what every choice reads (periodic evaluation, `best/`, sweeps); `test` is scored
    once at the end. A loader may leave `dev` as None: `cpoly.data.load_benchmark` then holds it out of
    each task's training examples (`cpoly.data.splits.carve_dev`)."""

    name: str
    train: list[Example]
    test: list[Example]
    # Tasks that own a routing row, in task-id order. Eval tasks outside it are unknown tasks
    # (cross-task generalisation) and need `unknown_task: uniform`.
    task_names: list[str]
    # Name of the `evaluate` module under cpoly/eval/metrics and the key of its output that
    # ranks checkpoints and is macro-averaged over tasks (e.g. "rougeL").
    metric: str
    main_metric: str
    # Synthetic benchmark only: the atomic skills each task composes (ground truth for skill_recovery).
    skill_structure: dict[str, list[str]] | None = None
    # Protocol facts for results.json (task list file, splits used, skipped tasks, ...).
    info: dict[str, Any] = field(default_factory=dict)
    dev: list[Example] | None = None

    @property
    def test_task_names(self) -> list[str]:
        return sorted({ex.task for ex in self.test})
