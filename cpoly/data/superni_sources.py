"""Where SuperNI tasks come from: three layouts read into one in-memory form (`NITask`).

1. The layout of `shared/data/superni` (detected by `superni_*.jsonl[.gz]` files): one JSON line per task
   with `task`, `definition`, `positive_examples`, `instances`, `*_language` and `default_split`, plus the
   official split lists in `splits/default/{train,test,excluded}_tasks.txt`.
2. The upstream allenai/natural-instructions checkout (detected by a `tasks/` folder): `tasks/<task>.json`
   with `Definition`, `Positive Examples`, `Instances`, `Input_language`, ... and the same split lists.
   Task files are read lazily, one at a time, so sampling 100 tasks does not parse all 1,600 files.
3. The Hugging Face Hub dataset `Muennighoff/natural-instructions` (one row per instance with `task_name`,
   `id`, `definition`, `inputs`, `targets`; splits `train` = default train tasks, `test` = default test
   tasks). It has no positive examples and no language fields (it holds the English track only).

Each folder is looked for at `<data_dir>/superni`, `<data_dir>/natural-instructions`, then `<data_dir>`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from cpoly.data.hub import load_hub_rows, require_online
from cpoly.data.io import DataError, cached_per_file, iter_jsonl, read_name_list, require, short_repr

SPLITS = ("train", "test", "excluded")
HUB_DATASET = "Muennighoff/natural-instructions"


class NIInstance(NamedTuple):  # a NamedTuple: ~200k of them are built per parse, tuples build fast
    id: str
    input: str
    outputs: tuple[str, ...]


@dataclass(frozen=True)
class NITask:
    name: str
    definition: str
    positive_examples: tuple[tuple[str, str], ...]  # (input, output)
    instances: tuple[NIInstance, ...]
    english: bool | None  # None when the source has no language fields (the Hub copy: English track only)
    origin: str  # file (and line) it was read from, for error messages


@dataclass
class TaskStore:
    """The tasks of one source: names present, the official split lists, and a getter (lazy for upstream)."""

    kind: str  # shared | upstream | hub
    location: str
    available: frozenset[str]
    split_lists: dict[str, list[str]]
    loader: Callable[[str], NITask]

    def get(self, name: str) -> NITask:
        if name not in self.available:
            raise DataError(f"SuperNI task {name!r} is not in {self.location}")
        return self.loader(name)


def open_task_store(data_dir: Path | None, hub_dataset: str = HUB_DATASET) -> TaskStore:
    """The first SuperNI source found under data_dir, else the Hub (when online)."""
    bases = [] if data_dir is None else [data_dir / "superni", data_dir / "natural-instructions", data_dir]
    for base in bases:
        if base.is_dir() and _shared_files(base):
            return _shared_store(base)
        if (base / "tasks").is_dir():
            return _upstream_store(base)
    looked_for = (
        "looked for " + ", ".join(f"{b}/superni_*.jsonl.gz, {b}/tasks/" for b in bases)
        if bases
        else "no data_dir given"
    )
    require_online("SuperNI", looked_for, hub_dataset)
    return hub_store(hub_dataset)


# ----------------------------------------------------------------------------------------- shared layout


def _shared_files(base: Path) -> list[Path]:
    return sorted(p for p in base.glob("superni_*.jsonl*") if p.name.endswith((".jsonl", ".jsonl.gz")))


def _shared_store(base: Path) -> TaskStore:
    tasks: dict[str, NITask] = {}
    default_split: dict[str, str] = {}
    for path in _shared_files(base):
        for task, split in _parse_shared_file(path):
            if task.name in tasks:
                raise DataError(f"{task.origin}: task {task.name!r} also appears in {tasks[task.name].origin}")
            tasks[task.name] = task
            default_split[task.name] = split
    split_dir = base / "splits" / "default"
    if split_dir.is_dir():
        split_lists = _read_split_lists(split_dir)
    else:  # the records carry their split ("other" = the excluded list)
        split_lists = {s: sorted(n for n, d in default_split.items() if _split_name(d) == s) for s in SPLITS}
    return TaskStore("shared", str(base), frozenset(tasks), split_lists, tasks.__getitem__)


def _split_name(value: str) -> str:
    return "excluded" if value == "other" else value


@cached_per_file
def _parse_shared_file(path: Path) -> tuple[tuple[NITask, str], ...]:
    parsed = []
    for line_no, record in iter_jsonl(path):
        where = f"{path}:{line_no}"
        name = require(record, "task", str, where)
        task = NITask(
            name=name,
            definition=_definition(require(record, "definition", (list, str), where), where),
            positive_examples=_positive_examples(record.get("positive_examples", []), where),
            instances=_instances(require(record, "instances", list, where), name, where),
            english=_is_english(record, ("input_language", "output_language", "instruction_language")),
            origin=where,
        )
        parsed.append((task, str(record.get("default_split", ""))))
    return tuple(parsed)


# --------------------------------------------------------------------------------------- upstream layout


def _upstream_store(base: Path) -> TaskStore:
    split_dir = base / "splits" / "default"
    if not split_dir.is_dir():
        raise DataError(f"{base}: upstream SuperNI layout without {split_dir} (the default split lists)")
    files = {p.stem: p for p in (base / "tasks").glob("*.json")}
    return TaskStore(
        "upstream",
        str(base),
        frozenset(files),
        _read_split_lists(split_dir),
        lambda n: _parse_task_file(files[n]),
    )


@cached_per_file
def _parse_task_file(path: Path) -> NITask:
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise DataError(f"{path}:{err.lineno}: malformed JSON ({err.msg} at column {err.colno})") from None
    where = str(path)
    return NITask(
        name=path.stem,
        definition=_definition(require(record, "Definition", (list, str), where), where),
        positive_examples=_positive_examples(record.get("Positive Examples", []), where),
        instances=_instances(require(record, "Instances", list, where), path.stem, where),
        english=_is_english(record, ("Input_language", "Output_language", "Instruction_language")),
        origin=where,
    )


def _read_split_lists(split_dir: Path) -> dict[str, list[str]]:
    lists = {}
    for split in SPLITS:
        path = split_dir / f"{split}_tasks.txt"
        lists[split] = read_name_list(path, allow_empty=True) if path.is_file() else []
    return lists


# -------------------------------------------------------------------------------------------------- hub


def hub_store(dataset_id: str = HUB_DATASET) -> TaskStore:
    tasks: dict[str, NITask] = {}
    split_lists: dict[str, list[str]] = {s: [] for s in SPLITS}
    for split in ("train", "test"):
        converted = tasks_from_hub_rows(load_hub_rows(dataset_id, split), origin=f"{dataset_id}[{split}]")
        tasks.update(converted)
        split_lists[split] = sorted(converted)
    return TaskStore("hub", dataset_id, frozenset(tasks), split_lists, tasks.__getitem__)


def tasks_from_hub_rows(rows: Iterable[dict[str, Any]], origin: str = "hub") -> dict[str, NITask]:
    """Rows of `Muennighoff/natural-instructions` (`task_name`, `id`, `definition`, `inputs`, `targets`).

    Rows sharing a task and an instance id are one instance with several references, so both a
    one-row-per-reference and a one-row-per-instance export give the same tasks.
    """
    definitions: dict[str, str] = {}
    instances: dict[str, dict[str, tuple[str, list[str]]]] = {}
    for row_no, row in enumerate(rows):
        where = f"{origin} row {row_no}"
        name = require(row, "task_name", str, where)
        definitions.setdefault(name, _definition(require(row, "definition", (str, list), where), where))
        instance_id = str(require(row, "id", (str, int), where))
        text = require(row, "inputs", str, where)
        targets = require(row, "targets", (str, list), where)
        refs = instances.setdefault(name, {}).setdefault(instance_id, (text, []))[1]
        refs.extend(t for t in ([targets] if isinstance(targets, str) else targets) if t not in refs)
    return {
        name: NITask(
            name=name,
            definition=definitions[name],
            positive_examples=(),
            instances=tuple(NIInstance(i, text, tuple(refs)) for i, (text, refs) in by_id.items()),
            english=None,
            origin=origin,
        )
        for name, by_id in instances.items()
    }


# ------------------------------------------------------------------------------------------ field checks


def _definition(value: list | str, where: str) -> str:
    # Current task files hold a list with one string; older ones a plain string.
    text = value[0] if isinstance(value, list) and value else value
    if not isinstance(text, str) or not text.strip():
        raise DataError(f"{where}: field 'definition' is empty or not text: {short_repr(value)}")
    return text.strip()


def _positive_examples(value: Any, where: str) -> tuple[tuple[str, str], ...]:
    if not isinstance(value, list):
        raise DataError(f"{where}: positive examples should be a list, got {short_repr(value)}")
    examples = []
    for i, example in enumerate(value):
        if not isinstance(example, dict) or not isinstance(example.get("input"), str):
            raise DataError(f"{where}: positive example {i} has no text 'input': {short_repr(example)}")
        output = example.get("output")
        output = output[0] if isinstance(output, list) and output else output
        if not isinstance(output, str):
            raise DataError(f"{where}: positive example {i} has no text 'output': {short_repr(example)}")
        examples.append((example["input"].strip(), output.strip()))
    return tuple(examples)


def _instances(value: list, task: str, where: str) -> tuple[NIInstance, ...]:
    instances = []
    for i, instance in enumerate(value):
        text = instance.get("input") if isinstance(instance, dict) else None
        outputs = instance.get("output") if isinstance(instance, dict) else None
        if isinstance(outputs, str):
            outputs = [outputs]
        if not isinstance(text, str) or not isinstance(outputs, list) or not all(isinstance(o, str) for o in outputs):
            raise DataError(
                f"{where}: instance {i} of task {task!r} needs a text 'input' and a list of text 'output', "
                f"got {short_repr(instance)}"
            )
        instance_id = str(instance.get("id") or f"{task}-{i}")
        instances.append(NIInstance(instance_id, text, tuple(outputs)))
    return tuple(instances)


def _is_english(record: dict[str, Any], fields: tuple[str, ...]) -> bool:
    present = [record[f] for f in fields if f in record]
    return bool(present) and all(value == ["English"] for value in present)
