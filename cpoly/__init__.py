"""cpoly: multi-task parameter-efficient fine-tuning with modular skills (C-Poly and its baselines)."""

from cpoly.skills import (
    SkillConfig,
    add_skills,
    allocation_matrix,
    count_parameters,
    enable_gradient_checkpointing,
    export_task_lora,
    load_skills,
    save_skills,
    use_tasks,
)

__version__ = "0.1.0"

__all__ = [
    "SkillConfig",
    "add_skills",
    "allocation_matrix",
    "count_parameters",
    "enable_gradient_checkpointing",
    "export_task_lora",
    "load_skills",
    "save_skills",
    "use_tasks",
]
