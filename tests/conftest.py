"""Shared test setup: offline, W&B disabled, tiny random models of each architecture class."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path | None:
    """The offline benchmark data: $CPOLY_DATA_DIR, else ../shared/data beside the repository."""
    candidates = [os.environ.get("CPOLY_DATA_DIR"), REPO_ROOT.parent / "shared" / "data"]
    for c in candidates:
        if c and Path(c).is_dir():
            return Path(c)
    return None


@pytest.fixture(scope="session")
def data_dir() -> Path:
    path = shared_data_dir()
    if path is None:
        pytest.skip("no offline benchmark data (set CPOLY_DATA_DIR or put shared/data beside the repo)")
    return path


def pytest_collection_modifyitems(config, items):
    """gpu-marked tests need CUDA; on a CPU machine they are skipped, not failed."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


# Tiny models: one intra-op thread is faster than two fighting over a shared machine.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _deterministic() -> None:
    torch.manual_seed(0)


# The composed train config, as lightning-hydra-template's `cfg_train_global`: Hydra composes the default at
# smoke sizes with the tests' backbone once per session; each test gets its own copy (`cfg_train`) with its
# own output folder, and changes values on it (`cfg.trainer.max_steps = 6`), not the groups it selects.
SMOKE_SIZES = ["debug=smoke", "benchmark.n_tasks=4", "benchmark.n_train_per_task=40", "benchmark.n_eval_per_task=6"]


@pytest.fixture(scope="session")
def cfg_train_global(tmp_path_factory):
    from helpers.compose import compose_train

    return compose_train(SMOKE_SIZES, cache_dir=tmp_path_factory.mktemp("cache"))


@pytest.fixture
def cfg_train(cfg_train_global, tmp_path):
    import copy

    cfg = copy.deepcopy(cfg_train_global)
    cfg.paths.output_dir = str(tmp_path)
    return cfg
