"""Parameter-matched baselines: size one method to another's trainable adapter parameter count.

The reviewers' objection to C-Poly's comparisons is capacity: at T tasks C-Poly has A + T*B skills,
Poly only K. `match_parameters` picks the value of one size knob (Poly's, MHR's or MoE-LoRA's number of
shared skills `n_skills`, or LoRA's `rank`) that makes a method's trainable adapter parameters
(skills, allocation logits, task weights, gates) closest to a reference configuration's, on the very
layers the run adapts. Counts are exact: each distinct layer shape is built once on the meta device.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from cpoly.skills.config import SkillConfig, SkillConfigError
from cpoly.skills.layer import SkilledLinear, linear_shape
from cpoly.skills.methods import MATCH_FIELDS
from cpoly.skills.model import find_target_modules
from cpoly.skills.router import RoutingState

MAX_VALUE = 4096  # the search gives up past this many skills or this rank


def adapted_shapes(model: nn.Module, target_modules: Any) -> list[tuple[int, int]]:
    """(d_in, d_out) of every layer `target_modules` selects in `model`, in module order."""
    return [linear_shape(model.get_submodule(name)) for name in find_target_modules(model, target_modules)]


def adapter_parameters(config: SkillConfig, shapes: Iterable[tuple[int, int]]) -> int:
    """Trainable adapter parameters of `config` on layers of these shapes (nothing is allocated)."""
    per_shape: dict[tuple[int, int], int] = {}
    total = 0
    for shape in shapes:
        if shape not in per_shape:
            with torch.device("meta"):
                layer = SkilledLinear(nn.Linear(*shape, bias=False), config, RoutingState())
            per_shape[shape] = sum(
                p.numel() for name, p in layer.named_parameters() if not name.startswith("base_layer.")
            )
        total += per_shape[shape]
    return total


@dataclasses.dataclass(frozen=True)
class Matching:
    """What results.json records of a matched run."""

    reference: str
    reference_parameters: int
    field: str
    value: int
    parameters: int

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def match_parameters(
    config: SkillConfig, reference: SkillConfig, shapes: list[tuple[int, int]], field: str | None, reference_name: str
) -> tuple[SkillConfig, Matching]:
    """`config` with `field` set so that its adapter parameters are closest to `reference`'s (ties: the
    smaller value); the count grows monotonically in either knob, so the search stops past the target."""
    field = field or config.spec.match_by
    if field not in MATCH_FIELDS:
        raise SkillConfigError(f"method.match_by={field!r}: must be one of {', '.join(MATCH_FIELDS)}")
    target = adapter_parameters(reference, shapes)
    best: tuple[int, int, SkillConfig] | None = None  # (distance, parameters, config)
    start = config.top_k if field == "n_skills" and config.top_k else 1  # top-k routing needs k experts
    for value in range(start, MAX_VALUE + 1):
        try:
            candidate = dataclasses.replace(config, **{field: value})
        except SkillConfigError as error:
            raise SkillConfigError(
                f"method.match_by={field}: method {config.method} cannot vary it ({error})"
            ) from None
        count = adapter_parameters(candidate, shapes)
        if best is None or abs(count - target) < best[0]:
            best = (abs(count - target), count, candidate)
        if count >= target:
            break
    else:
        raise SkillConfigError(
            f"method.match_params={reference_name}: {reference_name} has {target} adapter parameters, more than "
            f"{config.method} reaches with {field}={MAX_VALUE}"
        )
    _, count, matched = best
    return matched, Matching(reference_name, target, field, getattr(matched, field), count)
