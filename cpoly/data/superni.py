"""Super-NaturalInstructions (SuperNI) as a multi-task benchmark.

Protocols (`protocol`):
- `cpoly` (default, the C-Poly paper's): `n_tasks` English tasks drawn with `data_seed` from the tasks of the
  split lists named in `task_pool` that have at least `n_train_per_task + n_eval_per_task` usable
  instances; from each task, `n_train_per_task` training and `n_eval_per_task` evaluation instances drawn
  with `data_seed` (disjoint). `task_list` (a file, one task per line) replaces the draw; the chosen list is
  returned in `task_names` (sorted when drawn, file order when given) and `info["tasks"]`, so writing it to
  a file and passing it back as `task_list` reproduces the run.
- `cross_task` (Tk-Instruct's unseen-task evaluation): train on the tasks of `task_pool` (default split
  `train`; `n_tasks` of them drawn with the seed when set), at most `n_train_per_task` instances each drawn
  with the seed; evaluate on the default *test* tasks present, on the first `n_eval_per_task` instances of
  each (official SuperNI evaluation). `task_names` are the training tasks only: the test tasks are unknown
  tasks at inference (`unknown_task: uniform`). With `few_shot_per_task: k`, each test task also gets k
  training instances from outside its evaluation instances (a few-shot pool, docs/transfer.md) and is a
  training task; `few_shot_only` trains on that pool alone.

Determinism: the task draw shuffles the sorted pool with a generator seeded by `data_seed` and takes the
first eligible tasks; the instance draw of a task uses a generator seeded by (`data_seed`, task name), so
the same task with the same `data_seed` always gets the same instances, whichever other tasks are drawn,
whatever the training seed and method.

Prompt (Tk-Instruct's layout; every piece is a config field, `{...}` are `str.format` fields):

    prefix = definition_template.format(definition=...)
             + example_template.format(index=1, input=..., output=...)   # n_positive_examples times
    source = instance_template.format(input=...)

which by default reads

    Definition: <definition>\\n\\n
    Positive Example 1 -\\nInput: <input>\\nOutput: <output>\\n\\n     (only if n_positive_examples > 0)
    Now complete the following example -\\nInput: <instance input>\\nOutput:

The definition and demonstrations go to `Example.prefix` (the tokeniser shortens them first), the instance
to `Example.source`. Targets are all non-empty reference outputs (the first is the training target).

Usable instances: outputs are stripped; an instance with no non-empty output is left out and counted in
`info["dropped_empty_target_instances"]` (`empty_targets: drop`, the default: the real data has a few, e.g.
task388) or is an error naming the task and instance (`empty_targets: error`); with `dedup_inputs` an
instance whose input repeats an earlier one of the same task (up to surrounding spaces) is left out too,
so no evaluation input can also be a training input.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cpoly.data.example import BenchmarkData, Example
from cpoly.data.io import DataError, read_name_list, resolve_data_dir, seeded_rng
from cpoly.data.superni_sources import HUB_DATASET, SPLITS, NIInstance, NITask, TaskStore, open_task_store

log = logging.getLogger(__name__)

PROTOCOLS = ("cpoly", "cross_task")


@dataclass
class SuperNIConfig:
    name: str = "superni"
    protocol: str = "cpoly"  # cpoly | cross_task
    # Seed of every data draw (tasks and instances); separate from the training seed so that every method
    # and every training seed sees the same tasks and instances.
    data_seed: int = 42
    n_tasks: int | None = 100  # null: every eligible task of the pool
    n_train_per_task: int = 1000
    n_eval_per_task: int = 100  # the test split
    # The dev split (periodic evaluation, best/, sweeps): held out of each training task's n_train_per_task
    # drawn instances (cpoly.data.splits), never out of its evaluation instances
    n_dev_per_task: int = 10
    task_list: str | None = None  # file with one task name per line; replaces the draw
    # Official default-split lists whose tasks may be drawn (train | test | excluded). The default keeps the
    # 119 test tasks out, so they stay unseen for cross-task evaluation, and adds the English tasks of the
    # excluded list (the shared offline copy has only 82 train-list tasks with 1,100 instances).
    task_pool: list[str] = field(default_factory=lambda: ["train", "excluded"])
    english_only: bool = True  # input, output and instruction language all English
    skip_small_tasks: bool = False  # task_list only: skip (and report) tasks with too few instances
    empty_targets: str = "drop"  # drop | error
    dedup_inputs: bool = True
    n_positive_examples: int = 0
    definition_template: str = "Definition: {definition}\n\n"
    example_template: str = "Positive Example {index} -\nInput: {input}\nOutput: {output}\n\n"
    instance_template: str = "Now complete the following example -\nInput: {input}\nOutput:"
    hub_dataset: str = HUB_DATASET  # used only without a local folder and with the Hub online
    # cross_task only, a few-shot pool of the unseen test tasks (docs/transfer.md): k training instances of
    # each test task, drawn with data_seed from its instances after the n_eval_per_task evaluation ones
    # (n_dev_per_task more are drawn with them for its dev split), and the test tasks become training tasks,
    # routed as known tasks. 0: none (the test tasks stay unknown at inference).
    few_shot_per_task: int = 0
    few_shot_only: bool = False  # with few_shot_per_task: train on the test tasks' pool only, not the train tasks


def load_superni(cfg: SuperNIConfig, data_dir: Path | str | None) -> BenchmarkData:
    _check_config(cfg)
    store = open_task_store(resolve_data_dir(data_dir), cfg.hub_dataset)
    usable = _UsableInstances(store, cfg)
    if cfg.protocol == "cpoly":
        train, evaluation, task_names, info = _cpoly_protocol(store, usable, cfg)
    else:
        train, evaluation, task_names, info = _cross_task_protocol(store, usable, cfg)
    info = {
        "source": store.kind,
        "source_location": store.location,
        "protocol": cfg.protocol,
        "data_seed": cfg.data_seed,
        **info,
        "tasks": task_names,
        "n_train": len(train),
        "n_eval": len(evaluation),
        "n_positive_examples": cfg.n_positive_examples,
        "fewer_positive_examples": _fewer_demonstrations(store, {ex.task for ex in train + evaluation}, cfg),
        "dropped_empty_target_instances": usable.dropped_empty,
        "dropped_duplicate_inputs": usable.dropped_duplicates,
    }
    used = {ex.task for ex in train + evaluation}
    dropped = {task: n for task, n in usable.dropped_empty.items() if task in used}
    if dropped:  # not an error by default (see empty_targets), but never silent
        log.warning("SuperNI: left out %d instances with an empty target: %s", sum(dropped.values()), dropped)
    return BenchmarkData(
        name=cfg.name,
        train=train,
        test=evaluation,
        task_names=task_names,
        metric="superni",
        main_metric="rougeL",
        info=info,
    )


# -------------------------------------------------------------------------------------------- protocols


def _cpoly_protocol(store: TaskStore, usable: _UsableInstances, cfg: SuperNIConfig):
    need = cfg.n_train_per_task + cfg.n_eval_per_task
    info: dict[str, Any] = {"n_train_per_task": cfg.n_train_per_task, "n_eval_per_task": cfg.n_eval_per_task}
    if cfg.task_list:
        task_names, skipped = _listed_tasks(store, usable, cfg, need)
        info.update(task_list_file=str(Path(cfg.task_list).expanduser()), skipped_small_tasks=skipped)
    else:
        task_names = sorted(_drawn_tasks(store, usable, cfg, need, cfg.n_tasks))
        info.update(task_pool=list(cfg.task_pool), n_tasks=cfg.n_tasks)
    train, evaluation = [], []
    for name in task_names:
        instances = usable.get(name)
        picks = seeded_rng(cfg.data_seed, name).sample(range(len(instances)), need)
        prefix = _prefix(store.get(name), cfg)
        train += [_example(name, prefix, instances[i], cfg) for i in sorted(picks[: cfg.n_train_per_task])]
        evaluation += [_example(name, prefix, instances[i], cfg) for i in sorted(picks[cfg.n_train_per_task :])]
    return train, evaluation, task_names, info


def _cross_task_protocol(store: TaskStore, usable: _UsableInstances, cfg: SuperNIConfig):
    if cfg.task_list:
        task_names, _ = _listed_tasks(store, usable, cfg, need=1)
    else:
        task_names = sorted(_drawn_tasks(store, usable, cfg, need=1, n_tasks=cfg.n_tasks))
    test_tasks = [n for n in store.split_lists.get("test", []) if n in store.available and _language_ok(store, n, cfg)]
    test_tasks = [n for n in test_tasks if n not in task_names and usable.get(n)]
    if not test_tasks:
        raise DataError(f"cross_task protocol: no default test task has data in {store.location}")
    train, evaluation = [], []
    for name in task_names:
        instances = usable.get(name)
        n_take = min(cfg.n_train_per_task, len(instances))
        picks = sorted(seeded_rng(cfg.data_seed, name).sample(range(len(instances)), n_take))
        prefix = _prefix(store.get(name), cfg)
        train += [_example(name, prefix, instances[i], cfg) for i in picks]
    for name in test_tasks:  # official evaluation: the first instances, in file order
        prefix = _prefix(store.get(name), cfg)
        evaluation += [_example(name, prefix, inst, cfg) for inst in usable.get(name)[: cfg.n_eval_per_task]]
    if cfg.few_shot_per_task:
        few_shot = _few_shot_pool(store, usable, cfg, test_tasks)
        train = few_shot if cfg.few_shot_only else train + few_shot
        task_names = list(test_tasks) if cfg.few_shot_only else [*task_names, *test_tasks]
    info = {
        "few_shot_per_task": cfg.few_shot_per_task,
        "few_shot_only": cfg.few_shot_only,
        "task_pool": list(cfg.task_pool),
        "task_list_file": str(Path(cfg.task_list).expanduser()) if cfg.task_list else None,
        "n_train_per_task": cfg.n_train_per_task,
        "n_eval_per_task": cfg.n_eval_per_task,
        "eval_tasks": test_tasks,
        "unknown_eval_tasks": None
        if cfg.few_shot_per_task
        else "eval tasks are default test tasks outside task_names: route them with unknown_task=uniform",
        "missing_test_tasks": len(store.split_lists.get("test", [])) - len(test_tasks),
    }
    return train, evaluation, task_names, info


def _few_shot_pool(store: TaskStore, usable: _UsableInstances, cfg: SuperNIConfig, test_tasks: list[str]) -> list:
    """k (+ n_dev_per_task, which the dev split takes back) training instances of each test task, drawn with
    (data_seed, task, "few_shot") from the instances after its evaluation ones, in file order."""
    need = cfg.few_shot_per_task + cfg.n_dev_per_task
    pool = []
    for name in test_tasks:
        rest = usable.get(name)[cfg.n_eval_per_task :]
        if len(rest) < need:
            raise DataError(
                f"benchmark.few_shot_per_task={cfg.few_shot_per_task}: test task {name!r} has {len(rest)} usable "
                f"instances beside its {cfg.n_eval_per_task} evaluation ones, fewer than few_shot_per_task + "
                f"n_dev_per_task = {need}; lower them"
            )
        picks = sorted(seeded_rng(cfg.data_seed, name, "few_shot").sample(range(len(rest)), need))
        prefix = _prefix(store.get(name), cfg)
        pool += [_example(name, prefix, rest[i], cfg) for i in picks]
    return pool


def _drawn_tasks(store: TaskStore, usable: _UsableInstances, cfg: SuperNIConfig, need: int, n_tasks: int | None):
    pool = sorted({name for split in cfg.task_pool for name in store.split_lists.get(split, [])})
    seeded_rng(cfg.data_seed, "tasks").shuffle(pool)
    chosen = []
    for name in pool:
        if n_tasks is not None and len(chosen) == n_tasks:
            break
        if name in store.available and _language_ok(store, name, cfg) and len(usable.get(name)) >= need:
            chosen.append(name)
    if n_tasks is not None and len(chosen) < n_tasks:
        raise DataError(
            f"only {len(chosen)} tasks of task_pool={list(cfg.task_pool)} in {store.location} "
            f"{'are English and ' if cfg.english_only else ''}have >= {need} usable instances, "
            f"but n_tasks={n_tasks}: lower n_tasks or the per-task counts, or widen task_pool"
        )
    return chosen


def _listed_tasks(store: TaskStore, usable: _UsableInstances, cfg: SuperNIConfig, need: int):
    path = Path(cfg.task_list).expanduser()
    names = read_name_list(path)
    missing = [n for n in names if n not in store.available]
    if missing:
        raise DataError(f"task list {path}: {len(missing)} task(s) not found in {store.location}: {_names(missing)}")
    foreign = [n for n in names if not _language_ok(store, n, cfg)]
    if foreign:
        raise DataError(f"task list {path}: not English (english_only=true): {_names(foreign)}")
    small = {n: len(usable.get(n)) for n in names if len(usable.get(n)) < need}
    if small and not cfg.skip_small_tasks:
        counts = ", ".join(f"{n} ({k})" for n, k in small.items())
        raise DataError(
            f"task list {path}: {len(small)} task(s) have fewer than {need} usable instances "
            f"(n_train_per_task + n_eval_per_task): {counts}; set skip_small_tasks=true to leave them out"
        )
    return [n for n in names if n not in small], small


def _language_ok(store: TaskStore, name: str, cfg: SuperNIConfig) -> bool:
    return not cfg.english_only or store.get(name).english is not False


def _names(names: list[str], limit: int = 20) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")


# ------------------------------------------------------------------------------------ instances, prompts


class _UsableInstances:
    """Per task, the instances that can be used, with stripped non-empty references (computed once)."""

    def __init__(self, store: TaskStore, cfg: SuperNIConfig):
        self.store, self.cfg = store, cfg
        self.cache: dict[str, list[NIInstance]] = {}
        self.dropped_empty: dict[str, int] = {}
        self.dropped_duplicates: dict[str, int] = {}

    def get(self, name: str) -> list[NIInstance]:
        if name not in self.cache:
            self.cache[name] = self._compute(self.store.get(name))
        return self.cache[name]

    def _compute(self, task: NITask) -> list[NIInstance]:
        kept, seen, empty, duplicates = [], set(), 0, 0
        for instance in task.instances:
            refs = tuple(stripped for r in instance.outputs if (stripped := r.strip()))
            if not refs:
                if self.cfg.empty_targets == "error":
                    raise DataError(
                        f"{task.origin}: instance {instance.id!r} of task {task.name!r} has an empty target "
                        f"(outputs {list(instance.outputs)!r}); set empty_targets=drop to leave such "
                        "instances out"
                    )
                empty += 1
                continue
            if self.cfg.dedup_inputs:
                key = instance.input.strip()  # the source holds the stripped input: same key, same prompt
                if key in seen:
                    duplicates += 1
                    continue
                seen.add(key)
            kept.append(instance if refs == instance.outputs else instance._replace(outputs=refs))
        if empty:
            self.dropped_empty[task.name] = empty
        if duplicates:
            self.dropped_duplicates[task.name] = duplicates
        return kept


def _fewer_demonstrations(store: TaskStore, tasks: set[str], cfg: SuperNIConfig) -> dict[str, int]:
    """Tasks that have fewer than n_positive_examples demonstrations (they use all they have)."""
    if cfg.n_positive_examples == 0:
        return {}
    counts = {name: len(store.get(name).positive_examples) for name in sorted(tasks)}
    return {name: n for name, n in counts.items() if n < cfg.n_positive_examples}


def _prefix(task: NITask, cfg: SuperNIConfig) -> str:
    parts = [cfg.definition_template.format(definition=task.definition)]
    for index, (text, output) in enumerate(task.positive_examples[: cfg.n_positive_examples], start=1):
        parts.append(cfg.example_template.format(index=index, input=text, output=output))
    return "".join(parts)


def _example(task: str, prefix: str, instance: NIInstance, cfg: SuperNIConfig) -> Example:
    source = cfg.instance_template.format(input=instance.input.strip())
    return Example(task=task, source=source, target=list(instance.outputs), id=instance.id, prefix=prefix)


def build_prompt(task: NITask, instance: NIInstance, cfg: SuperNIConfig) -> Example:
    """The Example of one instance (public for the prompt tests and for inspecting templates)."""
    return _example(task.name, _prefix(task, cfg), instance, cfg)


def _check_config(cfg: SuperNIConfig) -> None:
    def bad(field_name: str, why: str) -> DataError:
        return DataError(f"benchmark.{field_name}={getattr(cfg, field_name)!r}: {why}")

    if cfg.protocol not in PROTOCOLS:
        raise bad("protocol", f"expected one of {list(PROTOCOLS)}")
    if cfg.n_tasks is not None and cfg.n_tasks < 1:
        raise bad("n_tasks", "must be >= 1 or null (all eligible tasks)")
    if cfg.n_train_per_task < 1:
        raise bad("n_train_per_task", "must be >= 1")
    if cfg.n_eval_per_task < 1:
        raise bad("n_eval_per_task", "must be >= 1")
    if cfg.n_positive_examples < 0:
        raise bad("n_positive_examples", "must be >= 0")
    if not cfg.task_pool or any(split not in SPLITS for split in cfg.task_pool):
        raise bad("task_pool", f"expected a non-empty list of {list(SPLITS)}")
    if cfg.few_shot_per_task < 0:
        raise bad("few_shot_per_task", "must be >= 0 (0: no few-shot pool)")
    if (cfg.few_shot_per_task or cfg.few_shot_only) and cfg.protocol != "cross_task":
        raise bad(
            "few_shot_per_task", "the few-shot pool is the cross_task protocol's test tasks: set protocol=cross_task"
        )
    if cfg.few_shot_only and not cfg.few_shot_per_task:
        raise bad("few_shot_only", "needs few_shot_per_task >= 1")
    if cfg.protocol == "cross_task" and "test" in cfg.task_pool:
        raise bad("task_pool", "cross_task evaluates on the test tasks, so they cannot be trained on")
    if cfg.empty_targets not in ("drop", "error"):
        raise bad("empty_targets", "expected 'drop' or 'error'")
    for field_name, fields in (
        ("definition_template", {"definition": ""}),
        ("example_template", {"index": 1, "input": "", "output": ""}),
        ("instance_template", {"input": ""}),
    ):
        try:
            getattr(cfg, field_name).format(**fields)
        except (KeyError, IndexError, ValueError) as err:
            raise bad(field_name, f"not a format string over {sorted(fields)} ({err!r})") from None
