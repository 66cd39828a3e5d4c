"""Compose the real config with Hydra's compose API, as `train.py` would, for a test folder."""

from __future__ import annotations

from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from cpoly.config import register_configs

REPO_ROOT = Path(__file__).resolve().parents[2]
CONF_DIR = REPO_ROOT / "conf"


def compose_train(
    overrides: list[str] = (), output_dir: Path | None = None, cache_dir: Path | None = None
) -> DictConfig:
    """`conf/train.yaml` with `overrides`; outputs under `output_dir` (no Hydra runtime needed)."""
    register_configs()
    extra = []
    if output_dir is not None:
        extra.append(f"paths.output_dir={output_dir}")
    if cache_dir is not None:
        extra.append(f"paths.cache_dir={cache_dir}")
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="train", overrides=[*overrides, *extra])


def group_options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))
