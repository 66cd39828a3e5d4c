"""Shared factories of the skills tests: one way to build a SkillConfig, and the layer variants every
library guarantee (identity at init, exact save/load) is checked on."""

from __future__ import annotations

from typing import Any

import torch

from cpoly import SkillConfig
from cpoly.skills import METHODS, skilled_layers
from helpers.tiny_models import TASKS

# Each registered method at its defaults, and the variants that store or route differently: C-Poly's
# block-diagonal W_B, C-Poly and MHR with heads, output mixing, one shared down-projection.
VARIANTS: dict[str, dict[str, Any]] = {
    **{name: dict(method=name) for name in METHODS},
    "cpoly_block": dict(method="cpoly", task_weights="block", n_task_skills=2),
    "cpoly_splits": dict(method="cpoly", n_task_skills=2, n_splits=2),
    "cpoly_outputs": dict(method="cpoly", n_task_skills=2, mixing="outputs"),
    "poly_shared_a": dict(method="poly", n_skills_a=1),
}


def skill_config(method: str = "cpoly", task_names: list[str] = TASKS, **fields: Any) -> SkillConfig:
    """A SkillConfig for the tiny models' tasks; `method` is a registered method or a name of VARIANTS."""
    settings = dict(VARIANTS.get(method, dict(method=method)))
    return SkillConfig(**{**settings, "task_names": list(task_names), **fields})


def randomize_all(model: torch.nn.Module, std: float = 0.3, seed: int = 0) -> None:
    """Random values in every adapter tensor (B, allocation logits, task weights, bottleneck, gate), so that
    each part of the formula shows in the output."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, layer in skilled_layers(model):
            for name, p in layer.adapter_tensors().items():
                p.add_(torch.randn(p.shape, generator=g, dtype=p.dtype) * (1.0 if name == "shared_A" else std))
