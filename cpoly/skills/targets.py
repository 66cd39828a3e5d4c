"""Which layers a `target_modules` setting selects: PEFT's matching rule, in one place.

A list entry selects a module whose full name equals it or ends with "." + it; a single string is a
regex that must match the whole module name. The same rule (with a list) picks `modules_to_save`.
The layers that can be selected are those the skill layer adapts: `nn.Linear` and transformers'
`Conv1D` (`ADAPTABLE_TYPES`). The skills library adds skills with it; the backbone loader uses it to
reject a target list that selects nothing before any training starts.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from torch import nn

from cpoly.skills.layer import ADAPTABLE_TYPES

Targets = Sequence[str] | str


def name_matches(module_name: str, targets: Targets) -> bool:
    """PEFT's rule: `targets` a regex fully matching the name, or a list with an entry equal to the
    name or to one of its dotted suffixes."""
    if isinstance(targets, str):
        return re.fullmatch(targets, module_name) is not None
    return any(module_name == t or module_name.endswith("." + t) for t in targets)


def adaptable_layer_names(model: nn.Module) -> list[str]:
    """Names of the modules of `model` a skill layer can wrap (`ADAPTABLE_TYPES`), in module order."""
    return [name for name, module in model.named_modules() if isinstance(module, ADAPTABLE_TYPES)]


def target_linear_names(model: nn.Module, targets: Targets) -> list[str]:
    """Names of the adaptable layers (`nn.Linear`, `Conv1D`) that `targets` selects, in module order."""
    return [name for name in adaptable_layer_names(model) if name_matches(name, targets)]


def unmatched_targets(model: nn.Module, targets: Targets) -> list[str]:
    """The entries of `targets` that select no adaptable layer (a regex counts as one entry)."""
    names = adaptable_layer_names(model)
    if isinstance(targets, str):
        return [] if any(name_matches(n, targets) for n in names) else [targets]
    return [entry for entry in targets if not any(name_matches(n, [entry]) for n in names)]


def matching_modules(model: nn.Module, names: Sequence[str]) -> list[tuple[str, nn.Module]]:
    """The modules of `model` (any type) a list of names selects by the same rule (`modules_to_save`)."""
    return [(name, module) for name, module in model.named_modules() if name_matches(name, names)]
