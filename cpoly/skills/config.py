"""`SkillConfig`: one skilled-LoRA configuration for all nine methods (DESIGN.md section 2;
the three published since C-Poly: docs/methods.md).

The methods are configurations of one layer. Fields left as `None` take the method's default (the
paper's settings); every explicit value is checked against the method's rules on construction, and
every error names the field and the bad value.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

METHODS = ("shared_lora", "task_lora", "moe_lora", "poly", "mhr", "cpoly", "mtl_lora", "hydralora", "mixlora")
# Methods whose weights come from a gate on each token (no task ids): every other method but shared_lora
# routes by task.
TOKEN_ROUTED = ("moe_lora", "hydralora", "mixlora")

# Paper settings: vanilla LoRA r=8; MoE-like methods 4 experts of r=2; C-Poly A=3, B=1, r=2.
# task_lora uses r=2 so that it is C-Poly's exclusive skill alone (the A=0 ablation). The methods published
# since keep their papers' structure (docs/methods.md): MTL-LoRA one shared A, a per-task r x r bottleneck and
# n=3 up-projections mixed by a per-task softmax at temperature 0.1; HydraLoRA one shared A and N=3 B heads
# under a dense token router; MixLoRA 4 LoRA experts under a top-2 token router with a load-balancing loss
# (0.001). Their ranks keep the family's budget: about a LoRA r=8's parameters on square layers.
# fmt: off
METHOD_DEFAULTS: dict[str, dict[str, Any]] = {  # one row per method: a table
    "shared_lora": dict(rank=8, n_skills=1, n_task_skills=0, n_splits=1, mixing="params", task_weights="fixed"),
    "task_lora": dict(rank=2, n_skills=0, n_task_skills=1, n_splits=1, mixing="params", task_weights="fixed"),
    "moe_lora": dict(rank=2, n_skills=4, n_task_skills=0, n_splits=1, mixing="outputs", task_weights="fixed"),
    "poly": dict(rank=2, n_skills=4, n_task_skills=0, n_splits=1, mixing="params", task_weights="fixed"),
    "mhr": dict(rank=2, n_skills=4, n_task_skills=0, n_splits=4, mixing="params", task_weights="fixed"),
    "cpoly": dict(rank=2, n_skills=3, n_task_skills=1, n_splits=1, mixing="params", task_weights="trainable"),
    "mtl_lora": dict(rank=4, n_skills=3, n_skills_a=1, n_task_skills=0, n_splits=1, mixing="params",
                     task_weights="fixed", allocation="softmax", bottleneck="full", temperature=0.1),
    "hydralora": dict(rank=4, n_skills=3, n_skills_a=1, n_task_skills=0, n_splits=1, mixing="outputs",
                      task_weights="fixed"),
    "mixlora": dict(rank=2, n_skills=4, n_task_skills=0, n_splits=1, mixing="outputs", task_weights="fixed",
                    top_k=2, aux_loss_coef=0.001),
}
# fmt: on
# Defaults every method shares unless its row above says otherwise (n_skills_a stays None: one A per skill).
COMMON_DEFAULTS: dict[str, Any] = dict(allocation="bernoulli", bottleneck="none", aux_loss_coef=0.0, temperature=1.0)

MIXINGS = ("params", "outputs")
TASK_WEIGHTS = ("trainable", "fixed", "block")
ALLOCATIONS = ("bernoulli", "softmax")
BOTTLENECKS = ("none", "full", "diagonal")
UNKNOWN_TASK = ("error", "uniform")
# The fields that take one of a few words, and those words
CHOICES = dict(
    mixing=MIXINGS, task_weights=TASK_WEIGHTS, allocation=ALLOCATIONS, bottleneck=BOTTLENECKS, unknown_task=UNKNOWN_TASK
)


class SkillConfigError(ValueError):
    """An invalid `SkillConfig` value; the message names the field and the value."""


def _fail(field_name: str, value: Any, why: str) -> None:
    raise SkillConfigError(f"SkillConfig.{field_name}={value!r}: {why}")


@dataclass
class SkillConfig:
    """Skilled LoRA on every target linear layer: K shared skills routed by a learned task-to-skill
    allocation, B exclusive skills per task, S splits (MHR heads), rank r, output scale alpha / r."""

    method: str = "cpoly"
    task_names: list[str] = field(default_factory=list)
    # Module-name suffixes (PEFT semantics: a name equals it or ends with "." + it) or one regex
    # string matched against the full module name.
    target_modules: list[str] | str = field(default_factory=lambda: ["q", "v"])
    rank: int | None = None
    n_skills: int | None = None  # K shared skills (the experts of moe_lora); with n_skills_a, K_B up-projections
    # K_A shared down-projections: None is one per skill (K pairs); 1 is one A shared by every B (HydraLoRA,
    # MTL-LoRA: asymmetric pools)
    n_skills_a: int | None = None
    n_task_skills: int | None = None  # B exclusive skills per task
    n_splits: int | None = None  # S; > 1 is Multi-Head Routing
    alpha: float = 1.0  # the delta is scaled by alpha / rank; 1.0 is PEFT Poly's 1 / r
    mixing: str | None = None  # "params" mixes A and B then multiplies; "outputs" sums skill outputs
    # exclusive-skill weights W_B: "trainable" (dense T x T*B, identity init), "fixed" (the identity) or
    # "block" (trainable within each task's own B skills only, T x B, identity init: the paper's Eq. 2)
    task_weights: str | None = None
    # how a learned allocation turns task logits into weights over the shared skills: "bernoulli" (Poly:
    # relaxed-Bernoulli samples while training, sigmoid at evaluation, normalised) or "softmax" (MTL-LoRA:
    # softmax(logits / temperature), the same in training and evaluation)
    allocation: str | None = None
    # a per-task r x r matrix between the mixed A and B: "full" (identity init), "diagonal" (ones) or "none";
    # h = W0 x + (alpha / r) x A Lambda_t B (MTL-LoRA)
    bottleneck: str | None = None
    # relaxed-Bernoulli or allocation-softmax temperature; token-gate softmax temperature (None: 1, mtl_lora 0.1)
    temperature: float | None = None
    top_k: int | None = None  # token-routed methods: keep the k largest gate values per token (None: dense)
    # token-routed methods: coefficient of the load-balancing loss (Switch/Mixtral form) added to the training
    # loss and logged as train/aux_loss; 0 computes none
    aux_loss_coef: float | None = None
    unknown_task: str = "error"  # "uniform": unseen tasks get uniform shared weights and no task skill
    modules_to_save: list[str] = field(default_factory=list)  # kept trainable and saved (e.g. task heads)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            _fail("method", self.method, f"must be one of {', '.join(METHODS)}")
        for name, default in {**COMMON_DEFAULTS, **METHOD_DEFAULTS[self.method]}.items():
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
        m = self.method
        exact = {
            "shared_lora": dict(n_skills=1, n_task_skills=0, n_splits=1),
            "task_lora": dict(n_skills=0, n_splits=1, task_weights="fixed"),
            "moe_lora": dict(n_task_skills=0, n_splits=1, mixing="outputs"),
            "poly": dict(n_task_skills=0, n_splits=1),
            "mhr": dict(n_task_skills=0),
            "cpoly": {},
            "mtl_lora": dict(n_skills_a=1, n_task_skills=0, n_splits=1, mixing="params"),
            "hydralora": dict(n_skills_a=1, n_task_skills=0, n_splits=1, mixing="outputs"),
            "mixlora": dict(n_task_skills=0, n_splits=1, mixing="outputs"),
        }[m]
        if m in ("moe_lora", "mixlora") and self.n_skills_a not in (None, self.n_skills):
            _fail("n_skills_a", self.n_skills_a, f"method {m}'s experts are LoRA pairs: n_skills_a={self.n_skills}")
        for name, required in exact.items():
            if getattr(self, name) != required:
                _fail(name, getattr(self, name), f"method {m} requires {name}={required!r}")
        if m == "task_lora" and self.n_task_skills < 1:
            _fail("n_task_skills", self.n_task_skills, "task_lora needs at least one skill per task")
        if m in ("moe_lora", "poly", "mhr", "mtl_lora", "hydralora", "mixlora") and self.n_skills < 1:
            _fail("n_skills", self.n_skills, f"method {m} needs at least one shared skill")
        if m == "mhr" and self.n_splits < 2:
            _fail("n_splits", self.n_splits, "mhr routes several heads: n_splits must be >= 2 (1 is poly)")
        if self.top_k is not None:
            if not self.token_routed:
                _fail("top_k", self.top_k, f"only the token-routed methods ({', '.join(TOKEN_ROUTED)}) have a gate")
            if not 1 <= self.top_k <= self.n_skills:
                _fail("top_k", self.top_k, f"must lie in [1, n_skills={self.n_skills}]")
        if self.aux_loss_coef > 0 and not self.token_routed:
            _fail(
                "aux_loss_coef",
                self.aux_loss_coef,
                f"a load-balancing loss needs a token gate ({', '.join(TOKEN_ROUTED)})",
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
    def n_tasks(self) -> int:
        return len(self.task_names)

    @property
    def scaling(self) -> float:
        return self.alpha / self.rank

    @property
    def has_learned_allocation(self) -> bool:
        """A learned task-to-skill allocation Z over the shared skills (Poly, MHR, C-Poly)."""
        return self.method in ("poly", "mhr", "cpoly", "mtl_lora") and self.n_skills > 0

    @property
    def has_trainable_task_weights(self) -> bool:
        """W_B is a Parameter: dense (`trainable`) or block-diagonal (`block`)."""
        return self.n_task_skills > 0 and self.task_weights in ("trainable", "block")

    @property
    def needs_task_ids(self) -> bool:
        """shared_lora and moe_lora route without knowing the task."""
        return self.method != "shared_lora" and not self.token_routed

    @property
    def token_routed(self) -> bool:
        """Each token's weights come from a gate on its input (`TOKEN_ROUTED`)."""
        return self.method in TOKEN_ROUTED

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
