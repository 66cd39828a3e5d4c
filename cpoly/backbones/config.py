"""`BackboneConfig`: which pretrained (or random) model to adapt, and how to feed it.

A Hydra structured config (registered by the app as group=backbone, name=backbone_schema): field types
are limited to what OmegaConf understands, so `target_modules` is `Any` (a list of suffixes or one
regex string) rather than a Union. `validate()` runs before anything is loaded and every error names
the field and the bad value, in Hydra's override syntax so the fix is obvious.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cpoly.backbones.errors import BackboneConfigError
from cpoly.backbones.recipe import StringPretraining

__all__ = ["BYT5_TOKENIZER", "BackboneConfig", "BackboneConfigError"]

KINDS = ("seq2seq", "causal", "encoder")
# hub: a Hugging Face Hub id or a local checkpoint directory. random: a freshly initialised model whose
# architecture is `model_overrides` (with `model_type`) on top of `model_id`'s config when given.
# package: a pip-installed package that ships the weights (see `cpoly.backbones.packages`).
# inhouse: `model_overrides`' architecture pre-trained once here by the recipe `model_id` names, with
# the settings in `pretraining`, and cached (see `cpoly.backbones.strings`).
SOURCES = ("hub", "random", "package", "inhouse")
INHOUSE_RECIPES = ("strings",)
DTYPES = ("auto", "float32", "bfloat16", "float16", "float64")  # float64: exactness checks on a CPU
POOLINGS = ("cls", "mean")
# A tokenizer that needs no files: bytes plus T5's specials, 384 ids (pad 0, eos 1, unk 2).
BYT5_TOKENIZER = "byt5"


@dataclass
class BackboneConfig:
    """How to obtain a backbone (model + tokenizer) and the sequence/generation settings that go with it."""

    name: str  # equals the config file name (conf/backbone/<name>.yaml)
    kind: str  # seq2seq | causal | encoder
    source: str  # hub | random | package
    # hub: HF id or local directory; package: the pip distribution name; random: optional HF id or
    # directory whose config is the starting architecture (else `model_overrides.model_type`).
    model_id: str | None = None
    revision: str | None = None  # hub: a branch, tag or commit, for reproducible downloads
    # source=package: a folder holding the package's checkpoint (config.json, weights, tokenizer), used
    # when the package is not installed (the GPU bundle's minilm/, benchmarks/gpu_bundle.py).
    package_dir: str | None = None
    tokenizer_id: str | None = None  # None: the model's own; "byt5": ByT5Tokenizer() (no files)
    # auto: bfloat16 on a device that supports it, float32 otherwise (CPU)
    dtype: str = "auto"
    # Linear layers that get skills: module-name suffixes (a name equals one or ends with "." + one,
    # PEFT's rule) or one regex string matched against the full module name.
    target_modules: Any = field(default_factory=lambda: ["q", "v"])
    max_source_length: int = 64  # prompt tokens (causal: the prompt part of prompt + target)
    max_target_length: int = 32  # target tokens
    num_beams: int = 1
    max_new_tokens: int = 32
    # Applied by the training code after skills are added (cpoly.enable_gradient_checkpointing).
    gradient_checkpointing: bool = False
    attn_implementation: str | None = None  # None: the transformers default (sdpa where supported)
    # Config overrides passed to the model config (e.g. the tiny T5's sizes, dropout_rate). For
    # source=random, `model_type` picks the architecture when there is no `model_id`.
    model_overrides: dict[str, Any] = field(default_factory=dict)
    init_seed: int = 0  # seeds random initialisation (source=random, encoder heads)
    pooling: str = "cls"  # encoder: "cls" (first token) or "mean" (masked mean, sentence-transformers)
    head_dropout: float = 0.0  # encoder: dropout on the pooled representation before the task heads
    # null keeps the model's own dropout; a number sets every dropout of the backbone (nn.Dropout modules,
    # attention-dropout attributes and the config's *dropout* values) to it. 0 makes training-mode
    # forwards deterministic (apart from routing noise).
    dropout: float | None = None
    # source=inhouse: the recipe's settings (e.g. steps); unset keys take the recipe's defaults.
    pretraining: dict[str, Any] = field(default_factory=dict)

    # -- validation -------------------------------------------------------------------------------
    def _fail(self, field_name: str, value: Any, why: str) -> None:
        raise BackboneConfigError(f"backbone.{field_name}={value!r} (backbone {self.name!r}): {why}")

    def validate(self) -> BackboneConfig:
        """Check every field; returns self so calls chain. Loads nothing."""
        if not isinstance(self.name, str) or not self.name:
            self._fail("name", self.name, "must be a non-empty string (the config file name)")
        self._check_choice("kind", KINDS)
        self._check_choice("source", SOURCES)
        self._check_choice("dtype", DTYPES)
        self._check_choice("pooling", POOLINGS)
        self._check_model_id()
        self._check_target_modules()
        for name in ("max_source_length", "max_target_length", "num_beams", "max_new_tokens"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                self._fail(name, value, "must be an integer >= 1")
        if isinstance(self.init_seed, bool) or not isinstance(self.init_seed, int):
            self._fail("init_seed", self.init_seed, "must be an integer")
        if not isinstance(self.gradient_checkpointing, bool):
            self._fail("gradient_checkpointing", self.gradient_checkpointing, "must be true or false")
        if not isinstance(self.head_dropout, (int, float)) or not 0.0 <= self.head_dropout < 1.0:
            self._fail("head_dropout", self.head_dropout, "must lie in [0, 1)")
        if self.dropout is not None and (
            isinstance(self.dropout, bool) or not isinstance(self.dropout, (int, float)) or not 0 <= self.dropout < 1
        ):
            self._fail("dropout", self.dropout, "must be null (the model's own) or lie in [0, 1)")
        if not isinstance(self.model_overrides, Mapping):
            self._fail("model_overrides", self.model_overrides, "must be a mapping of config keys to values")
        return self

    def _check_choice(self, name: str, choices: tuple[str, ...]) -> None:
        value = getattr(self, name)
        if value not in choices:
            self._fail(name, value, f"must be one of {', '.join(choices)}")

    def _check_model_id(self) -> None:
        if self.model_id is not None and (not isinstance(self.model_id, str) or not self.model_id):
            self._fail("model_id", self.model_id, "must be a non-empty string or null")
        if self.source in ("hub", "package") and self.model_id is None:
            what = "a Hugging Face id or local directory" if self.source == "hub" else "a package name"
            self._fail("model_id", self.model_id, f"source={self.source} needs {what}")
        if self.source == "random" and self.model_id is None and "model_type" not in self.model_overrides:
            self._fail(
                "model_overrides",
                dict(self.model_overrides),
                "source=random without model_id needs model_overrides.model_type (e.g. t5, llama, bert)",
            )
        if self.source not in ("random", "inhouse") and "model_type" in self.model_overrides:
            self._fail("model_overrides", dict(self.model_overrides), "model_type is only for source=random or inhouse")
        if self.pretraining and self.source != "inhouse":
            self._fail("pretraining", dict(self.pretraining), "only source=inhouse is pre-trained here")
        if self.source == "inhouse":
            self._check_inhouse()
        if self.source == "package":
            from cpoly.backbones.packages import PACKAGES  # late: keeps the schema import light

            if self.model_id not in PACKAGES:
                self._fail("model_id", self.model_id, f"unknown weights package; known: {', '.join(PACKAGES)}")

    def _check_inhouse(self) -> None:
        if self.model_id not in INHOUSE_RECIPES:
            self._fail("model_id", self.model_id, f"source=inhouse needs a recipe; known: {', '.join(INHOUSE_RECIPES)}")
        if self.kind != "seq2seq":
            self._fail("kind", self.kind, f"the {self.model_id} recipe pre-trains seq2seq models only")
        if self.tokenizer_id not in (None, BYT5_TOKENIZER):
            self._fail("tokenizer_id", self.tokenizer_id, f"the {self.model_id} recipe uses the byt5 tokenizer")
        if "model_type" not in self.model_overrides:
            self._fail("model_overrides", dict(self.model_overrides), "source=inhouse needs model_overrides.model_type")
        if not isinstance(self.pretraining, Mapping):
            self._fail("pretraining", self.pretraining, "must be a mapping of recipe settings")
        StringPretraining.from_mapping(self.pretraining, self.name)

    def _check_target_modules(self) -> None:
        value = self.target_modules
        if isinstance(value, str):
            if not value:
                self._fail("target_modules", value, "an empty regex matches nothing")
            return
        if (
            not isinstance(value, (list, tuple))
            or not value
            or not all(isinstance(name, str) and name for name in value)
        ):
            self._fail("target_modules", value, "must be a non-empty list of module-name suffixes or one regex")

    # -- construction -----------------------------------------------------------------------------
    @classmethod
    def from_any(cls, cfg: Any) -> BackboneConfig:
        """Accept a `BackboneConfig`, an OmegaConf node (e.g. `cfg.backbone`) or a plain mapping."""
        if isinstance(cfg, cls):
            return cfg
        try:
            from omegaconf import DictConfig, OmegaConf

            if isinstance(cfg, DictConfig):
                cfg = OmegaConf.to_container(cfg, resolve=True)
        except ImportError:  # omegaconf is a dependency; this only keeps the module importable alone
            pass
        if not isinstance(cfg, Mapping):
            raise BackboneConfigError(f"backbone: expected a BackboneConfig or a mapping, got {type(cfg).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(cfg) - known)
        if unknown:
            raise BackboneConfigError(f"backbone: unknown fields {unknown}; known: {sorted(known)}")
        missing = sorted(f.name for f in dataclasses.fields(cls) if f.name not in cfg and _is_required(f))
        if missing:
            raise BackboneConfigError(f"backbone: missing required fields {missing}")
        values = dict(cfg)
        values["model_overrides"] = dict(values.get("model_overrides") or {})
        values["pretraining"] = dict(values.get("pretraining") or {})
        if isinstance(values.get("target_modules"), tuple):
            values["target_modules"] = list(values["target_modules"])
        return cls(**values)

    @classmethod
    def from_yaml(cls, path: str | Path) -> BackboneConfig:
        """A conf/backbone/<name>.yaml file without Hydra: its `defaults` list is dropped and the rest
        is checked against the schema (a misspelled key fails)."""
        from omegaconf import OmegaConf

        raw = OmegaConf.load(path)
        raw.pop("defaults", None)
        return cls.from_any(OmegaConf.merge(OmegaConf.structured(cls), raw))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _is_required(f: dataclasses.Field) -> bool:
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
