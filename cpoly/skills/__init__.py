"""The skill library: one skilled-LoRA layer for every registered method, task routing, save/load, PEFT interop."""

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

__all__ = [
    "METHODS",
    "Allocation",
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
