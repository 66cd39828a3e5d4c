"""The entrypoint as researchers run it: `python train.py` subprocesses, Hydra multiruns, a failing
job among others, a misspelled override, and a real 2-process data-parallel run."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from helpers.compose import REPO_ROOT
from safetensors.torch import load_file

SMALL = ["debug=smoke", "benchmark.n_tasks=3", "benchmark.n_train_per_task=24", "benchmark.n_eval_per_task=4"]


def train_py(
    *args: str, launcher: list[str] | None = None, cache_dir=None, timeout: int = 600
) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", WANDB_MODE="disabled", OMP_NUM_THREADS="1")
    if cache_dir is not None:
        env["CPOLY_CACHE_DIR"] = str(cache_dir)
    command = [*(launcher or [sys.executable]), str(REPO_ROOT / "train.py"), *args]
    return subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def test_multirun_gives_every_job_its_own_folder_and_the_report_reads_them(tmp_path):
    sweep = tmp_path / "sweep"
    done = train_py(
        "-m", "method=shared_lora,cpoly", "seed=1,2", *SMALL, f"hydra.sweep.dir={sweep}", cache_dir=tmp_path / "cache"
    )
    assert done.returncode == 0, done.stderr[-3000:]
    folders = sorted(p for p in sweep.iterdir() if p.is_dir())
    assert [p.name for p in folders] == [
        "0-synthetic-tiny_t5-shared_lora-r8-s1",
        "1-synthetic-tiny_t5-shared_lora-r8-s2",
        "2-synthetic-tiny_t5-cpoly-a3b1r2-s1",
        "3-synthetic-tiny_t5-cpoly-a3b1r2-s2",
    ]
    for folder in folders:
        results = json.loads((folder / "results.json").read_text())
        assert results["status"] == "finished" and folder.name.endswith(results["run_name"])
    report = subprocess.run(
        [sys.executable, "-m", "cpoly.report", str(sweep), "--format", "csv"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
    )
    assert report.returncode == 0, report.stderr
    rows = report.stdout.strip().splitlines()
    assert len(rows) == 3 and any("synthetic-tiny_t5-cpoly-a3b1r2" in r for r in rows)


def test_a_failing_job_is_reported_and_the_others_finish(tmp_path):
    sweep = tmp_path / "sweep"
    # n_splits=3 cannot split tiny_t5's 128-wide layers: the middle job fails its checks
    done = train_py(
        "-m", "method=mhr", "method.n_splits=2,3,4", *SMALL, f"hydra.sweep.dir={sweep}", cache_dir=tmp_path / "cache"
    )
    assert done.returncode != 0
    assert "method.n_splits=3" in done.stderr
    finished = sorted(p.parent.name for p in sweep.glob("*/results.json"))
    assert finished == ["0-synthetic-tiny_t5-mhr-k4s2r2-s1", "2-synthetic-tiny_t5-mhr-k4s4r2-s1"]
    assert (
        "run synthetic-tiny_t5-mhr-k4s3r2-s1 failed"
        in (sweep / "1-synthetic-tiny_t5-mhr-k4s3r2-s1" / "train.log").read_text()
    )


def test_a_misspelled_override_fails_at_once_with_hydras_message(tmp_path):
    done = train_py("method.n_skils=3", f"hydra.run.dir={tmp_path}")
    assert done.returncode != 0
    assert "n_skils" in done.stderr and "method" in done.stderr
    assert not (tmp_path / "results.json").exists()


@pytest.mark.slow
def test_two_process_data_parallel_run_matches_one_process_with_the_same_global_batch(tmp_path):
    """torchrun starts 2 gloo processes that Accelerate picks up; each trains on 4 of the 8 examples
    of every global batch. Tolerance: fp32 rounding of the all-reduce (1e-5 on adapter tensors)."""
    common = [
        *SMALL,
        "method=task_lora",
        "trainer.max_steps=6",
        "trainer.eval_every=6",
        "trainer.log_every=1",
        "trainer.cpu=true",
    ]
    one = train_py(*common, "trainer.batch_size=8", f"hydra.run.dir={tmp_path / 'one'}", cache_dir=tmp_path / "cache")
    assert one.returncode == 0, one.stderr[-3000:]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533"]
    two = train_py(
        *common,
        "trainer.batch_size=4",
        f"hydra.run.dir={tmp_path / 'two'}",
        launcher=torchrun,
        cache_dir=tmp_path / "cache",
    )
    assert two.returncode == 0, two.stderr[-3000:]
    results = [json.loads((tmp_path / d / "results.json").read_text()) for d in ("one", "two")]
    assert [r["world_size"] for r in results] == [1, 2]
    assert results[0]["final"] == results[1]["final"]
    losses = [
        [
            json.loads(line)["train/loss"]
            for line in (tmp_path / d / "metrics.jsonl").read_text().splitlines()
            if "train/loss" in line
        ]
        for d in ("one", "two")
    ]
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)
    a, b = (load_file(str(tmp_path / d / "last" / "adapter_model.safetensors")) for d in ("one", "two"))
    assert a.keys() == b.keys()
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-5
