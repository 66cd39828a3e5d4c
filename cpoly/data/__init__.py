"""Benchmarks -> `BenchmarkData` (examples, routing task list, metric); tokenisation, sampling, collation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from cpoly.data.example import BenchmarkData, Example
from cpoly.data.jsonl import JsonlConfig, load_jsonl
from cpoly.data.superglue import SuperGLUEConfig, load_superglue
from cpoly.data.superni import SuperNIConfig, load_superni
from cpoly.data.synthetic import SyntheticConfig, load_synthetic

LOADERS = {
    SyntheticConfig: load_synthetic,
    SuperNIConfig: load_superni,
    SuperGLUEConfig: load_superglue,
    JsonlConfig: load_jsonl,
}


def load_benchmark(cfg: Any, data_dir: str | Path | None) -> BenchmarkData:
    """Load the benchmark a (structured) config describes; the loader is chosen by the config's schema."""
    if isinstance(cfg, DictConfig):
        cfg = OmegaConf.to_object(cfg)
    loader = LOADERS.get(type(cfg))
    if loader is None:
        raise TypeError(f"no benchmark loader for {type(cfg).__name__}; known: {[c.__name__ for c in LOADERS]}")
    return loader(cfg, Path(data_dir) if data_dir is not None else None)


__all__ = ["BenchmarkData", "Example", "LOADERS", "load_benchmark"]
