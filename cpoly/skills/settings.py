"""`LayerSettings`: the one list of the skilled layer's settings.

`SkillConfig` (the library's config) and `MethodConfig` (the Hydra schema of conf/method/*.yaml) both
inherit these fields, the run name's tag reads the `tag` of each, and `SkilledLinear.extra_repr` prints them.
Each field states, once, its help text, the value it takes when neither the config nor the method's
registry entry sets one (`base`), the words it accepts (`choices`) and its run-name prefix (`tag`: shown
when the value differs from the method's default). `None` in a config means "the method's default".
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


def setting(base: Any, help: str, *, choices: tuple[str, ...] | None = None, tag: str | None = None) -> Any:
    """A method-dependent layer field: `None` until the method's default (or `base`) fills it."""
    return field(default=None, metadata={"base": base, "help": help, "choices": choices, "tag": tag})


@dataclass
class LayerSettings:
    """The settings of one skilled LoRA layer; every method is a combination of them (cpoly/skills/methods.py)."""

    rank: int | None = setting(2, "r, the rank of each skill; the update is scaled by alpha / r")
    n_skills: int | None = setting(
        1, "K shared skills (the experts of the token-routed methods); with n_skills_a, K_B up-projections"
    )
    n_task_skills: int | None = setting(0, "B exclusive skills per task")
    n_splits: int | None = setting(1, "S heads, each routed on its own (> 1 is Multi-Head Routing)")
    alpha: float = field(default=1.0, metadata={"help": "the update's scale alpha / r; 1.0 is PEFT Poly's 1 / r"})
    mixing: str | None = setting(
        "params",
        "params mixes the skills' A and B, then multiplies; outputs sums the skills' outputs",
        choices=("params", "outputs"),
    )
    task_weights: str | None = setting(
        "fixed",
        "the exclusive-skill weights W_B: trainable (dense T x T*B, identity init), fixed (the identity) or "
        "block (trainable within each task's own B skills, T x B, identity init: the paper's Eq. 2)",
        choices=("trainable", "fixed", "block"),
        tag="w",
    )
    n_skills_a: int | None = setting(
        None,
        "K_A shared down-projections: None is one per skill (K pairs); 1 is one A shared by every B "
        "(HydraLoRA, MTL-LoRA: asymmetric pools)",
        tag="ka",
    )
    allocation: str | None = setting(
        "bernoulli",
        "how a learned allocation turns task logits into weights over the shared skills: bernoulli (Poly: "
        "relaxed-Bernoulli samples in training, sigmoid in evaluation, normalised) or softmax (MTL-LoRA: "
        "softmax(logits / temperature), the same in both)",
        choices=("bernoulli", "softmax"),
        tag="z",
    )
    bottleneck: str | None = setting(
        "none",
        "a per-task r x r matrix between the mixed A and B: full (identity init), diagonal (ones) or none "
        "(MTL-LoRA: h = W0 x + (alpha / r) x A Lambda_t B)",
        choices=("none", "full", "diagonal"),
        tag="L",
    )
    temperature: float | None = setting(
        1.0, "the relaxed-Bernoulli or allocation-softmax temperature; the token gate's softmax temperature"
    )
    top_k: int | None = setting(
        None, "token-routed methods: keep the k largest gate values per token (None: dense)", tag="top"
    )
    aux_loss_coef: float | None = setting(
        0.0,
        "token-routed methods: coefficient of the load-balancing loss (Switch/Mixtral form) added to the "
        "training loss and logged as train/aux_loss; 0 computes none",
        tag="aux",
    )
    unknown_task: str = field(
        default="error",
        metadata={
            "help": "error, or uniform: tasks the adapters were not trained on get uniform shared weights and "
            "no task skill",
            "choices": ("error", "uniform"),
        },
    )


LAYER_FIELDS: tuple[dataclasses.Field, ...] = dataclasses.fields(LayerSettings)
LAYER_FIELD_NAMES: tuple[str, ...] = tuple(f.name for f in LAYER_FIELDS)
# The fields a method's registry entry may set (those whose default depends on the method).
METHOD_FIELDS: dict[str, Any] = {f.name: f.metadata["base"] for f in LAYER_FIELDS if "base" in f.metadata}
CHOICES: dict[str, tuple[str, ...]] = {f.name: f.metadata["choices"] for f in LAYER_FIELDS if f.metadata.get("choices")}
TAGS: dict[str, str] = {f.name: f.metadata["tag"] for f in LAYER_FIELDS if f.metadata.get("tag")}


def layer_values(source: Any) -> dict[str, Any]:
    """The layer settings of any object or mapping that has them (missing ones left out)."""
    get = source.get if isinstance(source, dict) or hasattr(source, "keys") else None
    values = {}
    for name in LAYER_FIELD_NAMES:
        if get is not None:
            if name in source:
                values[name] = get(name)
        elif hasattr(source, name):
            values[name] = getattr(source, name)
    return values
