"""Small shared helpers of the data loaders: JSON lines, name lists, seeded sampling, file caches.

Every error raised here is a `DataError` whose message names the file, the line and, where there is one,
the field and the bad value, so a broken data file is fixed without a debugger.
"""

from __future__ import annotations

import functools
import gzip
import json
import random
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any, TypeVar

T = TypeVar("T")


class DataError(ValueError):
    """A data file, task list or data config that cannot be used as it is."""


def open_text(path: str | Path) -> IO[str]:
    """Open a text file for reading, decompressing it when its name ends in .gz."""
    path = Path(path)
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8")
    return open(path, encoding="utf-8")


def _binary(path: Path) -> IO[bytes]:
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def iter_jsonl(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (1-based line number, object) for each non-blank line of a JSON-lines file (plain or .gz)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    with _binary(path) as handle:
        for line_no, raw in enumerate(handle, start=1):
            try:  # line by line, so a bad byte is reported on its own line
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise DataError(
                    f"{path}:{line_no}: not UTF-8 text (byte 0x{raw[err.start]:02x} at column {err.start + 1}); "
                    "re-encode the file as UTF-8"
                ) from None
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(f"{path}:{line_no}: malformed JSON ({err.msg} at column {err.colno})") from None
            if not isinstance(obj, dict):
                raise DataError(f"{path}:{line_no}: expected a JSON object, got {type(obj).__name__}")
            yield line_no, obj


def read_jsonl(path: str | Path) -> list[tuple[int, dict[str, Any]]]:
    return list(iter_jsonl(path))


def find_jsonl(folder: Path, stem: str) -> Path | None:
    """`folder/stem.jsonl` or `folder/stem.jsonl.gz`, whichever exists (plain first)."""
    for suffix in (".jsonl", ".jsonl.gz"):
        candidate = folder / f"{stem}{suffix}"
        if candidate.is_file():
            return candidate
    return None


def read_name_list(path: str | Path, allow_empty: bool = False) -> list[str]:
    """Read a task list: one name per line; blank lines and `#` comments skipped; duplicates are errors."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"task list {path}: file not found")
    names: list[str] = []
    first_line: dict[str, int] = {}
    with open(path, encoding="utf-8") as handle:
        for line_no, line in enumerate(handle, start=1):
            name = line.split("#", 1)[0].strip()
            if not name:
                continue
            if name in first_line:
                raise DataError(f"{path}:{line_no}: task {name!r} is listed twice (first on line {first_line[name]})")
            first_line[name] = line_no
            names.append(name)
    if not names and not allow_empty:
        raise DataError(f"task list {path}: no task names in it")
    return names


def write_name_list(path: str | Path, names: Sequence[str]) -> Path:
    """Write names one per line, the format `read_name_list` (and `task_list=`) reads back."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{name}\n" for name in names), encoding="utf-8")
    return path


def seeded_rng(seed: int, *keys: str) -> random.Random:
    """A generator that depends only on the seed and the keys (e.g. a task name).

    A string seed is hashed with SHA-512 by `random.Random`, so the stream is the same on every machine and
    Python run (PYTHONHASHSEED plays no part), and sampling one task never depends on which other tasks
    were chosen.
    """
    return random.Random(":".join([str(seed), *keys]))


def sample_in_order(items: Sequence[T], k: int | None, rng: random.Random) -> list[T]:
    """`k` items drawn without replacement, returned in their original order (all of them when k is None)."""
    if k is None or k >= len(items):
        return list(items)
    chosen = sorted(rng.sample(range(len(items)), k))
    return [items[i] for i in chosen]


def file_key(path: Path) -> tuple[str, int, int]:
    """What a per-process parse cache is keyed on: the resolved path, its mtime and its size."""
    stat = path.stat()
    return str(path.resolve()), stat.st_mtime_ns, stat.st_size


def cached_per_file(parse: Callable[[Path], T]) -> Callable[[Path], T]:
    """Parse a file once per process, again when it changes. Callers must not mutate the result."""

    @functools.lru_cache(maxsize=32)
    def parse_key(key: tuple[str, int, int]) -> T:
        return parse(Path(key[0]))

    @functools.wraps(parse)
    def cached(path: Path) -> T:
        return parse_key(file_key(Path(path)))

    cached.cache_clear = parse_key.cache_clear  # type: ignore[attr-defined]
    return cached


def require(obj: dict[str, Any], field: str, types: type | tuple[type, ...], where: str) -> Any:
    """obj[field], checked to be of `types`; `where` is "file:line" for the message."""
    if field not in obj:
        raise DataError(f"{where}: missing field {field!r}")
    value = obj[field]
    # bool is an int subclass: True must not pass as an int field
    if not isinstance(value, types) or (isinstance(value, bool) and bool not in _as_tuple(types)):
        expected = " or ".join(t.__name__ for t in _as_tuple(types))
        raise DataError(f"{where}: field {field!r} should be {expected}, got {short_repr(value)}")
    return value


def _as_tuple(types: type | tuple[type, ...]) -> tuple[type, ...]:
    return types if isinstance(types, tuple) else (types,)


def short_repr(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def resolve_data_dir(data_dir: str | Path | None) -> Path | None:
    return None if data_dir in (None, "") else Path(data_dir).expanduser()
