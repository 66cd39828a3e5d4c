"""How much each task relies on its exclusive skills, read off the trained adapters.

C-Poly mixes a task's shared skills (through the allocation) and its exclusive skills (through W_B)
into one LoRA per layer. The reliance of task t on its exclusive skills is how much of its update
they account for: ||dW_t - dW_t^shared|| / ||dW_t||, where dW_t^shared is the update with every
exclusive skill removed, averaged over the adapted layers. 1 for task_lora (nothing is shared), 0 for a
C-Poly whose exclusive skills learned nothing; undefined (None) for methods without exclusive skills.
With trainable W_B, `own_task_weight` is the share of each row's absolute weight on the task's own
block (1 at the identity init): whether tasks keep to their own exclusive skills or borrow others'
(`task_weights: block` cannot borrow: 1 by construction).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from cpoly.skills.io import task_lora_factors
from cpoly.skills.model import skill_state, skilled_layers


@contextlib.contextmanager
def _without_exclusive_skills(model: nn.Module) -> Iterator[None]:
    saved = []
    with torch.no_grad():
        for _, layer in skilled_layers(model):
            saved.append((layer.task_A.detach().clone(), layer.task_B.detach().clone()))
            layer.task_A.zero_()
            layer.task_B.zero_()
    try:
        yield
    finally:
        with torch.no_grad():
            for (_, layer), (a, b) in zip(skilled_layers(model), saved, strict=True):
                layer.task_A.copy_(a)
                layer.task_B.copy_(b)


def _updates(model: nn.Module, task: str) -> list[torch.Tensor]:
    return [(a.double() @ b.double()) for a, b in task_lora_factors(model, task).values()]


@torch.no_grad()
def exclusive_skill_usage(model: nn.Module) -> dict[str, Any] | None:
    """Per task and on average: reliance on exclusive skills and (trainable W_B) own-block weight."""
    config = skill_state(model).config
    if not config.n_task_skills or config.token_routed:
        return None
    full = {task: _updates(model, task) for task in config.task_names}
    with _without_exclusive_skills(model):
        shared = {task: _updates(model, task) for task in config.task_names}
    reliance: dict[str, float | None] = {}
    for task in config.task_names:
        ratios = [
            float((f - s).norm() / f.norm()) for f, s in zip(full[task], shared[task], strict=True) if f.norm() > 0
        ]
        reliance[task] = round(sum(ratios) / len(ratios), 4) if ratios else None  # no update at all yet
    known = [v for v in reliance.values() if v is not None]
    usage: dict[str, Any] = {
        "reliance": round(sum(known) / len(known), 4) if known else None,
        "per_task_reliance": reliance,
        "own_task_weight": None,
    }
    if config.has_trainable_task_weights:
        B = config.n_task_skills
        shares = []
        for _, layer in skilled_layers(model):
            w = layer.task_weights.full().detach().abs().double()  # (T, T*B)
            own = torch.stack([w[t, t * B : (t + 1) * B].sum() for t in range(w.shape[0])])
            shares.append(own / w.sum(1).clamp_min(1e-12))
        usage["own_task_weight"] = round(float(torch.stack(shares).mean()), 4)
    return usage
