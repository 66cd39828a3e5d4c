"""Which `nn.Linear` layers a `target_modules` setting selects (PEFT's matching rule).

A list entry selects a module whose full name equals it or ends with "." + it; a single string is a
regex that must match the whole module name. The skills library uses the same rule; this module lets
the backbone loader reject a target list that selects nothing before any training starts.
"""

from __future__ import annotations

import re
from typing import Any

from torch import nn


def name_matches(module_name: str, target_modules: Any) -> bool:
    if isinstance(target_modules, str):
        return re.fullmatch(target_modules, module_name) is not None
    return any(module_name == t or module_name.endswith("." + t) for t in target_modules)


def target_linear_names(model: nn.Module, target_modules: Any) -> list[str]:
    """Names of the `nn.Linear` modules of `model` that `target_modules` selects, in module order."""
    return [
        name
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and name_matches(name, target_modules)
    ]


def unmatched_targets(model: nn.Module, target_modules: Any) -> list[str]:
    """The entries of `target_modules` that select no `nn.Linear` (a regex counts as one entry)."""
    linear_names = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    # A list is checked entry by entry; a regex string is a single entry.
    entries = [target_modules] if isinstance(target_modules, str) else [[t] for t in target_modules]
    return [
        entry if isinstance(entry, str) else entry[0]
        for entry in entries
        if not any(name_matches(name, entry) for name in linear_names)
    ]
