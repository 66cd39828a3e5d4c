"""Checkpoints built once and cached under `<paths.cache_dir>/backbones/<entry>/`.

A builder fills a temporary folder next to the entry, which is renamed into place, so a reader sees
either nothing or a complete checkpoint (the provenance file, written last, marks an entry complete).
A file lock (`filelock`, an OS lock released when its process ends) stops concurrent processes (DDP
ranks, multirun jobs) from building the same entry twice: the second waits and then reads the first
one's result.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from filelock import FileLock

from cpoly.atomic import atomic_directory

PROVENANCE_FILE = "cpoly_provenance.json"


def cached_checkpoint(
    cache_dir: Path, entry_name: str, build: Callable[[Path], dict[str, Any] | None], provenance: dict[str, Any]
) -> Path:
    """Return `<cache_dir>/backbones/<entry_name>/`, calling `build(folder)` to fill it on first use.

    `entry_name` must change whenever what `build` writes would (put a hash of its inputs in it). What
    `build` returns is added to the provenance file (e.g. how long it took and how well it did).
    """
    root = Path(cache_dir).expanduser() / "backbones"
    target = root / entry_name
    if is_complete(target):
        return target
    root.mkdir(parents=True, exist_ok=True)
    with FileLock(root / f".{entry_name}.lock"):
        if is_complete(target):  # another process finished while we waited
            return target
        with atomic_directory(target) as checkpoint:
            record = dict(provenance)
            record.update(build(checkpoint) or {})
            (checkpoint / PROVENANCE_FILE).write_text(json.dumps(record, indent=2, sort_keys=True))
    return target


def read_provenance(entry: Path) -> dict[str, Any]:
    return json.loads((Path(entry) / PROVENANCE_FILE).read_text())


def is_complete(entry: Path) -> bool:
    return (Path(entry) / PROVENANCE_FILE).is_file()
