"""SuperGLUE (BoolQ, CB, COPA, MultiRC, RTE, WiC, WSC; ReCoRD when present) as a multi-task benchmark.

Sources: `<data_dir>/superglue/<Task>/{train,val}.jsonl[.gz]` (the official v2 release, as in
shared/data/superglue), else the Hub dataset `aps/super_glue` when online. Scored on the validation split
(test labels are hidden). Prompts and label words: see `cpoly.data.superglue_tasks`.

- `tasks`: null means the seven tasks plus ReCoRD when its train and val files exist (the shared copy has
  only schema samples, so ReCoRD is skipped with a note in `info["skipped"]`); a task named explicitly whose
  files are missing is an error.
- `n_train_per_task` / `n_eval_per_task`: caps drawn with `data_seed` (kept in file order); null = all. For
  MultiRC they count questions, since each question expands into one Example per answer option and
  exact match needs all of them.
- A task without a train file (BoolQ in the shared copy) is an error naming the file looked for, unless
  `train_from_validation=true`: its validation set is then split with `data_seed` into disjoint train
  (`validation_train_fraction`) and eval parts, recorded in `info["train_from_validation"]`.
- Metric `superglue`, main metric `score`: the official per-task score (accuracy; CB mean of accuracy and
  macro-F1; MultiRC mean of F1a and EM; ReCoRD mean of F1 and EM).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cpoly.data.example import BenchmarkData, Example
from cpoly.data.hub import load_hub_rows, require_online
from cpoly.data.io import (
    DataError,
    file_key,
    find_jsonl,
    read_jsonl,
    resolve_data_dir,
    sample_in_order,
    seeded_rng,
)
from cpoly.data.superglue_tasks import TASKS, SuperGLUETask, Unit, records_from_hub_rows

HUB_DATASET = "aps/super_glue"
CORE_TASKS = ("boolq", "cb", "copa", "multirc", "rte", "wic", "wsc")
OPTIONAL_TASKS = ("record",)


@dataclass
class SuperGLUEConfig:
    name: str = "superglue"
    data_seed: int = 42  # seed of the caps and of train_from_validation; separate from the training seed
    tasks: list[str] | None = None  # null: the seven tasks, plus record when its files exist
    n_train_per_task: int | None = None  # null: all
    n_eval_per_task: int | None = None  # the test split; null: the whole validation split (official)
    # The dev split (periodic evaluation, best/, sweeps): held out of each task's training examples (after the
    # n_train_per_task cap; MultiRC: questions), since the validation split is the test split
    n_dev_per_task: int = 50
    train_from_validation: bool = False
    validation_train_fraction: float = 0.5
    hub_dataset: str = HUB_DATASET  # used only without a local folder and with the Hub online


def load_superglue(cfg: SuperGLUEConfig, data_dir: Path | str | None) -> BenchmarkData:
    _check_config(cfg)
    root = _local_root(resolve_data_dir(data_dir))
    if root is None:
        looked = "no data_dir given" if data_dir is None else f"looked for {Path(data_dir) / 'superglue'}/<Task>/"
        require_online("SuperGLUE", looked, cfg.hub_dataset)
    explicit = cfg.tasks is not None
    names = list(cfg.tasks) if explicit else [*CORE_TASKS, *OPTIONAL_TASKS]
    train: list[Example] = []
    evaluation: list[Example] = []
    task_names: list[str] = []
    info: dict[str, Any] = {"skipped": {}, "train_from_validation": {}, "counts": {}}
    for name in names:
        units = _task_units(TASKS[name], root, explicit, cfg, info)
        if units is None:
            continue
        train_units, eval_units = units
        train_units = sample_in_order(train_units, cfg.n_train_per_task, seeded_rng(cfg.data_seed, name, "train"))
        eval_units = sample_in_order(eval_units, cfg.n_eval_per_task, seeded_rng(cfg.data_seed, name, "eval"))
        task_train = [ex for unit in train_units for ex in unit]
        task_eval = [ex for unit in eval_units for ex in unit]
        train += task_train
        evaluation += task_eval
        task_names.append(name)
        info["counts"][name] = {"train": len(task_train), "eval": len(task_eval)}
    if not task_names:
        raise DataError(f"SuperGLUE: no task left to load from {root} (tasks={names})")
    info.update(
        source="local" if root is not None else "hub",
        source_location=str(root) if root is not None else cfg.hub_dataset,
        data_seed=cfg.data_seed,
        tasks=task_names,
        eval_split="validation",
        n_train_per_task=cfg.n_train_per_task,
        n_eval_per_task=cfg.n_eval_per_task,
        caps_count="examples (MultiRC: questions)",
        label_words={n: list(TASKS[n].label_words) if TASKS[n].label_words else None for n in task_names},
    )
    return BenchmarkData(
        name=cfg.name,
        train=train,
        test=evaluation,
        task_names=task_names,
        metric="superglue",
        main_metric="score",
        info=info,
    )


def _task_units(
    task: SuperGLUETask, root: Path | None, explicit: bool, cfg: SuperGLUEConfig, info: dict[str, Any]
) -> tuple[list[Unit], list[Unit]] | None:
    """(train units, eval units) of one task before the caps; None (noted in info) to skip it."""
    if root is None:
        return _hub_units(task, cfg.hub_dataset)
    files = _local_files(root, task, explicit, cfg)
    if files is None:
        info["skipped"][task.name] = f"{root / task.folder}/train.jsonl[.gz] and val.jsonl[.gz] are not both there"
        return None
    train_path, val_path = files
    eval_units = _file_units(task, val_path, "val")
    if train_path is not None:
        return _file_units(task, train_path, "train"), eval_units
    train_units, eval_units = _split_validation(task, eval_units, cfg)
    info["train_from_validation"][task.name] = {
        "fraction": cfg.validation_train_fraction,
        "train_units": len(train_units),
        "eval_units": len(eval_units),
        "file": str(val_path),
    }
    return train_units, eval_units


def _local_root(data_dir: Path | None) -> Path | None:
    if data_dir is None:
        return None
    for base in (data_dir / "superglue", data_dir):
        if base.is_dir() and any((base / task.folder).is_dir() for task in TASKS.values()):
            return base
    return None


def _local_files(
    root: Path, task: SuperGLUETask, explicit: bool, cfg: SuperGLUEConfig
) -> tuple[Path | None, Path] | None:
    """(train file or None when it is to come from validation, val file); None to skip an optional task."""
    folder = root / task.folder
    train_path, val_path = find_jsonl(folder, "train"), find_jsonl(folder, "val")
    if task.name in OPTIONAL_TASKS and (train_path is None or val_path is None):
        if not explicit:
            return None
        raise DataError(
            f"SuperGLUE task {task.name!r} is listed in benchmark.tasks but {folder}/train.jsonl[.gz] and "
            f"{folder}/val.jsonl[.gz] are not both there (the shared offline copy has only schema samples)"
        )
    if val_path is None:
        raise DataError(f"SuperGLUE task {task.name!r}: no validation file {folder}/val.jsonl[.gz]")
    if train_path is None and not cfg.train_from_validation:
        raise DataError(
            f"SuperGLUE task {task.name!r}: no training file {folder}/train.jsonl[.gz]; set "
            f"benchmark.train_from_validation=true to split its validation set into disjoint train and eval "
            f"parts, or leave {task.name!r} out of benchmark.tasks"
        )
    return train_path, val_path


def _file_units(task: SuperGLUETask, path: Path, split: str) -> list[Unit]:
    return list(_built_units(file_key(path), task.name, split))


@functools.lru_cache(maxsize=32)
def _built_units(key: tuple[str, int, int], task: str, split: str) -> tuple[Unit, ...]:
    # Built once per process and file version (MultiRC alone is 27k Examples); Examples are immutable.
    path = Path(key[0])
    return tuple(
        unit for line_no, record in read_jsonl(path) for unit in TASKS[task].build(record, split, f"{path}:{line_no}")
    )


def _hub_units(task: SuperGLUETask, dataset_id: str) -> tuple[list[Unit], list[Unit]]:
    units = {}
    for split, tag in (("train", "train"), ("validation", "val")):
        records = records_from_hub_rows(task.name, load_hub_rows(dataset_id, split, task.hub_config))
        where = f"{dataset_id}[{task.hub_config}/{split}]"
        units[tag] = [unit for i, record in enumerate(records) for unit in task.build(record, tag, f"{where} row {i}")]
    return units["train"], units["val"]


def _split_validation(task: SuperGLUETask, units: list[Unit], cfg: SuperGLUEConfig) -> tuple[list[Unit], list[Unit]]:
    order = list(range(len(units)))
    seeded_rng(cfg.data_seed, task.name, "train_from_validation").shuffle(order)
    n_train = round(cfg.validation_train_fraction * len(units))
    train_ids = set(order[:n_train])
    return (
        [u for i, u in enumerate(units) if i in train_ids],
        [u for i, u in enumerate(units) if i not in train_ids],
    )


def _check_config(cfg: SuperGLUEConfig) -> None:
    if cfg.tasks is not None:
        unknown = [t for t in cfg.tasks if t not in TASKS]
        if unknown or not cfg.tasks or len(set(cfg.tasks)) != len(cfg.tasks):
            raise DataError(
                f"benchmark.tasks={list(cfg.tasks)!r}: expected distinct names among {sorted(TASKS)}"
                + (f" (unknown: {unknown})" if unknown else "")
            )
    for field_name in ("n_train_per_task", "n_eval_per_task"):
        value = getattr(cfg, field_name)
        if value is not None and value < 1:
            raise DataError(f"benchmark.{field_name}={value!r}: must be >= 1 or null (all)")
    if not 0.0 < cfg.validation_train_fraction < 1.0:
        raise DataError(f"benchmark.validation_train_fraction={cfg.validation_train_fraction!r}: must be in (0, 1)")
