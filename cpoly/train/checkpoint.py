"""Checkpoints: the adapters in the skills format plus one `trainer_state.pt` dict (step, optimiser,
scheduler, RNG, best metric, W&B run id, config), written atomically as one folder."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from cpoly.atomic import atomic_directory
from cpoly.skills.io import load_skill_tensors, write_skills

STATE_NAME = "trainer_state.pt"


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(
    directory: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any = None,
    trainer_state: dict[str, Any] | None = None,
) -> None:
    """Adapters (always) and, for `last/`, everything needed to continue the run exactly."""
    with atomic_directory(directory) as tmp:
        write_skills(model, tmp)
        if trainer_state is not None:
            state = dict(trainer_state, rng=rng_state())
            if optimizer is not None:
                state["optimizer"] = optimizer.state_dict()
            if scheduler is not None:
                state["scheduler"] = scheduler.state_dict()
            torch.save(state, tmp / STATE_NAME)


def has_checkpoint(directory: Path) -> bool:
    return (directory / STATE_NAME).is_file()


def read_trainer_state(directory: Path) -> dict[str, Any]:
    return torch.load(directory / STATE_NAME, map_location="cpu", weights_only=False)


def restore_checkpoint(directory: Path, model: nn.Module, optimizer, scheduler) -> dict[str, Any]:
    """Load adapters, optimiser, scheduler and RNG from `directory`; returns the trainer state."""
    state = read_trainer_state(directory)
    load_skill_tensors(model, directory)
    optimizer.load_state_dict(state.pop("optimizer"))
    scheduler.load_state_dict(state.pop("scheduler"))
    set_rng_state(state.pop("rng"))
    return state
