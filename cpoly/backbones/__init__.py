"""Backbones: load a model and its tokenizer by kind (seq2seq | causal | encoder), offline-aware.

See docs/backbones.md for the available backbones and how to add one. The names below are imported on first
use (cpoly/lazy.py): the config system reads `cpoly.backbones.config` without loading torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from cpoly.lazy import lazy_exports

if TYPE_CHECKING:
    from cpoly.backbones.config import BackboneConfig, BackboneConfigError
    from cpoly.backbones.heads import TaskHeadClassifier
    from cpoly.backbones.hub import BackboneUnavailableError
    from cpoly.backbones.loading import Backbone, load_backbone, resolve_dtype
    from cpoly.skills.targets import target_linear_names, unmatched_targets

_EXPORTS = {
    **dict.fromkeys(["BackboneConfig", "BackboneConfigError"], "cpoly.backbones.config"),
    "TaskHeadClassifier": "cpoly.backbones.heads",
    "BackboneUnavailableError": "cpoly.backbones.hub",
    **dict.fromkeys(["Backbone", "load_backbone", "resolve_dtype"], "cpoly.backbones.loading"),
    **dict.fromkeys(["target_linear_names", "unmatched_targets"], "cpoly.skills.targets"),
}
__all__ = [
    "Backbone",
    "BackboneConfig",
    "BackboneConfigError",
    "BackboneUnavailableError",
    "TaskHeadClassifier",
    "load_backbone",
    "resolve_dtype",
    "target_linear_names",
    "unmatched_targets",
]
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
