"""Checkpoints: the adapters in the skills format plus one `trainer_state.pt` dict (step, optimiser,
scheduler, RNG, best metric, W&B run id, config), written atomically as one folder.

Whatever the launch (one process, DDP, FSDP2), a checkpoint holds whole tensors in the layout of a
single-process run: under FSDP2 the adapters and the optimizer's moments are gathered from every process
when saving and cut into each process's shard when loading (`cpoly.distributed`), so a checkpoint written
under one launch resumes under any other."""

from __future__ import annotations

import pickle
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.distributed.tensor import DTensor

from cpoly.atomic import versioned_directory
from cpoly.distributed import sharded_like
from cpoly.skills.io import load_skill_tensors, saved_adapter_tensors, write_skills

STATE_NAME = "trainer_state.pt"


def rng_state() -> dict[str, Any]:
    """Every generator's state, as plain data and tensors (what `torch.load(weights_only=True)` reads)."""
    kind, keys, position, has_gauss, gauss = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, gauss),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    kind, keys, position, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), position, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(
    directory: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any = None,
    trainer_state: dict[str, Any] | None = None,
    write: bool = True,
    keep: int = 1,
) -> None:
    """Adapters (always) and, for `last/`, everything needed to continue the run exactly.

    A sharded model's (FSDP2) tensors are gathered: every process calls this, the one with `write` writes."""
    tensors = saved_adapter_tensors(model)
    with_optimizer = optimizer is not None and trainer_state is not None
    optimizer_state = gathered_optimizer_state(optimizer) if with_optimizer else None
    if not write:
        return
    # a new version of the folder, published at once, the `keep` newest kept: always a complete one on disk
    try:
        with versioned_directory(directory, keep=keep) as tmp:
            write_skills(model, tmp, tensors)
            if trainer_state is not None:
                state = dict(trainer_state, rng=rng_state())
                if optimizer_state is not None:
                    state["optimizer"] = optimizer_state
                if scheduler is not None:
                    state["scheduler"] = scheduler.state_dict()
                torch.save(state, tmp / STATE_NAME)
    except OSError as error:  # a full disk, a quota: the previous version is untouched
        previous = "the previous checkpoint there is intact" if directory.exists() else "no checkpoint was kept"
        raise OSError(
            error.errno, f"could not write checkpoint {directory} ({error.strerror or error}); {previous}"
        ) from error


def gathered_optimizer_state(optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """`optimizer.state_dict()` with sharded state (FSDP2's DTensor moments) gathered whole to the CPU."""
    state = optimizer.state_dict()
    state["state"] = {
        i: {k: v.full_tensor().cpu() if isinstance(v, DTensor) else v for k, v in s.items()}
        for i, s in sorted(state["state"].items())  # every process gathers in the same order
    }
    return state


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """`optimizer.load_state_dict(state)`, then each moment cut like its parameter where that is sharded."""
    optimizer.load_state_dict(state)
    for group in optimizer.param_groups:
        for p in group["params"]:
            if isinstance(p, DTensor):
                moments = optimizer.state[p]
                for k, v in moments.items():
                    if v.shape == p.shape:  # exp_avg, exp_avg_sq; not the scalar step
                        moments[k] = sharded_like(p, v)


def has_checkpoint(directory: Path) -> bool:
    return (directory / STATE_NAME).is_file()


class UnsafeCheckpointError(ValueError):
    """A trainer state holding more than tensors and plain data: refused, nothing in it is run."""


def read_trainer_state(directory: Path) -> dict[str, Any]:
    """The trainer state, read without running code: `weights_only=True` takes tensors and plain Python
    data only, so a tampered `trainer_state.pt` (a pickle that would call a function) is refused."""
    path = directory / STATE_NAME
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        detail = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UnsafeCheckpointError(
            f"{path}: refused to load: it holds more than tensors and plain data ({detail}); a cpoly checkpoint "
            "never needs code to load, so this file was not written by cpoly or was tampered with"
        ) from None


def restore_checkpoint(directory: Path, model: nn.Module, optimizer, scheduler) -> dict[str, Any]:
    """Load adapters, optimiser, scheduler and RNG from `directory`; returns the trainer state."""
    state = read_trainer_state(directory)
    load_skill_tensors(model, directory)
    load_optimizer_state(optimizer, state.pop("optimizer"))
    scheduler.load_state_dict(state.pop("scheduler"))
    set_rng_state(state.pop("rng"))
    return state
