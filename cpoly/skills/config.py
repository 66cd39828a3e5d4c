"""`SkillConfig`: one skilled-LoRA configuration for every registered method (DESIGN.md section 2;
the methods published since C-Poly: docs/methods.md).

The methods are configurations of one layer: its settings are `LayerSettings` (cpoly/skills/settings.py),
each method's defaults and rules its entry in the registry (cpoly/skills/methods.py). Fields left as
`None` take the method's default (the paper's settings); every explicit value is checked against the
method's rules on construction, and every error names the field and the bad value.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from cpoly.skills.methods import DEFAULT_METHOD, METHODS, Method, token_routed_names
from cpoly.skills.settings import CHOICES, LayerSettings


class SkillConfigError(ValueError):
    """An invalid `SkillConfig` value; the message names the field and the value."""


def _fail(field_name: str, value: Any, why: str) -> None:
    raise SkillConfigError(f"SkillConfig.{field_name}={value!r}: {why}")


@dataclass
class SkillConfig(LayerSettings):
    """Skilled LoRA on every target linear layer: K shared skills routed by a learned task-to-skill
    allocation, B exclusive skills per task, S splits (MHR heads), rank r, output scale alpha / r."""

    method: str = field(default=DEFAULT_METHOD, metadata={"help": "a registered method (cpoly/skills/methods.py)"})
    task_names: list[str] = field(default_factory=list)
    # Module-name suffixes (PEFT semantics: a name equals it or ends with "." + it) or one regex
    # string matched against the full module name.
    target_modules: list[str] | str = field(default_factory=lambda: ["q", "v"])
    modules_to_save: list[str] = field(default_factory=list)  # kept trainable and saved (e.g. task heads)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            _fail("method", self.method, f"must be one of {', '.join(METHODS)}")
        for name, default in self.spec.settings().items():
            if getattr(self, name) is None:
                setattr(self, name, default)
        self._check_types()
        self._check_values()
        self._check_method_rules()

    # -- validation -------------------------------------------------------------------------------
    def _check_types(self) -> None:
        for name in ("rank", "n_skills", "n_task_skills", "n_splits"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                _fail(name, value, "must be an integer")
        for name in ("top_k", "n_skills_a"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                _fail(name, value, "must be an integer or None")
        for name in ("alpha", "temperature", "aux_loss_coef"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                _fail(name, value, "must be a number")
        self.task_names = list(self.task_names)
        if not all(isinstance(t, str) and t for t in self.task_names):
            _fail("task_names", self.task_names, "must be non-empty strings")
        if isinstance(self.target_modules, str):
            if not self.target_modules:
                _fail("target_modules", self.target_modules, "an empty regex matches nothing")
        else:
            self.target_modules = list(self.target_modules)
            if not self.target_modules or not all(isinstance(t, str) and t for t in self.target_modules):
                _fail("target_modules", self.target_modules, "must be a non-empty list of names or a regex")
        self.modules_to_save = list(self.modules_to_save)

    def _check_values(self) -> None:
        if not self.task_names:
            _fail("task_names", self.task_names, "at least one task is needed")
        seen: set[str] = set()
        duplicates = sorted({t for t in self.task_names if t in seen or seen.add(t)})
        if duplicates:
            _fail("task_names", duplicates, "duplicate task names")
        if self.rank < 1:
            _fail("rank", self.rank, "must be >= 1")
        if self.n_skills < 0:
            _fail("n_skills", self.n_skills, "must be >= 0")
        if self.n_task_skills < 0:
            _fail("n_task_skills", self.n_task_skills, "must be >= 0")
        if self.n_splits < 1:
            _fail("n_splits", self.n_splits, "must be >= 1")
        if self.n_skills + self.n_task_skills == 0:
            _fail("n_skills", self.n_skills, "with n_task_skills=0 there is no skill at all")
        if self.alpha <= 0:
            _fail("alpha", self.alpha, "must be > 0")
        if not math.isfinite(self.temperature) or self.temperature <= 0:
            _fail("temperature", self.temperature, "must be a finite number > 0")
        if not math.isfinite(self.aux_loss_coef) or self.aux_loss_coef < 0:
            _fail("aux_loss_coef", self.aux_loss_coef, "must be a finite number >= 0")
        if self.n_skills_a not in {None, self.n_skills, min(self.n_skills, 1)}:
            _fail(
                "n_skills_a",
                self.n_skills_a,
                f"the down-projections are one per skill (n_skills={self.n_skills}) or one shared by all (1)",
            )
        for name, choices in CHOICES.items():
            if getattr(self, name) not in choices:
                _fail(name, getattr(self, name), f"must be one of {', '.join(choices)}")
        if self.task_weights == "block" and self.n_task_skills < 1:
            _fail(
                "task_weights",
                self.task_weights,
                f"block weights mix a task's exclusive skills: needs n_task_skills >= 1, not {self.n_task_skills}",
            )
        if self.mixing == "outputs" and self.n_splits > 1:
            _fail("mixing", self.mixing, "output mixing is defined for n_splits=1 only (a skill is one LoRA)")

    def _check_method_rules(self) -> None:
        spec, m = self.spec, self.method
        if spec.expert_pairs and self.n_skills_a not in (None, self.n_skills):
            _fail("n_skills_a", self.n_skills_a, f"method {m}'s experts are LoRA pairs: n_skills_a={self.n_skills}")
        for name, required in spec.required.items():
            if getattr(self, name) != required:
                _fail(name, getattr(self, name), f"method {m} requires {name}={required!r}")
        if self.n_task_skills < spec.min_task_skills:
            _fail("n_task_skills", self.n_task_skills, f"{m} needs at least {spec.min_task_skills} skill per task")
        if self.n_skills < spec.min_skills:
            _fail("n_skills", self.n_skills, f"method {m} needs at least {spec.min_skills} shared skill")
        if self.n_splits < spec.min_splits:
            _fail("n_splits", self.n_splits, f"{m} routes several heads: n_splits must be >= {spec.min_splits}")
        self._check_feature_rules()

    def _check_feature_rules(self) -> None:
        """Layer features only some routing kinds have: a gate's top-k and load balancing, a learned
        allocation's kind, a per-task bottleneck."""
        m, token_routed = self.method, ", ".join(token_routed_names())
        if self.top_k is not None:
            if not self.token_routed:
                _fail("top_k", self.top_k, f"only the token-routed methods ({token_routed}) have a gate")
            if not 1 <= self.top_k <= self.n_skills:
                _fail("top_k", self.top_k, f"must lie in [1, n_skills={self.n_skills}]")
        if self.aux_loss_coef > 0 and not self.token_routed:
            _fail(
                "aux_loss_coef",
                self.aux_loss_coef,
                f"a load-balancing loss needs a token gate ({token_routed})",
            )
        if self.allocation != "bernoulli" and not self.has_learned_allocation:
            _fail("allocation", self.allocation, f"method {m} has no learned task-to-skill allocation")
        if self.bottleneck != "none":
            if not self.needs_task_ids or self.n_task_skills or self.n_splits != 1 or self.mixing != "params":
                _fail(
                    "bottleneck",
                    self.bottleneck,
                    "a per-task bottleneck sits between the mixed shared A and B: it needs a task-routed method "
                    "with no exclusive skills, n_splits=1 and mixing=params (mtl_lora, poly)",
                )

    # -- derived ----------------------------------------------------------------------------------
    @property
    def spec(self) -> Method:
        """The method's registry entry."""
        return METHODS[self.method]

    @property
    def n_tasks(self) -> int:
        return len(self.task_names)

    @property
    def scaling(self) -> float:
        return self.alpha / self.rank

    @property
    def has_learned_allocation(self) -> bool:
        """A learned task-to-skill allocation Z over the shared skills (Poly, MHR, C-Poly)."""
        return self.spec.learned_allocation and self.n_skills > 0

    @property
    def has_router(self) -> bool:
        """Allocation logits or a token gate: what `optim.router_lr` trains."""
        return self.has_learned_allocation or self.token_routed

    @property
    def has_trainable_task_weights(self) -> bool:
        """W_B is a Parameter: dense (`trainable`) or block-diagonal (`block`)."""
        return self.n_task_skills > 0 and self.task_weights in ("trainable", "block")

    @property
    def needs_task_ids(self) -> bool:
        """Task-routed methods; the shared and token-routed ones route without knowing the task."""
        return self.spec.routing == "task"

    @property
    def token_routed(self) -> bool:
        """Each token's weights come from a gate on its input."""
        return self.spec.routing == "token"

    @property
    def asymmetric(self) -> bool:
        """One shared down-projection for several up-projections (K_A = 1 < K_B)."""
        return self.n_skills_a is not None and self.n_skills_a != self.n_skills

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SkillConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise SkillConfigError(f"SkillConfig: unknown fields {unknown}")
        return cls(**data)
