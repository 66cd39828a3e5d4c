"""`python train.py` (or a launcher such as torchrun) as a subprocess, offline, as researchers run it."""

from __future__ import annotations

import os
import subprocess
import sys

from helpers.compose import REPO_ROOT, with_test_backbone

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]


def train_py(
    *args: str, launcher: list[str] | None = None, cache_dir=None, timeout: int = 600
) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", WANDB_MODE="disabled", OMP_NUM_THREADS="1")
    if cache_dir is not None:
        env["CPOLY_CACHE_DIR"] = str(cache_dir)
    command = [*(launcher or [sys.executable]), str(REPO_ROOT / "train.py"), *with_test_backbone(args)]
    return subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout)
