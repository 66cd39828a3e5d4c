"""Bring-your-own multi-task data: JSON lines, one Example per line.

Each line (plain `.jsonl` or `.jsonl.gz`) is an object with
- `task` (non-empty string), `source` (string), `target` (non-empty string, or a non-empty list of them:
  acceptable references, the first is the training target);
- optional `choices` (list of >= 2 distinct label words; the target must be one of them), `id` (unique;
  default `<file stem>-<line>`), `group`, `prefix`. Other keys are ignored.

Either `train_file` + `eval_file`, or one `file` split per task with `data_seed`: `eval_fraction` of each
task's lines (rounded, at least 1 and at most all but 1 when the task has >= 2 lines) go to eval (the test
split). The dev split (what picks `best/`) is `dev_file` when given, else `n_dev_per_task` lines of each
task held out of the training lines (`cpoly.data.splits`).
Relative paths are looked up under `data_dir` first, then the working directory.

Routing tasks (`task_names`): `tasks` when given (others are dropped), else the sorted training tasks. Eval
tasks absent from training are unknown tasks (`unknown_task: uniform`), listed in `info`.

Metric (`metric`): `auto` picks `classification` (accuracy, macro-F1; main `accuracy`) when every line has
`choices`, else `superni` (ROUGE-L and exact match, max over references; main `rougeL`). `superni`,
`classification`, `synthetic` (exact match, character similarity) and `superglue` can be named directly;
`main_metric` overrides the main key.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cpoly.data.example import BenchmarkData, Example
from cpoly.data.io import DataError, iter_jsonl, resolve_data_dir, seeded_rng, short_repr

DEFAULT_MAIN_METRIC = {
    "superni": "rougeL",
    "classification": "accuracy",
    "synthetic": "exact_match",
    "superglue": "score",
}


@dataclass
class JsonlConfig:
    name: str = "jsonl"
    data_seed: int = 42  # seed of the per-task split of `file`; separate from the training seed
    train_file: str | None = None
    eval_file: str | None = None
    file: str | None = None  # instead of train_file + eval_file: one file split per task
    eval_fraction: float = 0.1
    # The dev split (periodic evaluation, best/, sweeps): a file of its own, else n_dev_per_task lines (groups)
    # of each task held out of the training lines with data_seed
    dev_file: str | None = None
    n_dev_per_task: int = 10
    tasks: list[str] | None = None  # null: every training task, sorted
    metric: str = "auto"  # auto | superni | classification | synthetic | superglue
    main_metric: str | None = None  # null: the metric's main key


def load_jsonl(cfg: JsonlConfig, data_dir: Path | str | None) -> BenchmarkData:
    _check_config(cfg)
    data_dir = resolve_data_dir(data_dir)
    ids: dict[str, str] = {}
    if cfg.file:
        path = _resolve(cfg.file, data_dir, "file")
        train, evaluation = _split_per_task(_read_examples(path, ids), cfg)
        files: dict[str, Any] = {
            "file": str(path),
            "eval_fraction": cfg.eval_fraction,
            "data_seed": cfg.data_seed,
        }
    else:
        train_path = _resolve(cfg.train_file, data_dir, "train_file")
        eval_path = _resolve(cfg.eval_file, data_dir, "eval_file")
        train, evaluation = _read_examples(train_path, ids), _read_examples(eval_path, ids)
        files = {"train_file": str(train_path), "eval_file": str(eval_path)}
    dev = None  # None: cpoly.data.load_benchmark holds n_dev_per_task lines of each task out of train
    if cfg.dev_file:
        dev_path = _resolve(cfg.dev_file, data_dir, "dev_file")
        dev = _read_examples(dev_path, ids)
        files["dev_file"] = str(dev_path)
    train_tasks = sorted({ex.task for ex in train})
    if cfg.tasks is not None:
        missing = [t for t in cfg.tasks if t not in train_tasks]
        if missing:
            raise DataError(f"benchmark.tasks: {missing} have no training lines (tasks present: {train_tasks})")
        task_names = list(cfg.tasks)
        train = [ex for ex in train if ex.task in task_names]
        evaluation = [ex for ex in evaluation if ex.task in task_names]
        dev = None if dev is None else [ex for ex in dev if ex.task in task_names]
    else:
        task_names = train_tasks
    if not train:
        raise DataError(f"no training examples in {files}")
    metric = cfg.metric
    if metric == "auto":
        metric = "classification" if all(ex.choices for ex in train + evaluation + (dev or [])) else "superni"
    info = {
        **files,
        "tasks": task_names,
        "metric": metric,
        "n_train": len(train),
        "n_eval": len(evaluation),
        "unknown_eval_tasks": sorted({ex.task for ex in evaluation} - set(task_names)),
    }
    return BenchmarkData(
        name=cfg.name,
        train=train,
        test=evaluation,
        dev=dev,
        task_names=task_names,
        metric=metric,
        main_metric=cfg.main_metric or DEFAULT_MAIN_METRIC[metric],
        info=info,
    )


def _resolve(name: str | None, data_dir: Path | None, field_name: str) -> Path:
    path = Path(str(name)).expanduser()
    candidates = [path] if path.is_absolute() else [*([data_dir / path] if data_dir else []), Path.cwd() / path]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise DataError(f"benchmark.{field_name}={name!r}: file not found (looked at {', '.join(map(str, candidates))})")


def _read_examples(path: Path, ids: dict[str, str]) -> list[Example]:
    examples = []
    for line_no, obj in iter_jsonl(path):
        example = example_from_record(obj, f"{path}:{line_no}", default_id=f"{path.stem}-{line_no}")
        if example.id in ids:
            raise DataError(f"{path}:{line_no}: id {example.id!r} is also used at {ids[example.id]}")
        ids[example.id] = f"{path}:{line_no}"
        examples.append(example)
    return examples


def example_from_record(obj: dict[str, Any], where: str, default_id: str = "") -> Example:
    """One JSON object in the bring-your-own schema as an Example; errors name `where` and the field."""

    def fail(field_name: str, why: str) -> DataError:
        return DataError(f"{where}: field {field_name!r} {why}, got {short_repr(obj.get(field_name))}")

    task = obj.get("task")
    if not isinstance(task, str) or not task.strip():
        raise fail("task", "should be a non-empty string")
    source = obj.get("source")
    if not isinstance(source, str):
        raise fail("source", "should be a string")
    target = obj.get("target")
    refs = [target] if isinstance(target, str) else target
    if not isinstance(refs, list) or not refs or not all(isinstance(r, str) for r in refs):
        raise fail("target", "should be a string or a non-empty list of strings")
    if any(not r.strip() for r in refs):
        raise fail("target", "is empty (an empty reference would silently score zero)")
    choices = obj.get("choices")
    if choices is not None:
        if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) for c in choices):
            raise fail("choices", "should be a list of at least 2 strings")
        if len(set(choices)) != len(choices):
            raise fail("choices", "has duplicates")
        if refs[0] not in choices:
            raise fail("target", f"should be one of the choices {choices}")
    example_id = obj.get("id", default_id)
    if not isinstance(example_id, (str, int)) or isinstance(example_id, bool) or str(example_id) == "":
        raise fail("id", "should be a non-empty string or an integer")
    for optional in ("group", "prefix"):
        if obj.get(optional) is not None and not isinstance(obj[optional], str):
            raise fail(optional, "should be a string")
    return Example(
        task=task.strip(),
        source=source,
        target=target if isinstance(target, str) else list(target),
        choices=list(choices) if choices is not None else None,
        id=str(example_id),
        group=obj.get("group"),
        prefix=obj.get("prefix") or "",
    )


def _split_per_task(examples: list[Example], cfg: JsonlConfig) -> tuple[list[Example], list[Example]]:
    by_task: dict[str, list[Example]] = {}
    for example in examples:
        by_task.setdefault(example.task, []).append(example)
    train, evaluation = [], []
    for task, items in by_task.items():
        n = len(items)
        n_eval = min(max(round(cfg.eval_fraction * n), 1), n - 1) if n >= 2 else 0
        eval_ids = set(seeded_rng(cfg.data_seed, task, "split").sample(range(n), n_eval))
        train += [ex for i, ex in enumerate(items) if i not in eval_ids]
        evaluation += [ex for i, ex in enumerate(items) if i in eval_ids]
    return train, evaluation


def _check_config(cfg: JsonlConfig) -> None:
    if cfg.file and (cfg.train_file or cfg.eval_file):
        raise DataError("benchmark: give either `file` or `train_file` + `eval_file`, not both")
    if not cfg.file and not (cfg.train_file and cfg.eval_file):
        raise DataError("benchmark: give `file` (split per task) or both `train_file` and `eval_file`")
    if not 0.0 < cfg.eval_fraction < 1.0:
        raise DataError(f"benchmark.eval_fraction={cfg.eval_fraction!r}: must be in (0, 1)")
    if cfg.metric != "auto" and cfg.metric not in DEFAULT_MAIN_METRIC:
        raise DataError(f"benchmark.metric={cfg.metric!r}: expected 'auto' or one of {sorted(DEFAULT_MAIN_METRIC)}")
