"""Deciding whether a run folder's checkpoint is continued, refused, or absent.

A checkpoint stores the resolved config and a hash of the keys that change what the run computes; a
run folder holding another config is never continued or overwritten: the error lists the differences.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cpoly.atomic import versions
from cpoly.config import ConfigError
from cpoly.skills.io import read_skill_tensors
from cpoly.train.checkpoint import has_checkpoint, read_trainer_state

log = logging.getLogger(__name__)

# Keys that do not change what a run computes: a checkpoint written under other values still resumes.
NON_SEMANTIC_KEYS = (
    "resume",
    "paths",
    "logger",
    "tags",
    "task_name",
    "trainer.progress_bar",
    "trainer.num_workers",  # who builds the batches, not which
    "trainer.prefetch_factor",
    "trainer.save_every",  # when checkpoints are written, not what is trained
    "trainer.save_every_minutes",
    "trainer.keep_checkpoints",
)


def semantic_config(config: dict[str, Any]) -> dict[str, Any]:
    out = json.loads(json.dumps(config, default=str))
    for key in NON_SEMANTIC_KEYS:
        *parents, leaf = key.split(".")
        node = out
        for p in parents:
            node = node.get(p, {})
        node.pop(leaf, None)
    return out


def config_hash(config: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(semantic_config(config), sort_keys=True).encode()).hexdigest()[:16]


def differences(a: Any, b: Any, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two nested dicts, as 'key: old -> new'."""
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in sorted(set(a) | set(b)) for d in differences(a.get(k), b.get(k), f"{prefix}{k}.")]
    return [] if a == b else [f"{prefix.rstrip('.')}: {a!r} -> {b!r}"]


@dataclass(frozen=True)
class ResumePoint:
    directory: Path  # the checkpoint folder to restore (`last`, or an older version of it)
    state: dict[str, Any]  # its trainer state


def checkpoint_candidates(out: Path) -> list[Path]:
    """`last` and the older versions kept beside it (`trainer.keep_checkpoints`), newest first."""
    last = out / "last"
    found = [last] if has_checkpoint(last) else []
    seen = {last.resolve()} if found else set()
    for version in reversed(versions(last)):
        if version.resolve() not in seen and has_checkpoint(version):
            found.append(version)
            seen.add(version.resolve())
    return found


def newest_loadable(candidates: list[Path]) -> ResumePoint | None:
    """The newest checkpoint whose trainer state and adapters read back; each one skipped (truncated,
    corrupt) gets a warning that names it."""
    for directory in candidates:
        try:
            state = read_trainer_state(directory)
            read_skill_tensors(directory)
        except Exception as error:  # noqa: BLE001 - any unreadable checkpoint is skipped, named
            log.warning("skipping checkpoint %s: it does not load (%s: %s)", directory, type(error).__name__, error)
            continue
        return ResumePoint(directory, state)
    return None


def resume_decision(resume: str, out: Path, config: dict[str, Any]) -> ResumePoint | None:
    """The checkpoint to continue from (`resume`: auto | never | must), or None to start fresh; refuses
    what would lose or mix work."""
    last = out / "last"
    candidates = checkpoint_candidates(out)
    if not candidates:
        if resume == "must":
            raise ConfigError(f"resume=must: no checkpoint in {last}")
        return None
    if resume == "never":
        raise ConfigError(
            f"resume=never but {last} holds a checkpoint: starting over would overwrite it. Use resume=auto "
            "to continue, another run_name or seed, or delete the folder"
        )
    point = newest_loadable(candidates)
    if point is None:
        if resume == "must":
            raise ConfigError(f"resume=must: no checkpoint in {out} loads ({', '.join(map(str, candidates))})")
        log.warning("no checkpoint in %s loads: starting the run over", out)
        return None
    state = point.state
    if state.get("config_hash") != config_hash(config):
        diff = differences(semantic_config(state.get("config", {})), semantic_config(config))
        raise ConfigError(
            f"{point.directory} holds a run of another config, so resume=auto cannot continue it (saved -> now: "
            f"{'; '.join(diff[:8])}). Change run_name (or seed) for a new run, or delete the folder"
        )
    return point
