"""The README's data-parallel command is one process group of two, on a machine without CUDA too, and a
launch whose processes do not form one group is refused before any work (never two duplicate jobs).

The torchrun test runs the command as the README writes it (read from README.md), with only the sizes of
a smoke run added: no `trainer.cpu`.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator
from helpers.compose import REPO_ROOT
from helpers.entrypoint import TORCHRUN, train_py

from cpoly.config import ConfigError
from cpoly.train.launch import check_process_group, launched_processes, use_cpu
from cpoly.train.ownership import LOCK_NAME

SMOKE = ["debug=smoke", "benchmark.n_tasks=4", "benchmark.n_train_per_task=40", "benchmark.n_eval_per_task=2"]


def readme_torchrun_command() -> list[str]:
    """`torchrun --nproc_per_node 2 train.py ...` as README.md's Training section writes it."""
    lines = [line.split("#")[0].strip() for line in (REPO_ROOT / "README.md").read_text().splitlines()]
    commands = [line for line in lines if re.match(r"torchrun --nproc_per_node \d+ train\.py", line)]
    assert commands, "README.md has no torchrun command"
    return shlex.split(commands[0])


@pytest.mark.slow
def test_the_readme_data_parallel_command_is_one_group_of_two_processes(tmp_path):
    command = readme_torchrun_command()
    nproc, overrides = int(command[2]), command[4:]
    assert not any(o.startswith("trainer.cpu") for o in overrides)
    launcher = [*TORCHRUN[:4], str(nproc), "--master_port", "29547"]  # python -m torch.distributed.run
    done = train_py(*overrides, *SMOKE, f"hydra.run.dir={tmp_path}", launcher=launcher, cache_dir=tmp_path / "cache")
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    batch = int(next(o for o in overrides if o.startswith("trainer.batch_size=")).split("=")[1])
    assert results["world_size"] == nproc and results["global_batch_size"] == nproc * batch
    assert done.stdout.count("results: ") == 1  # one summary: one job, not one per process


@pytest.mark.slow
def test_processes_that_are_not_one_group_are_refused_before_any_work(tmp_path):
    """`trainer.cpu=false` on a machine without CUDA: Accelerate forms no group, so each of torchrun's two
    processes would run the whole job alone; both stop with one line naming both numbers."""
    if torch.cuda.is_available():
        pytest.skip("with CUDA the processes form an NCCL group")
    launcher = [*TORCHRUN, "--master_port", "29548"]
    done = train_py(*SMOKE, "trainer.cpu=false", f"hydra.run.dir={tmp_path}", launcher=launcher)
    assert done.returncode != 0
    errors = [line for line in (done.stdout + done.stderr).splitlines() if "the launcher started" in line]
    assert len(errors) == 2, done.stderr[-3000:]  # one line from each process
    assert all("the launcher started 2 processes" in e and "formed a group of 1" in e for e in errors)
    assert {p.name for p in Path(tmp_path).iterdir()} <= {"train.log", ".hydra", LOCK_NAME}  # nothing trained
    assert "Traceback" not in done.stdout


def test_check_process_group_compares_the_launchers_count_with_the_group():
    alone = Accelerator(cpu=True)
    check_process_group(alone, {})  # no launcher: one process
    check_process_group(alone, {"WORLD_SIZE": "1", "RANK": "0"})
    with pytest.raises(ConfigError, match=r"started 2 processes \(WORLD_SIZE=2, RANK=1, LOCAL_RANK=1\).*group of 1"):
        check_process_group(alone, {"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1"})
    with pytest.raises(ConfigError, match="OMPI_COMM_WORLD_SIZE=4"):
        check_process_group(alone, {"OMPI_COMM_WORLD_SIZE": "4"})
    with pytest.raises(ConfigError, match="WORLD_SIZE='two'"):
        launched_processes({"WORLD_SIZE": "two"})


def test_cpu_processes_where_no_cuda_device_exists():
    several = {"WORLD_SIZE": "2"}
    assert use_cpu(True, {}) and not use_cpu(False, several)
    assert use_cpu(None, several) == (not torch.cuda.is_available())
    assert not use_cpu(None, {})  # one process: Accelerate's own choice of device
