"""The strings backbone's pretraining recipe (`backbone.pretraining`): a schema of plain values, checked on
its own, that `cpoly.backbones.config` validates and `cpoly.backbones.strings` builds from. Kept apart from
the builder so that the config schema imports neither torch nor the builder (no import cycle)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from cpoly.backbones.errors import BackboneConfigError
from cpoly.data.synthetic import ATOMIC_SKILLS


@dataclass(frozen=True)
class StringPretraining:
    """The recipe (`backbone.pretraining`); every field is part of the cache key."""

    steps: int = 4000
    batch_size: int = 64
    lr: float = 1e-3
    warmup_steps: int = 100
    seed: int = 0
    alphabet: str = "abcdefgh"
    # Word lengths cover the benchmark's (3-5) with a margin either side.
    min_length: int = 2
    max_length: int = 6
    max_skills: int = 3  # atomic skills per program: 0..max_skills
    max_substitutions: int = 2  # substituted letters per program: 0..max_substitutions
    eval_examples: int = 500  # held-out programs scored by greedy decoding after pretraining

    @classmethod
    def from_mapping(cls, values: Any, backbone_name: str) -> StringPretraining:
        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise BackboneConfigError(
                f"backbone.pretraining (backbone {backbone_name!r}): unknown keys {unknown}; known: {sorted(known)}"
            )
        recipe = cls(**dict(values))
        for name, f in known.items():
            value = getattr(recipe, name)
            expected = {"int": int, "float": (int, float), "str": str}[str(f.type)]
            if isinstance(value, bool) or not isinstance(value, expected):
                raise BackboneConfigError(
                    f"backbone.pretraining.{name}={value!r} (backbone {backbone_name!r}): must be of type {f.type}"
                )
        problems = [
            (recipe.steps >= 1, "steps", "must be >= 1"),
            (recipe.batch_size >= 1, "batch_size", "must be >= 1"),
            (recipe.lr > 0 and math.isfinite(recipe.lr), "lr", "must be a finite number > 0"),
            (recipe.warmup_steps >= 0, "warmup_steps", "must be >= 0"),
            (1 <= recipe.min_length <= recipe.max_length, "min_length", "need 1 <= min_length <= max_length"),
            (0 <= recipe.max_skills <= len(ATOMIC_SKILLS), "max_skills", f"must lie in [0, {len(ATOMIC_SKILLS)}]"),
            (
                0 <= recipe.max_substitutions <= len(recipe.alphabet),
                "max_substitutions",
                "must lie in [0, len(alphabet)]",
            ),
            (recipe.eval_examples >= 0, "eval_examples", "must be >= 0"),
            (
                len(recipe.alphabet) >= 2 and recipe.alphabet.isalpha() and recipe.alphabet == recipe.alphabet.lower(),
                "alphabet",
                "must be >= 2 lower-case letters",
            ),
        ]
        for ok, name, why in problems:
            if not ok:
                raise BackboneConfigError(
                    f"backbone.pretraining.{name}={getattr(recipe, name)!r} (backbone {backbone_name!r}): {why}"
                )
        return recipe
