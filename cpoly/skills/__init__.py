"""The skill library: one skilled-LoRA layer for every registered method, task routing, save/load, PEFT interop.

Its public names are imported on first use (cpoly/lazy.py): the config system reads `cpoly.skills.methods`
and `cpoly.skills.config` without loading torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from cpoly.lazy import lazy_exports

if TYPE_CHECKING:
    from cpoly.skills.config import SkillConfig, SkillConfigError
    from cpoly.skills.io import export_task_lora, load_skills, save_skills, task_lora_factors
    from cpoly.skills.layer import SkilledLinear
    from cpoly.skills.methods import METHODS, Method, register_method
    from cpoly.skills.model import (
        Allocation,
        add_skills,
        allocation_matrix,
        count_parameters,
        enable_gradient_checkpointing,
        pop_aux_loss,
        skill_state,
        skilled_layers,
        use_tasks,
    )

_EXPORTS = {
    **dict.fromkeys(["SkillConfig", "SkillConfigError"], "cpoly.skills.config"),
    **dict.fromkeys(["export_task_lora", "load_skills", "save_skills", "task_lora_factors"], "cpoly.skills.io"),
    "SkilledLinear": "cpoly.skills.layer",
    **dict.fromkeys(["METHODS", "Method", "register_method"], "cpoly.skills.methods"),
    **dict.fromkeys(
        [
            "Allocation",
            "add_skills",
            "allocation_matrix",
            "count_parameters",
            "enable_gradient_checkpointing",
            "pop_aux_loss",
            "skill_state",
            "skilled_layers",
            "use_tasks",
        ],
        "cpoly.skills.model",
    ),
}
__all__ = [
    "Allocation",
    "METHODS",
    "Method",
    "SkillConfig",
    "SkillConfigError",
    "SkilledLinear",
    "add_skills",
    "allocation_matrix",
    "count_parameters",
    "enable_gradient_checkpointing",
    "export_task_lora",
    "load_skills",
    "pop_aux_loss",
    "register_method",
    "save_skills",
    "skill_state",
    "skilled_layers",
    "task_lora_factors",
    "use_tasks",
]
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
