"""The entrypoint as researchers run it: `python train.py` subprocesses, Hydra multiruns, a failing
job among others and a misspelled override (the 2-process run is in test_batch_splits.py)."""

from __future__ import annotations

import json
import subprocess
import sys

from helpers.compose import REPO_ROOT
from helpers.entrypoint import train_py

SMALL = ["debug=smoke", "benchmark.n_tasks=3", "benchmark.n_train_per_task=24", "benchmark.n_eval_per_task=4"]


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
