"""Always-on local records of a run: `metrics.jsonl` (every logged step) and `results.json` (the outcome).

They are what `python -m cpoly.report` reads, so results never depend on the W&B API."""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cpoly.atomic import atomic_write_json, atomic_write_text

log = logging.getLogger(__name__)


def plain_value(value: Any) -> Any:
    """A JSON-friendly copy of a metric value: tensors and numpy scalars become Python numbers."""
    if hasattr(value, "item") and callable(value.item):
        try:
            return value.item()
        except (ValueError, RuntimeError):  # a tensor with more than one element
            return value.tolist()
    return value


def plain_metrics(metrics: Mapping[str, Any]) -> dict[str, Any]:
    return {str(k): plain_value(v) for k, v in metrics.items()}


def _json_number(value: Any) -> Any:
    # Strict JSON has no NaN/inf; a diverged loss is kept as null rather than breaking other readers.
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class MetricsLog:
    """Appends one JSON object per logged step to a `metrics.jsonl` file (`path` is the file).

    Each line is `{"step": ..., "time": ..., <metrics>}`, written and flushed at once, so a crash loses
    at most the line being written. The file is opened per call: it is written every few steps only,
    and nothing stays open across `truncate_after`."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def log(self, metrics: Mapping[str, Any], step: int) -> None:
        record = {"step": int(step), "time": round(time.time(), 3)}
        record.update({k: _json_number(v) for k, v in plain_metrics(metrics).items()})
        line = json.dumps(record, default=str) + "\n"
        with self.path.open("a", encoding="utf-8") as f:
            f.write(line)
            f.flush()

    def truncate_after(self, step: int) -> int:
        """Drop the lines logged after `step` (a resumed run restarts from its checkpoint's step, so its
        file ends up equal to an uninterrupted run's). Also drops a line torn by a crash. The file is
        rewritten atomically; returns the number of lines dropped."""
        if not self.path.exists():
            return 0
        lines = [line for line in self.path.read_text(encoding="utf-8").splitlines() if line.strip()]
        kept = [line for line in lines if (s := _step_of(line)) is not None and s <= step]
        if len(kept) < len(lines):
            atomic_write_text(self.path, "".join(line + "\n" for line in kept))
        return len(lines) - len(kept)

    def read(self) -> list[dict[str, Any]]:
        return read_metrics(self.path)


def _step_of(line: str) -> int | None:
    try:
        return int(json.loads(line)["step"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError):
        return None


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The records of a `metrics.jsonl` file in order; a line that does not parse (the last one, torn
    by a crash) is skipped with a warning. A missing file reads as no records."""
    path = Path(path)
    if not path.exists():
        return []
    records = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            log.warning("%s:%d is not valid JSON (a torn write?); skipped", path, number)
    return records


def write_results(path: str | Path, results: Mapping[str, Any]) -> Path:
    """Write `results.json` atomically: a reader or a crash sees the old file or the new one."""
    path = Path(path)
    atomic_write_json(path, _finite(dict(results)))
    return path


def read_results(path: str | Path) -> dict[str, Any]:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def _finite(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    return _json_number(plain_value(obj))
