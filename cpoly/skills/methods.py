"""The method registry: each method is one `Method` entry, and the registry is the list of methods.

Every place that depends on the method reads its entry: `SkillConfig` (defaults and rules), the layer
(routing kind, gate init), the run name (its tag), parameter matching (the knob it sizes), the optimiser
(the router's learning rate) and the report (display order: the order of registration). A method name is
written as a string here and nowhere else in the package. Adding a method that combines existing layer
features is one `register_method(Method(...))` call and one conf/method/<name>.yaml that selects it
(docs/methods.md, "Adding a method").

This module imports nothing heavy: the config system reads it before any model library is loaded.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from cpoly.skills.settings import LAYER_FIELD_NAMES, METHOD_FIELDS

# How a method's weights are chosen: one set for every input ("none"), by task id ("task"), or by a gate
# on each token ("token", no task ids needed).
ROUTINGS = ("none", "task", "token")
# The size knobs parameter matching can vary (`method.match_by`).
MATCH_FIELDS = ("n_skills", "rank")


@dataclass(frozen=True)
class Method:
    """One method: a combination of the skilled layer's features, its papers' settings, and its rules."""

    name: str
    help: str  # one line: what the method is (docs, --help, the report)
    routing: str  # one of ROUTINGS
    # The run-name part from the shared, exclusive and split counts (k, b, s), before "r<rank>": a3b1
    tag: Callable[[Any, Any, Any], str]
    # Layer settings (fields of `LayerSettings`) its papers use; the rest take `LayerSettings`' defaults.
    defaults: Mapping[str, Any] = field(default_factory=dict)
    # Layer settings the method is defined by: any other value is refused, naming the field.
    required: Mapping[str, Any] = field(default_factory=dict)
    learned_allocation: bool = False  # a learned task-to-skill allocation Z over the shared skills
    min_skills: int = 0  # shared skills it needs at least (n_skills)
    min_task_skills: int = 0  # exclusive skills per task it needs at least (n_task_skills)
    min_splits: int = 1  # heads it needs at least (n_splits; MHR: 2, since 1 is Poly)
    expert_pairs: bool = False  # its experts are whole LoRA pairs: n_skills_a is one per skill
    match_by: str = "n_skills"  # the knob parameter matching varies when `method.match_by` is unset
    # The learning rate of its router (allocation logits or gate) by default; None: the adapters' lr.
    router_lr: float | None = None
    gate_init_std: float | None = None  # token gate init N(0, std); None keeps nn.Linear's (Kaiming-uniform)

    def __post_init__(self) -> None:
        object.__setattr__(self, "defaults", MappingProxyType(dict(self.defaults)))
        object.__setattr__(self, "required", MappingProxyType(dict(self.required)))
        if self.routing not in ROUTINGS:
            raise ValueError(f"Method {self.name!r}: routing={self.routing!r} must be one of {', '.join(ROUTINGS)}")
        if self.match_by not in MATCH_FIELDS:
            raise ValueError(f"Method {self.name!r}: match_by={self.match_by!r} must be one of {MATCH_FIELDS}")
        for kind, names, known in (
            ("defaults", self.defaults, METHOD_FIELDS),
            ("required", self.required, LAYER_FIELD_NAMES),
        ):
            unknown = sorted(set(names) - set(known))
            if unknown:
                raise ValueError(f"Method {self.name!r}: {kind} names {unknown}, which are not layer settings")

    def settings(self) -> dict[str, Any]:
        """Every method-dependent layer setting at this method's default (its entry, else the field's base)."""
        return {**METHOD_FIELDS, **self.defaults}

    @property
    def token_routed(self) -> bool:
        return self.routing == "token"

    @property
    def fixed_skill_count(self) -> bool:
        """Its shared-skill count is part of its definition: parameter matching must vary the rank."""
        return "n_skills" in self.required


METHODS: dict[str, Method] = {}
DEFAULT_METHOD = "cpoly"  # SkillConfig's method when none is named


def register_method(method: Method) -> Method:
    """Add a method to the registry (it is then a valid `SkillConfig.method` and `method.method`)."""
    if method.name in METHODS:
        raise ValueError(f"a method named {method.name!r} is already registered")
    METHODS[method.name] = method
    return method


def token_routed_names() -> list[str]:
    return [name for name, m in METHODS.items() if m.token_routed]


def method_rank(name: str) -> int:
    """Display order: registration order; unknown names after every method."""
    names = list(METHODS)
    return names.index(name) if name in names else len(names)


def peft_poly_method(n_splits: int) -> str:
    """The registered method a PEFT Poly adapter is: MHR with several splits, Poly with one."""
    return "mhr" if n_splits > 1 else "poly"


# Paper settings: vanilla LoRA r=8; MoE-like methods 4 experts of r=2; C-Poly A=3, B=1, r=2. task_lora uses
# r=2 so that it is C-Poly's exclusive skill alone (the A=0 ablation). The methods published since keep
# their papers' structure (docs/methods.md) at the family's budget: about a LoRA r=8's parameters on square
# layers. Registration order is the report's display order.
_POOLED = dict(n_task_skills=0, n_splits=1)  # shared skills only, each one LoRA (no heads)
register_method(Method(
    name="shared_lora", help="one LoRA shared by every task (vanilla LoRA, r=8)", routing="none",
    tag=lambda k, b, s: "", defaults=dict(rank=8, n_skills=1),
    required=dict(n_skills=1, n_task_skills=0, n_splits=1), match_by="rank",
))  # fmt: skip
register_method(Method(
    name="task_lora", help="one LoRA per task, no sharing (C-Poly's exclusive skills alone)", routing="task",
    tag=lambda k, b, s: f"b{b}", defaults=dict(rank=2, n_skills=0, n_task_skills=1),
    required=dict(n_skills=0, n_splits=1, task_weights="fixed"), min_task_skills=1, match_by="rank",
))  # fmt: skip
register_method(Method(
    name="moe_lora", help="LoRA experts mixed by a softmax gate on each token (MoLoRA-like)", routing="token",
    tag=lambda k, b, s: f"e{k}", defaults=dict(n_skills=4, mixing="outputs"),
    required=dict(_POOLED, mixing="outputs"), min_skills=1, expert_pairs=True,
))  # fmt: skip
register_method(Method(
    name="poly", help="Polytropon: shared skills under a learned task-to-skill allocation", routing="task",
    tag=lambda k, b, s: f"k{k}", defaults=dict(n_skills=4), required=_POOLED, learned_allocation=True,
    min_skills=1, router_lr=0.1,
))  # fmt: skip
register_method(Method(
    name="mhr", help="Multi-Head Routing: Poly with the adapter split into heads routed on their own",
    routing="task", tag=lambda k, b, s: f"k{k}s{s}", defaults=dict(n_skills=4, n_splits=4),
    required=dict(n_task_skills=0), learned_allocation=True, min_skills=1, min_splits=2, router_lr=0.1,
))  # fmt: skip
register_method(Method(
    name="cpoly", help="C-Poly: A shared skills under a learned allocation plus B exclusive skills per task",
    routing="task", tag=lambda k, b, s: f"a{k}b{b}" + (f"s{s}" if s and s > 1 else ""),
    defaults=dict(n_skills=3, n_task_skills=1, task_weights="trainable"), learned_allocation=True,
    router_lr=0.1,
))  # fmt: skip
register_method(Method(
    name="mtl_lora", help="MTL-LoRA: one shared A, a per-task r x r bottleneck, B_i under a per-task softmax",
    routing="task", tag=lambda k, b, s: f"n{k}",
    defaults=dict(rank=4, n_skills=3, n_skills_a=1, allocation="softmax", bottleneck="full", temperature=0.1),
    required=dict(_POOLED, n_skills_a=1, mixing="params"), learned_allocation=True, min_skills=1,
    match_by="rank",
))  # fmt: skip
register_method(Method(
    name="hydralora", help="HydraLoRA: one shared A and N B heads under a dense token router", routing="token",
    tag=lambda k, b, s: f"h{k}", defaults=dict(rank=4, n_skills=3, n_skills_a=1, mixing="outputs"),
    required=dict(_POOLED, n_skills_a=1, mixing="outputs"), min_skills=1, match_by="rank",
))  # fmt: skip
register_method(Method(
    name="mixlora", help="MixLoRA: LoRA experts under a top-2 token router with a load-balancing loss",
    routing="token", tag=lambda k, b, s: f"e{k}",
    defaults=dict(n_skills=4, mixing="outputs", top_k=2, aux_loss_coef=0.001),
    required=dict(_POOLED, mixing="outputs"), min_skills=1, expert_pairs=True, gate_init_std=0.02,
))  # fmt: skip
register_method(Method(
    name="switch_lora", help="Switch-style LoRA experts: each token to its top-1 expert, load-balancing loss 0.01",
    routing="token", tag=lambda k, b, s: f"e{k}",
    defaults=dict(n_skills=4, mixing="outputs", top_k=1, aux_loss_coef=0.01),
    required=dict(_POOLED, mixing="outputs"), min_skills=1, expert_pairs=True,
))  # fmt: skip


def describe() -> str:
    """The registry and the layer settings as text: `python -m cpoly.skills.methods`."""
    from cpoly.skills.settings import LAYER_FIELDS

    lines = ["methods (display order; method=<name>):"]
    for m in METHODS.values():
        changed = ", ".join(f"{k}={v}" for k, v in m.defaults.items())
        lines.append(f"  {m.name:<12} {m.routing:<5} {m.help}" + (f" [{changed}]" if changed else ""))
    lines.append("layer settings (method.<name>=...; null takes the method's default):")
    for f in LAYER_FIELDS:
        base = f.metadata.get("base", f.default)
        choices = f" ({' | '.join(f.metadata['choices'])})" if f.metadata.get("choices") else ""
        lines.append(f"  {f.name:<14} base {base!r}{choices}: {f.metadata['help']}")
    return "\n".join(lines)


if __name__ == "__main__":
    print(describe())
