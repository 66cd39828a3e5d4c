"""The entrypoint as researchers run it: `python train.py` subprocesses, Hydra multiruns, a failing
job among others and a misspelled override (the 2-process run is in test_batch_splits.py)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from helpers.compose import REPO_ROOT
from helpers.entrypoint import train_py

SMALL = ["debug=smoke", "benchmark.n_tasks=3", "benchmark.n_train_per_task=24", "benchmark.n_eval_per_task=4"]


@pytest.mark.slow
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
    rows = report.stdout.strip().splitlines()  # the header and one row per run
    assert len(rows) == 5 and sum(r.startswith("synthetic-tiny_t5-cpoly-a3b1r2,") for r in rows) == 2


@pytest.mark.slow
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


SUBMITIT_SMALL = [*SMALL, "trainer.cpu_threads=1"]


@pytest.mark.slow
def test_submitit_local_runs_jobs_as_processes_and_a_failing_job_leaves_the_others(tmp_path):
    """Hydra's submitit launcher (the real plugin): every job of a multirun is its own local process."""
    sweep = tmp_path / "sweep"
    done = train_py(
        "-m", "hydra/launcher=submitit_local", "method=shared_lora,cpoly", "seed=1,2", *SUBMITIT_SMALL,
        f"hydra.sweep.dir={sweep}", cache_dir=tmp_path / "cache",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Submitit 'local' sweep output dir" in done.stderr + done.stdout
    assert len(list(sweep.glob("*/results.json"))) == 4
    assert list((sweep / ".submitit").iterdir())  # submitit's own job folders

    failing = tmp_path / "failing"
    done = train_py(
        "-m", "hydra/launcher=submitit_local", "method=mhr", "method.n_splits=2,3,4", *SUBMITIT_SMALL,
        f"hydra.sweep.dir={failing}", cache_dir=tmp_path / "cache",
    )  # fmt: skip
    assert done.returncode != 0 and "method.n_splits=3" in done.stderr
    finished = sorted(p.parent.name for p in failing.glob("*/results.json"))
    assert finished == ["0-synthetic-tiny_t5-mhr-k4s2r2-s1", "2-synthetic-tiny_t5-mhr-k4s4r2-s1"]


def test_slurm_launcher_takes_its_resources_from_config():
    done = train_py(
        "--cfg", "hydra", "hydra/launcher=slurm", "hydra.launcher.partition=gpu", "hydra.launcher.mem_gb=32"
    )
    assert done.returncode == 0, done.stderr[-2000:]
    launcher = done.stdout.split("  launcher:")[1]
    assert "SlurmLauncher" in launcher and "partition: gpu" in launcher and "mem_gb: 32" in launcher
    for key in ("timeout_min", "gpus_per_node", "cpus_per_task", "array_parallelism"):
        assert f"{key}:" in launcher


@pytest.mark.slow
def test_optuna_search_runs_three_trials_and_reports_the_best(tmp_path):
    """hparams_search=cpoly_optuna through Hydra's Optuna sweeper (the real plugin), at smoke size."""
    sweep = tmp_path / "search"
    done = train_py(
        "hparams_search=cpoly_optuna", "hydra.sweeper.n_trials=3", "hydra.sweeper.sampler.n_startup_trials=3",
        *SMALL, f"hydra.sweep.dir={sweep}", cache_dir=tmp_path / "cache",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    runs = [json.loads(p.read_text()) for p in sorted(sweep.glob("*/results.json"))]
    assert len(runs) == 3
    best = (sweep / "optimization_results.yaml").read_text()
    assert "best_params" in best and "optim.lr" in best and "method.rank" in best
    lrs = {
        (p.parent / "config_resolved.yaml").read_text().split("\n  lr: ")[1].split("\n")[0]
        for p in sweep.glob("*/results.json")
    }
    assert len(lrs) == 3  # the sampler drew a different lr for each trial


@pytest.mark.slow
def test_sigterm_checkpoints_exits_and_the_same_command_ends_as_an_uninterrupted_run(tmp_path):
    """Preemption as SLURM does it: a SIGTERM to a running job. The run finishes its step, writes last/ with
    the trainer state and exits with its own status; the same command then continues from there, and the
    result equals an uninterrupted run's (scores, metrics log, adapter bytes)."""
    import os
    import signal
    import time

    from helpers.compose import with_test_backbone

    from cpoly.train.preemption import PREEMPTED_EXIT_CODE

    args = [*SMALL, "trainer.max_steps=300", "trainer.eval_every=300", "trainer.log_every=7", "trainer.cpu_threads=1"]
    whole = train_py(*args, f"hydra.run.dir={tmp_path / 'whole'}", cache_dir=tmp_path / "cache")
    assert whole.returncode == 0, whole.stderr[-3000:]

    out = tmp_path / "split"
    env = dict(os.environ, HF_HUB_OFFLINE="1", WANDB_MODE="disabled", OMP_NUM_THREADS="1")
    env["CPOLY_CACHE_DIR"] = str(tmp_path / "cache")
    command = [sys.executable, str(REPO_ROOT / "train.py"), *with_test_backbone([*args, f"hydra.run.dir={out}"])]
    job = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = out / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (metrics.is_file() and len(metrics.read_text().splitlines()) >= 3):
        time.sleep(0.05)
    job.send_signal(signal.SIGTERM)
    stdout, stderr = job.communicate(timeout=120)
    assert job.returncode == PREEMPTED_EXIT_CODE, stderr[-3000:]
    assert "preempted at step" in stdout + stderr and not (out / "results.json").exists()
    from cpoly.train.checkpoint import read_trainer_state

    stopped = read_trainer_state(out / "last")["step"]
    assert 21 <= stopped < 300

    again = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"resumed from {out / 'last'} at step {stopped}" in again.stdout + again.stderr
    a, b = (json.loads((d / "results.json").read_text()) for d in (tmp_path / "whole", out))
    assert a["test"] == b["test"] and a["dev"] == b["dev"]
    strip = lambda path: [
        {k: v for k, v in json.loads(line).items() if k != "time"} for line in path.read_text().splitlines()
    ]  # noqa: E731,E501
    assert strip(out / "metrics.jsonl") == strip(tmp_path / "whole" / "metrics.jsonl")
    for name in ("adapter_model.safetensors",):
        assert (out / "last" / name).read_bytes() == (tmp_path / "whole" / "last" / name).read_bytes()


@pytest.mark.slow
def test_submitit_requeues_a_job_at_its_preemption_signal_and_the_job_resumes(tmp_path):
    """submitit's own preemption path, for real: the job process gets submitit's signal (USR2, what SLURM
    sends before a time limit or preemption, and what submitit_local sends before `timeout_min`); the run
    writes last/ after its step, then submitit's handler requeues the job, which resumes and finishes."""
    import os
    import signal
    import time

    import psutil
    from helpers.compose import with_test_backbone

    sweep = tmp_path / "sweep"
    args = [*SMALL, "trainer.max_steps=400", "trainer.eval_every=400", "trainer.log_every=5", "trainer.cpu_threads=1"]
    env = dict(os.environ, HF_HUB_OFFLINE="1", WANDB_MODE="disabled", OMP_NUM_THREADS="1")
    env["CPOLY_CACHE_DIR"] = str(tmp_path / "cache")
    command = [sys.executable, str(REPO_ROOT / "train.py"), "-m", "hydra/launcher=submitit_local"]
    command += with_test_backbone([*args, f"hydra.sweep.dir={sweep}"])
    sweeper = subprocess.Popen(
        command, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.time() + 180
    while time.time() < deadline and not any(
        len(m.read_text().splitlines()) >= 3 for m in sweep.glob("*/metrics.jsonl")
    ):
        time.sleep(0.05)
    jobs = [p for p in psutil.Process(sweeper.pid).children(recursive=True) if "submitit.core._submit" in p.cmdline()]
    (job,) = [p for p in jobs if p.parent() not in jobs]  # the job, not its DataLoader worker
    job.send_signal(signal.SIGUSR2)
    stdout, stderr = sweeper.communicate(timeout=600)
    logs = "".join(p.read_text(errors="replace") for p in sorted((sweep / ".submitit").rglob("*_log.*")))
    assert sweeper.returncode == 0, stderr[-3000:] + logs[-3000:]
    assert "preempted at step" in logs and "Requeued job" in logs and "resumed from" in logs, logs[-3000:]
    (result,) = [json.loads(p.read_text()) for p in sweep.glob("*/results.json")]
    assert result["steps"] == 400
