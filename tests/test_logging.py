"""Local run records, the W&B logger (offline, disabled, failing) and the allocation heatmap."""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import wandb
from helpers.compose import compose_train
from helpers.tiny_models import TASKS, tiny_t5
from omegaconf import OmegaConf
from PIL import Image

import cpoly.atomic
from cpoly import SkillConfig, add_skills, allocation_matrix
from cpoly.logging import (
    MetricsLog,
    WandbLogger,
    WandbSettings,
    allocation_entropy,
    allocation_rows,
    plot_allocation,
    read_metrics,
    read_results,
    write_results,
)
from cpoly.logging.dendrogram import plot_dendrograms
from cpoly.logging.wandb_logger import dashboard_config, run_config
from cpoly.skills.model import Allocation
from cpoly.train.reporting import RunReporter

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def make_allocation(n_tasks: int, n_splits: int = 1, n_skills: int = 3, n_task_skills: int = 1) -> Allocation:
    names = [f"task_{i:03d}" for i in range(n_tasks)]
    layers = {f"layer{i}": torch.softmax(torch.randn(n_tasks, n_splits, n_skills), -1) for i in range(2)}
    mean = torch.stack(list(layers.values())).mean(0)
    weights = None
    if n_task_skills:
        weights = torch.repeat_interleave(torch.eye(n_tasks), n_task_skills, dim=1) / n_task_skills
    return Allocation(names, layers, mean, weights)


def wait_for_records(path: Path, keys: list[str], timeout: float = 30.0) -> bytes:
    """The bytes of a W&B offline run file once it holds every key: W&B's core process may still be
    writing it for a moment after `finish()` returns."""
    deadline = time.monotonic() + timeout
    while True:
        data = path.read_bytes() if path.exists() else b""
        if all(k.encode() in data for k in keys) or time.monotonic() > deadline:
            return data
        time.sleep(0.05)


def without_time(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "time"} for r in records]


# ---------------------------------------------------------------- metrics.jsonl and results.json


def test_metrics_log_appends_one_line_per_step(tmp_path: Path) -> None:
    path = tmp_path / "run" / "metrics.jsonl"
    metrics = MetricsLog(path)
    metrics.log({"train/loss": torch.tensor(2.5), "train/lr_adapters": 1e-3}, step=10)
    metrics.log({"dev/task_a/exact_match": 50.0, "dev/avg/exact_match": 50.0, "alloc/entropy": 0.9}, step=20)
    lines = path.read_text().splitlines()
    assert len(lines) == 2
    records = read_metrics(path)
    assert records == metrics.read()
    assert [r["step"] for r in records] == [10, 20]
    assert list(records[0])[:2] == ["step", "time"]
    assert records[0]["train/loss"] == 2.5 and isinstance(records[0]["time"], float)
    assert records[1]["dev/avg/exact_match"] == 50.0


def test_non_finite_values_stay_valid_json(tmp_path: Path) -> None:
    metrics = MetricsLog(tmp_path / "metrics.jsonl")
    metrics.log({"train/loss": float("nan")}, step=1)
    json.loads((tmp_path / "metrics.jsonl").read_text(), parse_constant=pytest.fail)
    assert metrics.read()[0]["train/loss"] is None


def test_truncate_after_makes_a_resumed_log_equal_an_uninterrupted_one(tmp_path: Path) -> None:
    def values(step: int) -> dict:
        return {"train/loss": 1.0 / step, "train/lr_router": 0.1}

    uninterrupted = MetricsLog(tmp_path / "a.jsonl")
    for step in range(10, 70, 10):
        uninterrupted.log(values(step), step)

    resumed = MetricsLog(tmp_path / "b.jsonl")
    for step in range(10, 60, 10):  # preempted after step 50, last checkpoint at step 30
        resumed.log(values(step), step)
    with resumed.path.open("a") as f:
        f.write('{"step": 60, "train/lo')  # a line torn by the crash
    assert resumed.truncate_after(30) == 3
    assert [r["step"] for r in resumed.read()] == [10, 20, 30]
    for step in range(40, 70, 10):
        resumed.log(values(step), step)
    assert without_time(resumed.read()) == without_time(uninterrupted.read())
    assert resumed.truncate_after(100) == 0
    assert MetricsLog(tmp_path / "missing.jsonl").truncate_after(5) == 0


def test_read_metrics_skips_a_torn_line(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "train/loss": 1.0}\n{"step": 2, "tra')
    with caplog.at_level(logging.WARNING):
        assert read_metrics(path) == [{"step": 1, "train/loss": 1.0}]
    assert "metrics.jsonl:2" in caplog.text
    assert read_metrics(tmp_path / "missing.jsonl") == []


def test_write_results_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "results.json"
    first = {"run_name": "r-s1", "final": {"avg": {"exact_match": 10.0}}, "nan": float("nan")}
    write_results(path, first)
    assert read_results(path) == {**first, "nan": None}

    def crash(fd: int) -> None:
        raise OSError("disk gone mid-write")

    monkeypatch.setattr(cpoly.atomic.os, "fsync", crash)
    with pytest.raises(OSError, match="mid-write"):
        write_results(path, {"run_name": "r-s1", "final": {"avg": {"exact_match": 99.0}}})
    assert read_results(path)["final"]["avg"]["exact_match"] == 10.0
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]  # no temporary file left behind


# ---------------------------------------------------------------- W&B


def test_settings_from_a_config_mapping_and_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    s = WandbSettings.from_any({"name": "wandb", "project": "p", "mode": "online", "tags": ["a", 1], "entity": None})
    assert (s.project, s.mode, s.tags, s.entity) == ("p", "online", ["a", "1"], None)
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert s.resolved_mode() == "offline"
    monkeypatch.setenv("WANDB_MODE", "dryrun")
    assert s.resolved_mode() == "offline"
    monkeypatch.setenv("WANDB_MODE", "sometimes")
    with pytest.raises(ValueError, match="sometimes"):
        s.resolved_mode()


def test_disabled_logger_writes_nothing_and_keeps_the_resume_id(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "disabled")  # the environment wins over the config's mode
    monkeypatch.setattr(wandb, "init", lambda *a, **k: pytest.fail("wandb.init called while disabled"))
    logger = WandbLogger({"mode": "online", "dir": str(tmp_path)}, "run-s1", {"seed": 1}, run_id="abc123")
    assert not logger.active and logger.mode == "disabled" and logger.run_id == "abc123"
    logger.log({"train/loss": 1.0}, step=1)
    logger.log_allocation(make_allocation(3), step=1, image_path=None)
    logger.log_table("dev/scores", ["task", "value"], [["a", 1.0]])
    logger.summary({"params/trainable": 10})
    logger.finish()
    assert list(tmp_path.iterdir()) == []


def test_other_ranks_never_start_wandb(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setattr(wandb, "init", lambda *a, **k: pytest.fail("wandb.init called on a non-main rank"))
    logger = WandbLogger({"dir": str(tmp_path)}, "run-s1", {}, enabled=False)
    logger.log({"train/loss": 1.0}, step=1)
    logger.finish()
    assert not logger.active


def test_offline_run_folder_holds_the_logged_keys_and_resumes_the_same_run(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    settings = {
        "project": "cpoly",
        "mode": "online",
        "group": "synthetic-tiny_t5-cpoly",
        "job_type": "train",
        "tags": ["test"],
        "dir": str(tmp_path / "out"),
    }
    config = {"seed": 1, "method": {"name": "cpoly", "n_skills": 3}}
    logger = WandbLogger(settings, "synthetic-tiny_t5-cpoly-s1", config)
    try:
        assert logger.active and logger.mode == "offline"
        logger.log({"train/loss": torch.tensor(0.5), "train/lr_adapters": 1e-3}, step=10)
        logger.log({"dev/task_a/exact_match": 40.0, "dev/avg/exact_match": 40.0}, step=10)
        logger.log_allocation(make_allocation(3), step=10, image_path=None)
        tree = plot_dendrograms([("cpoly", ["a", "b", "c"], [[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])], tmp_path / "t.png")
        logger.log_image("alloc/dendrogram", tree, step=10)
        logger.log_table("dev/scores", ["task", "metric", "value"], [["task_a", "exact_match", 40.0]])
        logger.summary({"params/trainable": 1234, "final/avg/exact_match": 40.0})
    finally:
        logger.finish()
    logger.finish()  # idempotent
    run_id = logger.run_id
    folders = sorted((tmp_path / "out" / "wandb").glob(f"offline-run-*-{run_id}"))
    assert len(folders) == 1 and logger.run_dir is None
    keys = [
        "train/loss",
        "train/step",
        "dev/avg/exact_match",
        "alloc/heatmap",
        "alloc/matrix",
        "alloc/dendrogram",
        "params/trainable",
    ]
    records = wait_for_records(folders[0] / f"run-{run_id}.wandb", keys + ["synthetic-tiny_t5-cpoly"])
    for key in keys:
        assert key.encode() in records, key
    assert list((folders[0] / "files" / "media" / "images").rglob("*.png"))

    resumed = WandbLogger(settings, "synthetic-tiny_t5-cpoly-s1", config, run_id=run_id)
    try:
        assert resumed.active and resumed.run_id == run_id
        resumed.log({"train/loss": 0.25}, step=20)
    finally:
        resumed.finish()
    assert len(list((tmp_path / "out" / "wandb").glob(f"offline-run-*-{run_id}*"))) == 2


def test_init_failure_leaves_a_disabled_logger(tmp_path: Path, monkeypatch, caplog) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")

    def broken_init(*args, **kwargs):
        raise RuntimeError("W&B is down")

    monkeypatch.setattr(wandb, "init", broken_init)
    with caplog.at_level(logging.WARNING):
        logger = WandbLogger({"dir": str(tmp_path)}, "run-s1", {"seed": 1}, run_id="keepme")
    assert not logger.active and logger.run_id == "keepme"
    assert "W&B is down" in caplog.text
    logger.log({"train/loss": 1.0}, step=1)
    logger.log_allocation(make_allocation(3), step=1, image_path=None)
    logger.summary({"params/trainable": 1})
    logger.finish(exit_code=1)
    logger.finish()


class FlakyRun:
    """A W&B run whose `log` fails, as during a network outage."""

    id = "flaky01"
    dir = "/nonexistent/files"

    def __init__(self) -> None:
        self.finished: list[int] = []
        self.log_calls = 0
        self.summary = {}

    def define_metric(self, *args, **kwargs) -> None:
        pass

    def log(self, data, **kwargs) -> None:
        self.log_calls += 1
        raise ConnectionError("outage")

    def finish(self, exit_code: int = 0) -> None:
        self.finished.append(exit_code)


def test_a_failing_call_disables_the_logger_once(tmp_path: Path, monkeypatch, caplog) -> None:
    monkeypatch.setenv("WANDB_MODE", "online")
    run = FlakyRun()
    monkeypatch.setattr(wandb, "init", lambda *a, **k: run)
    logger = WandbLogger({"dir": str(tmp_path)}, "run-s1", {})
    assert logger.active and logger.run_id == "flaky01"
    with caplog.at_level(logging.WARNING):
        logger.log({"train/loss": 1.0}, step=1)
        logger.log({"train/loss": 0.5}, step=2)
    assert not logger.active and run.log_calls == 1
    assert caplog.text.count("outage") == 1
    assert run.finished == [1]
    logger.summary({"params/trainable": 3})
    logger.finish()
    assert run.finished == [1] and logger.run_id == "flaky01"


# ---------------------------------------------------------------- W&B: what a run receives

# A resolved run config as `train.py` hands it over (the sections the dashboard keys come from, plus
# one that keeps its place): Poly sized by parameter matching, so `n_skills` is null until run time.
RESOLVED_CONFIG = {
    "task_name": "sample_efficiency",
    "seed": 2,
    "method": {"name": "poly_matched", "method": "poly", "rank": 2, "n_skills": None, "n_task_skills": 0},
    "backbone": {"name": "tiny_t5", "kind": "seq2seq"},
    "benchmark": {"name": "synthetic", "n_train_per_task": 32, "n_tasks": 2},
    "trainer": {"max_steps": 30, "batch_size": 8},
}
DASHBOARD = {
    "method": "poly_matched",
    "method_kind": "poly",
    "backbone": "tiny_t5",
    "benchmark": "synthetic",
    "n_skills": 5,  # from the skills the run uses, not the config's null
    "n_task_skills": 0,
    "n_splits": 1,  # a method default: absent from the config's method section
    "rank": 2,
    "examples_per_task": 32,
    "seed": 2,
}


def used_skills() -> SkillConfig:
    return SkillConfig(method="poly", rank=2, n_skills=5, n_task_skills=0, n_splits=1, task_names=["task_a", "task_b"])


def test_dashboard_config_takes_the_counts_actually_used() -> None:
    assert dashboard_config(RESOLVED_CONFIG, used_skills()) == DASHBOARD
    as_mapping = {"n_skills": 5, "n_splits": 1, "rank": None}  # None: fall back to the config
    assert dashboard_config(RESOLVED_CONFIG, as_mapping) == DASHBOARD
    without = dashboard_config(RESOLVED_CONFIG)
    assert (without["n_skills"], without["n_splits"], without["rank"]) == (None, None, 2)
    assert dashboard_config({}) == dict.fromkeys(DASHBOARD)
    assert RESOLVED_CONFIG["method"]["n_skills"] is None  # the input is left alone


def test_run_config_puts_the_dashboard_keys_beside_the_full_config() -> None:
    config = run_config(RESOLVED_CONFIG, used_skills())
    assert list(config)[: len(DASHBOARD)] == list(DASHBOARD)
    assert {k: config[k] for k in DASHBOARD} == DASHBOARD
    # The sections whose names the dashboard keys hold move, unchanged; the rest keep their place.
    for name in ("method", "backbone", "benchmark"):
        assert config[f"{name}_config"] == RESOLVED_CONFIG[name]
    assert config["trainer"] == RESOLVED_CONFIG["trainer"] and config["task_name"] == "sample_efficiency"
    assert len(config) == len(DASHBOARD) + len(RESOLVED_CONFIG) - 1  # seed is one key, not two
    assert run_config(None) is None
    assert run_config(OmegaConf.create(RESOLVED_CONFIG)) == run_config(RESOLVED_CONFIG)


def test_dashboard_config_of_the_composed_config(tmp_path: Path) -> None:
    """The keys `dashboard_config` reads exist in the real config as a run logs it, the method's registry
    defaults filled in (a schema rename would show here)."""
    from cpoly.config import fill_method_defaults

    cfg = compose_train(["method=poly_matched", "seed=3", "benchmark.n_train_per_task=32"], output_dir=tmp_path)
    fill_method_defaults(cfg)
    config = OmegaConf.to_container(cfg, resolve=True)
    flat = dashboard_config(config, {"n_skills": 7})
    assert flat == {**flat, "method": "poly_matched", "method_kind": "poly", "backbone": "tiny_t5"}
    assert (flat["benchmark"], flat["examples_per_task"], flat["seed"], flat["n_skills"]) == ("synthetic", 32, 3, 7)
    assert None not in flat.values()


def finished_results() -> dict:
    """`results.json` content of a finished run, as much as `RunReporter.finish` reads."""
    per_task = {"task_a": {"exact_match": 40.0}, "task_b": {"exact_match": 60.0}}
    best_per_task = {"task_a": {"exact_match": 70.0}, "task_b": {"exact_match": 50.0}}
    return {
        "run_name": "synthetic-tiny_t5-poly_matched-s2",
        "main_metric": "exact_match",
        "parameters": {"trainable": 1234, "total": 99999},
        "dev": {
            "final": {"step": 30, "per_task": per_task, "avg": {"exact_match": 50.0}},
            "best": {"step": 20, "per_task": best_per_task, "avg": {"exact_match": 60.0}},
        },
        "test": {
            "final": {"step": 30, "per_task": per_task, "avg": {"exact_match": 45.0}},
            "best": {"step": 20, "per_task": best_per_task, "avg": {"exact_match": 55.0}},
        },
        "selection": {"split": "dev", "metric": "dev/avg/exact_match", "rule": "max", "step": 20, "value": 60.0},
        "skill_recovery": 0.75,
        "steps": 30,
        "train_seconds": 1.0,
        "paths": {"allocation_png": None},
    }


def summary_as_dict(summary) -> dict:
    return {k: summary_as_dict(v) if hasattr(v, "keys") else v for k in summary.keys() for v in [summary[k]]}


def test_what_a_real_offline_wandb_run_receives(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A real offline W&B run gets the dashboard keys and the nested config, the per-task series
    against `train/step`, and a summary with the dev and test splits' final and best averages.

    Route: capture at the calls, plus the run's own summary. The installed wandb (0.31) has no reader
    for the offline `.wandb` transaction log (the Python `wandb.sdk.internal.datastore` is gone; only
    the Go `wandb-core` reads it, for `wandb sync` and `wandb beta leet`), and an offline run folder
    holds no config.yaml or wandb-summary.json. So `wandb.init` and the run's `log` are wrapped by
    functions that record their arguments and call through (a real run is made); the summary is read
    back from the live run (`run.summary` asks wandb-core for its current summary, so it includes
    what `define_metric` derives), and the `.wandb` file must contain the new keys."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    inits: list[dict] = []
    runs: list = []
    logged: list[dict] = []
    real_init = wandb.init

    def recording_init(*args, **kwargs):
        run = real_init(*args, **kwargs)
        inits.append(kwargs)
        runs.append(run)
        real_log = run.log

        def recording_log(data, *log_args, **log_kwargs):
            logged.append(dict(data))
            return real_log(data, *log_args, **log_kwargs)

        run.log = recording_log
        return run

    monkeypatch.setattr(wandb, "init", recording_init)
    logger = WandbLogger(
        {"dir": str(tmp_path / "out"), "mode": "offline"},
        "synthetic-tiny_t5-poly_matched-s2",
        RESOLVED_CONFIG,
        skills=used_skills(),
    )
    try:
        assert logger.active and len(runs) == 1
        run = runs[0]
        for step, (a, b) in zip((10, 20, 30), ((20.0, 40.0), (70.0, 50.0), (40.0, 60.0)), strict=True):
            logger.log({"train/loss": 1.0 / step}, step)
            scores = {"task_a": {"exact_match": a}, "task_b": {"exact_match": b}, "avg": {"exact_match": (a + b) / 2}}
            logger.log({f"dev/{t}/{k}": v for t, s in scores.items() for k, v in s.items()}, step)
        RunReporter.finish(SimpleNamespace(is_main=True, out=tmp_path, wandb=logger), finished_results(), 0.0)
        summary = summary_as_dict(run.summary)
        config = run.config.as_dict()
    finally:
        logger.finish()

    # The config: dashboard keys at the top level, the full config beside them.
    sent = inits[0]["config"]
    assert {k: sent[k] for k in DASHBOARD} == DASHBOARD
    assert {k: v for k, v in config.items() if not k.startswith("_")} == sent
    assert config["method_config"] == RESOLVED_CONFIG["method"] and config["trainer"] == RESOLVED_CONFIG["trainer"]
    assert config["benchmark_config"]["n_train_per_task"] == config["examples_per_task"] == 32

    # The per-task series, each value against its step.
    def series(key: str) -> list[tuple[int, float]]:
        return [(r["train/step"], r[key]) for r in logged if key in r]

    assert series("dev/task_a/exact_match") == [(10, 20.0), (20, 70.0), (30, 40.0)]
    assert series("dev/task_b/exact_match") == [(10, 40.0), (20, 50.0), (30, 60.0)]
    assert series("dev/avg/exact_match") == [(10, 30.0), (20, 60.0), (30, 50.0)]
    assert [r["train/step"] for r in logged if "train/loss" in r] == [10, 20, 30]

    # The summary: parameter counts, final and best averages with their steps.
    expected = {
        "params/trainable": 1234,
        "params/total": 99999,
        "dev/final/avg/exact_match": 50.0,
        "dev/best/avg/exact_match": 60.0,
        "test/final/avg/exact_match": 45.0,
        "test/best/avg/exact_match": 55.0,
        "test/best/task_a/exact_match": 70.0,
        "selection/step": 20,
        "selection/value": 60.0,
        "skill_recovery": 0.75,
        "dev/avg/exact_match": {"max": 60.0},  # define_metric(summary="max") on the average
        "dev/task_a/exact_match": 40.0,  # per-task keys: the last value
        "train/step": 30,
    }
    assert {k: summary.get(k) for k in expected} == expected
    assert "examples_per_task" not in summary

    folders = list((tmp_path / "out" / "wandb").glob(f"offline-run-*-{logger.run_id}"))
    assert len(folders) == 1
    new_keys = ["method_kind", "examples_per_task", "method_config", "selection/step", "dev/task_b/exact_match"]
    records = wait_for_records(folders[0] / f"run-{logger.run_id}.wandb", new_keys)
    assert [k for k in new_keys if k.encode() not in records] == []


# ---------------------------------------------------------------- allocation


@pytest.mark.parametrize("n_tasks", [3, 100])
def test_heatmap_is_a_png_of_sensible_size(tmp_path: Path, n_tasks: int) -> None:
    path = plot_allocation(make_allocation(n_tasks), tmp_path / "allocation.png", f"T={n_tasks}")
    assert path == tmp_path / "allocation.png"
    assert path.read_bytes()[:8] == PNG_MAGIC
    with Image.open(path) as image:
        width, height = image.size
    assert 300 <= width <= 2500 and 200 <= height <= 1600
    assert [p.name for p in tmp_path.iterdir()] == ["allocation.png"]


def test_heatmap_with_splits_and_no_task_skills(tmp_path: Path) -> None:
    path = plot_allocation(make_allocation(10, n_splits=2, n_skills=4, n_task_skills=0), tmp_path / "a.png", "mhr")
    assert path.read_bytes()[:8] == PNG_MAGIC


def test_heatmap_of_a_real_model(tmp_path: Path) -> None:
    config = SkillConfig(
        method="cpoly",
        rank=2,
        n_skills=3,
        n_task_skills=1,
        n_splits=1,
        task_names=TASKS,
        target_modules=["q", "v"],
    )
    allocation = allocation_matrix(add_skills(tiny_t5(), config))
    assert plot_allocation(allocation, tmp_path / "a.png", "cpoly").stat().st_size > 0
    assert 0.99 < allocation_entropy(allocation) <= 1.0  # near-uniform at initialisation


def test_allocation_entropy_bounds() -> None:
    one_hot = torch.zeros(2, 1, 4)
    one_hot[:, 0, 1] = 1
    uniform = torch.full((2, 1, 4), 0.25)
    as_allocation = lambda m: Allocation(["a", "b"], {"l": m}, m, None)
    assert allocation_entropy(as_allocation(one_hot)) == pytest.approx(0.0, abs=1e-6)
    assert allocation_entropy(as_allocation(uniform)) == pytest.approx(1.0)
    assert allocation_entropy(as_allocation(torch.ones(2, 1, 1))) == 0.0
    # Two layers that each pick one skill, but different ones, are decided, not uniform.
    other = torch.zeros(2, 1, 4)
    other[:, 0, 2] = 1
    split = Allocation(["a", "b"], {"l1": one_hot, "l2": other}, (one_hot + other) / 2, None)
    assert allocation_entropy(split) == pytest.approx(0.0, abs=1e-6)


def test_allocation_rows() -> None:
    allocation = make_allocation(3, n_splits=2, n_skills=4)
    rows = allocation_rows(allocation)
    assert len(rows) == 3 * 2 * 4
    task, split, skill, weight = rows[-1]
    assert (task, split, skill) == ("task_002", 1, 3)
    assert math.isclose(weight, float(allocation.mean[2, 1, 3]), rel_tol=1e-6)
    assert math.isclose(sum(w for t, q, _, w in rows if t == "task_000" and q == 0), 1.0, rel_tol=1e-5)
