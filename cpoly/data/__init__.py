"""Benchmarks -> `BenchmarkData` (examples, routing task list, metric); tokenisation, sampling, collation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from cpoly.data.example import BenchmarkData, Example
from cpoly.data.jsonl import JsonlConfig, load_jsonl
from cpoly.data.splits import carve_dev, check_disjoint, split_counts
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
    """Load the benchmark a (structured) config describes, in three disjoint splits (train, dev, test); the
    loader is chosen by the config's schema."""
    if isinstance(cfg, DictConfig):
        cfg = OmegaConf.to_object(cfg)
    loader = LOADERS.get(type(cfg))
    if loader is None:
        raise TypeError(f"no benchmark loader for {type(cfg).__name__}; known: {[c.__name__ for c in LOADERS]}")
    data = loader(cfg, Path(data_dir) if data_dir is not None else None)
    if data.dev is None:  # held out of the training examples (the test split is never touched)
        data.train, data.dev = carve_dev(data.train, cfg.n_dev_per_task, cfg.data_seed, data.name)
        data.info["dev"] = {
            "source": "held out of train",
            "n_dev_per_task": cfg.n_dev_per_task,
            "data_seed": cfg.data_seed,
        }
    check_disjoint(data.train, data.dev, data.test, data.name)
    data.info["splits"] = split_counts(data.train, data.dev, data.test)
    return data


__all__ = ["BenchmarkData", "Example", "LOADERS", "load_benchmark"]
