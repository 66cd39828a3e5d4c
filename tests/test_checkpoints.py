"""Nothing lost: checkpoints on a schedule, a complete checkpoint on disk at every instant, the newest one
that loads resumed, trainer state read without running code, a full disk that leaves the previous files
intact, and the kill -9 soak (short)."""

from __future__ import annotations

import errno
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers.compose import REPO_ROOT, compose_train
from safetensors.torch import load_file

from cpoly.atomic import versioned_directory, versions
from cpoly.logging.local import read_metrics
from cpoly.run import train
from cpoly.train.checkpoint import UnsafeCheckpointError, read_trainer_state

SMOKE = ["debug=smoke", "benchmark.n_tasks=3", "benchmark.n_train_per_task=20", "benchmark.n_eval_per_task=3"]


def step_of(folder: Path) -> int:
    return read_trainer_state(folder)["step"]


def adapters(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "adapter_model.safetensors"))


# ---------------------------------------------------------------- publishing a folder


def test_a_version_is_published_whole_or_not_at_all(tmp_path):
    target = tmp_path / "last"
    for i in range(3):
        with versioned_directory(target, keep=2) as tmp:
            (tmp / "value").write_text(str(i))
    assert target.is_symlink() and (target / "value").read_text() == "2"
    assert [v.name for v in versions(target)] == [".last.v2", ".last.v3"]
    with pytest.raises(RuntimeError, match="crash while writing"):
        with versioned_directory(target, keep=2) as tmp:
            (tmp / "value").write_text("half")
            raise RuntimeError("crash while writing")
    assert (target / "value").read_text() == "2" and len(versions(target)) == 2
    assert not list(tmp_path.glob("*.tmp"))


def test_a_plain_folder_of_the_old_layout_becomes_the_first_version(tmp_path):
    target = tmp_path / "last"
    target.mkdir()
    (target / "value").write_text("old")
    with versioned_directory(target, keep=2) as tmp:
        (tmp / "value").write_text("new")
    assert (target / "value").read_text() == "new"
    assert [(v / "value").read_text() for v in versions(target)] == ["old", "new"]


# ---------------------------------------------------------------- checkpoints on a schedule


def test_save_every_writes_last_between_evaluations_and_keeps_the_newest(tmp_path):
    overrides = [*SMOKE, "trainer.max_steps=8", "trainer.eval_every=100", "trainer.save_every=3"]
    train(compose_train([*overrides, "trainer.keep_checkpoints=3"], tmp_path))
    kept = versions(tmp_path / "last")
    assert [step_of(v) for v in kept] == [3, 6, 8]  # 8: the final evaluation's
    assert step_of(tmp_path / "last") == 8


def test_save_every_minutes_writes_on_time(tmp_path):
    overrides = [*SMOKE, "trainer.max_steps=5", "trainer.eval_every=100", "trainer.save_every_minutes=1e-9"]
    train(compose_train([*overrides, "trainer.keep_checkpoints=10"], tmp_path))
    assert [step_of(v) for v in versions(tmp_path / "last")] == [1, 2, 3, 4, 5]


def test_a_corrupt_newest_checkpoint_is_skipped_by_name_and_the_previous_resumed(tmp_path, caplog):
    overrides = [*SMOKE, "trainer.max_steps=9", "trainer.eval_every=100", "trainer.save_every=3", "trainer.log_every=1"]
    reference = train(compose_train(overrides, tmp_path / "whole"))

    from cpoly.train.loop import TrainLoop

    original = TrainLoop._save_due

    def stop_after_step_6(self, step):
        due = original(self, step)
        if step == 7:
            raise KeyboardInterrupt("killed")
        return due

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(TrainLoop, "_save_due", stop_after_step_6)
        with pytest.raises(KeyboardInterrupt):
            train(compose_train(overrides, tmp_path / "split"))
    newest = (tmp_path / "split" / "last").resolve()
    assert step_of(newest) == 6
    data = (newest / "adapter_model.safetensors").read_bytes()
    (newest / "adapter_model.safetensors").write_bytes(data[: len(data) // 2])  # truncated, as by a full disk
    with caplog.at_level(logging.INFO):
        resumed = train(compose_train(overrides, tmp_path / "split"))
    assert f"skipping checkpoint {tmp_path / 'split' / 'last'}" in caplog.text
    assert "resumed from" in caplog.text and ".last.v1" in caplog.text  # step 3's version
    assert resumed["test"] == reference["test"] and resumed["dev"] == reference["dev"]
    a, b = adapters(tmp_path / "whole" / "last"), adapters(tmp_path / "split" / "last")
    assert all(torch.equal(a[k], b[k]) for k in a)


# ---------------------------------------------------------------- safe loading


class Payload:
    """Unpickling this calls os.system: what a tampered checkpoint would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_restart_after_a_kill_before_the_first_checkpoint_drops_the_killed_attempts_lines(tmp_path):
    """The soak's finding: an attempt killed before any checkpoint left its logged steps in metrics.jsonl,
    and the restart (from step 0) appended the same steps again."""
    overrides = [*SMOKE, "trainer.max_steps=3", "trainer.eval_every=100", "trainer.log_every=1"]
    reference = tmp_path / "reference"
    train(compose_train(overrides, reference))
    killed = tmp_path / "killed"
    killed.mkdir()
    stale = '{"step": 1, "time": 0.0, "train/loss": 9.0}\n{"step": 2, "time": 0.0, "train/loss": 9.0}\n{"st'
    (killed / "metrics.jsonl").write_text(stale)
    train(compose_train(overrides, killed))

    def steps(folder: Path) -> list[tuple[int, float | None]]:
        return [(r["step"], r.get("train/loss")) for r in read_metrics(folder / "metrics.jsonl")]

    assert steps(killed) == steps(reference)


def test_a_trainer_state_that_would_run_code_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "payload-ran"
    folder = tmp_path / "last"
    folder.mkdir()
    torch.save({"step": 3, "optimizer": Payload(marker)}, folder / "trainer_state.pt")
    with pytest.raises(UnsafeCheckpointError, match=r"trainer_state.pt: refused to load: it holds more than tensors"):
        read_trainer_state(folder)
    assert not marker.exists()


def test_a_real_trainer_state_reads_without_pickle_code(tmp_path):
    train(compose_train([*SMOKE, "trainer.max_steps=2"], tmp_path))
    state = read_trainer_state(tmp_path / "last")  # weights_only=True
    assert state["step"] == 2 and {"optimizer", "scheduler", "rng", "config"} <= state.keys()


# ---------------------------------------------------------------- a full disk


def test_a_full_disk_while_checkpointing_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    overrides = [*SMOKE, "trainer.max_steps=6", "trainer.eval_every=100", "trainer.save_every=2"]
    import cpoly.train.checkpoint as checkpoint

    real_save = torch.save
    calls = {"n": 0}

    def full_disk_on_the_second(obj, f, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            with open(f, "wb") as handle:
                handle.write(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(checkpoint.torch, "save", full_disk_on_the_second)
    with pytest.raises(OSError, match=rf"could not write checkpoint {tmp_path / 'last'} \(No space left on device\)"):
        train(compose_train(overrides, tmp_path))
    assert step_of(tmp_path / "last") == 2 and len(versions(tmp_path / "last")) == 1
    assert not list(tmp_path.glob(".last.*.tmp"))
    assert not (tmp_path / "results.json").exists()


def test_a_full_disk_while_writing_results_keeps_the_previous_file(tmp_path, monkeypatch):
    train(compose_train([*SMOKE, "trainer.max_steps=2"], tmp_path))
    before = (tmp_path / "results.json").read_bytes()
    import cpoly.atomic as atomic

    real_fdopen = os.fdopen

    class FullFile:
        def __init__(self, handle):
            self.handle = handle

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.handle.close()

        def write(self, data):
            self.handle.write(data[:10])
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(atomic.os, "fdopen", lambda fd, mode: FullFile(real_fdopen(fd, mode)))
    with pytest.raises(OSError, match="No space left on device"):
        atomic.atomic_write_json(tmp_path / "results.json", {"new": 1})
    assert (tmp_path / "results.json").read_bytes() == before
    assert not list(tmp_path.glob(".results.json.*"))


# ---------------------------------------------------------------- the kill -9 soak, short


@pytest.mark.slow
def test_kill_soak_short(tmp_path):
    done = subprocess.run(
        [
            sys.executable,
            str(REPO_ROOT / "scripts" / "kill_soak.py"),
            "--kills",
            "4",
            "--steps",
            "24",
            "--seed",
            "3",
            "--eval-every",
            "2",
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "kills: 4 " in done.stdout and "identical to the uninterrupted run" in done.stdout
