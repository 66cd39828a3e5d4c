"""Compose the real config with Hydra's compose API, as `train.py` would, for a test folder."""

from __future__ import annotations

import copy
from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf

from cpoly.config import EXPERIMENTS_DIR, register_configs

REPO_ROOT = Path(__file__).resolve().parents[2]
CONF_DIR = REPO_ROOT / "conf"


# The tests' backbone unless a test names one: the random tiny T5 (no pretraining, loads in a second).
# The embedded default (strings_t5) loads its shipped weights, but a test that changes its recipe
# pre-trains for minutes; tests that want it say backbone=strings_t5.
TEST_BACKBONE = "backbone=tiny_t5"


def with_test_backbone(overrides) -> list[str]:
    overrides = list(overrides)
    names = ("backbone=", "experiment=", "+experiment=")
    return overrides if any(o.startswith(names) for o in overrides) else [*overrides, TEST_BACKBONE]


def compose_train(
    overrides: list[str] = (),
    output_dir: Path | None = None,
    cache_dir: Path | None = None,
    test_backbone: bool = True,
) -> DictConfig:
    """`conf/train.yaml` with `overrides` (and, with `test_backbone`, tiny_t5 unless they name a backbone);
    outputs under `output_dir` (no Hydra runtime needed)."""
    register_configs()
    overrides = with_test_backbone(overrides) if test_backbone else list(overrides)
    extra = []
    if output_dir is not None:
        extra.append(f"paths.output_dir={output_dir}")
    if cache_dir is not None:
        extra.append(f"paths.cache_dir={cache_dir}")
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="train", overrides=[*overrides, *extra])


def group_options(group: str) -> list[str]:
    folder = EXPERIMENTS_DIR if group == "experiment" else CONF_DIR / group
    return sorted(p.stem for p in folder.glob("*.yaml"))


def with_values(cfg: DictConfig, **values) -> DictConfig:
    """A copy of a composed config with values changed (`**{"optim.lr": 0.5}`), as a command-line override
    of a value would (the groups it selects stay)."""
    cfg = copy.deepcopy(cfg)
    for key, value in values.items():
        OmegaConf.update(cfg, key, value)
    return cfg
