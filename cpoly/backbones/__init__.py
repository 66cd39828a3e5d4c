"""Backbones: load a model and its tokenizer by kind (seq2seq | causal | encoder), offline-aware.

See docs/backbones.md for the available backbones and how to add one.
"""

from cpoly.backbones.config import BackboneConfig, BackboneConfigError
from cpoly.backbones.heads import TaskHeadClassifier
from cpoly.backbones.hub import BackboneUnavailableError
from cpoly.backbones.loading import Backbone, load_backbone, resolve_dtype
from cpoly.skills.targets import target_linear_names, unmatched_targets

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
