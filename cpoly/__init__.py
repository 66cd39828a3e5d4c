"""cpoly: multi-task parameter-efficient fine-tuning with modular skills (C-Poly and its baselines).

The public API below is imported on first use (cpoly/lazy.py): `import cpoly` alone loads no model library.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from cpoly.lazy import lazy_exports

if TYPE_CHECKING:
    from cpoly.skills.config import SkillConfig
    from cpoly.skills.io import export_task_lora, load_skills, save_skills
    from cpoly.skills.model import (
        add_skills,
        allocation_matrix,
        count_parameters,
        enable_gradient_checkpointing,
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
__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "SkillConfig": "cpoly.skills.config",
        **dict.fromkeys(["export_task_lora", "load_skills", "save_skills"], "cpoly.skills.io"),
        **dict.fromkeys(
            ["add_skills", "allocation_matrix", "count_parameters", "enable_gradient_checkpointing", "use_tasks"],
            "cpoly.skills.model",
        ),
    },
)
