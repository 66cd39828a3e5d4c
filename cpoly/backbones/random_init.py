"""Randomly initialised backbones (source=random): the tiny test models and the embedded default.

The architecture is `model_overrides` (with `model_type`) on top of `model_id`'s config when given.
Initialisation is seeded in a forked RNG, so a given `init_seed` gives the same weights and the
caller's random state is left untouched.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from cpoly.backbones.config import BackboneConfig


def random_model_config(
    cfg: BackboneConfig, tokenizer: Any, config_source: str | None, *, local_files_only: bool
) -> Any:
    """The architecture: `config_source`'s config (an HF id or directory) or `model_overrides.model_type`,
    with the other overrides applied."""
    from transformers import AutoConfig

    overrides = dict(cfg.model_overrides)
    if config_source is not None:
        config = AutoConfig.from_pretrained(config_source, revision=cfg.revision, local_files_only=local_files_only)
        for key, value in overrides.items():
            setattr(config, key, value)
    else:
        model_type = overrides.pop("model_type")
        # The special ids follow the tokenizer unless the overrides say otherwise.
        for key in ("pad_token_id", "eos_token_id", "bos_token_id"):
            overrides.setdefault(key, getattr(tokenizer, key))
        if cfg.kind == "seq2seq":
            overrides.setdefault("decoder_start_token_id", tokenizer.pad_token_id)  # T5's convention
        config = AutoConfig.for_model(model_type, **overrides)
    if cfg.attn_implementation is not None:
        config._attn_implementation = cfg.attn_implementation
    return config


def random_model(auto_class: Any, config: Any, seed: int) -> nn.Module:
    """`auto_class.from_config(config)` with weights drawn from `seed` (float32, cast later)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return auto_class.from_config(config)
