"""The dev split: what periodic evaluation, `best/`, early stopping and sweeps read, so that no choice is
ever made on the test split (which is scored once, at the end).

Every benchmark has three disjoint splits, train, dev and test. Where the data are finite (SuperNI,
SuperGLUE, JSON lines without a dev file), dev is held out of each task's *training* examples here:
`n_dev_per_task` units per task drawn with a generator seeded by (`data_seed`, task), so the same task and
seed always give the same dev examples whatever the other tasks, the training seed and the method. A unit
is an example, or all examples of one `group` (a MultiRC question's answer options, scored together), so a
group is never split between train and dev. The test split is never touched: SuperNI's evaluation
instances, SuperGLUE's validation files, a JSON-lines eval file. The synthetic benchmark draws dev words of
its own instead (its generator is not short of words; `cpoly.data.synthetic`).
"""

from __future__ import annotations

from collections.abc import Sequence

from cpoly.data.example import Example
from cpoly.data.io import DataError, seeded_rng


def _units(examples: Sequence[Example]) -> dict[str, list[list[int]]]:
    """Per task, in order of first appearance: lists of example positions that go together."""
    by_task: dict[str, dict[str, list[int]]] = {}
    for i, ex in enumerate(examples):
        key = f"group:{ex.group}" if ex.group is not None else f"example:{i}"
        by_task.setdefault(ex.task, {}).setdefault(key, []).append(i)
    return {task: list(units.values()) for task, units in by_task.items()}


def carve_dev(
    train: Sequence[Example], n_dev_per_task: int, data_seed: int, benchmark: str
) -> tuple[list[Example], list[Example]]:
    """(train without dev, dev): `n_dev_per_task` units of every training task held out, in file order."""
    if n_dev_per_task < 1:
        raise DataError(f"benchmark.n_dev_per_task={n_dev_per_task}: must be >= 1 (dev picks best/ and sweeps)")
    held: set[int] = set()
    for task, units in _units(train).items():
        if len(units) <= n_dev_per_task:
            raise DataError(
                f"benchmark {benchmark}: task {task!r} has {len(units)} training units (examples, or groups), "
                f"so benchmark.n_dev_per_task={n_dev_per_task} would leave none to train on; lower it"
                + (" or give benchmark.dev_file" if benchmark == "jsonl" else "")
            )
        for u in seeded_rng(data_seed, task, "dev").sample(range(len(units)), n_dev_per_task):
            held.update(units[u])
    kept = [ex for i, ex in enumerate(train) if i not in held]
    dev = [ex for i, ex in enumerate(train) if i in held]
    return kept, dev


def split_counts(train: Sequence[Example], dev: Sequence[Example], test: Sequence[Example]) -> dict[str, int]:
    return {"train": len(train), "dev": len(dev), "test": len(test)}


def check_disjoint(train: Sequence[Example], dev: Sequence[Example], test: Sequence[Example], benchmark: str) -> None:
    """No example id in two splits (ids are unique within a benchmark)."""
    ids = {name: {ex.id for ex in split} for name, split in (("train", train), ("dev", dev), ("test", test))}
    for a, b in (("train", "dev"), ("train", "test"), ("dev", "test")):
        shared = ids[a] & ids[b]
        if shared:
            raise DataError(
                f"benchmark {benchmark}: {len(shared)} examples are in both {a} and {b} (e.g. {min(shared)!r})"
            )
