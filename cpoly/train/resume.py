"""Deciding whether a run folder's checkpoint is continued, refused, or absent.

A checkpoint stores the resolved config and a hash of the keys that change what the run computes; a
run folder holding another config is never continued or overwritten: the error lists the differences.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from cpoly.config import ConfigError
from cpoly.train.checkpoint import has_checkpoint, read_trainer_state

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


def resume_decision(resume: str, out: Path, config: dict[str, Any]) -> dict[str, Any] | None:
    """The trainer state to continue from (`resume`: auto | never | must), or None to start fresh;
    refuses what would lose or mix work."""
    last = out / "last"
    if not has_checkpoint(last):
        if resume == "must":
            raise ConfigError(f"resume=must: no checkpoint in {last}")
        return None
    if resume == "never":
        raise ConfigError(
            f"resume=never but {last} holds a checkpoint: starting over would overwrite it. Use resume=auto "
            "to continue, another run_name or seed, or delete the folder"
        )
    state = read_trainer_state(last)
    if state.get("config_hash") != config_hash(config):
        diff = differences(semantic_config(state.get("config", {})), semantic_config(config))
        raise ConfigError(
            f"{last} holds a run of another config, so resume=auto cannot continue it (saved -> now: "
            f"{'; '.join(diff[:8])}). Change run_name (or seed) for a new run, or delete the folder"
        )
    return state
