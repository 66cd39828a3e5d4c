"""The training app end to end on the synthetic benchmark with tiny_t5: every method, the run
folder's outputs, resume equivalence, W&B offline mode."""

from __future__ import annotations

import copy
import json

import pytest
from helpers.compose import compose_train, with_values

from cpoly.config import ConfigError
from cpoly.logging import read_metrics
from cpoly.run import train
from cpoly.skills import METHODS

RESULT_KEYS = {
    "run_name",
    "group",
    "seed",
    "benchmark",
    "backbone",
    "method",
    "metric",
    "main_metric",
    "optimized_metric",
    "dev",
    "test",
    "selection",
    "skill_recovery",
    "exclusive_skills",
    "allocation",
    "majority_baseline",
    "parameter_matching",
    "parameters",
    "steps",
    "train_seconds",
    "wall_time_s",
    "git_sha",
    "status",
    "n_train",
    "n_dev",
    "n_test",
    "tasks",
    "benchmark_info",
    "tokenization",
    "paths",
}
SMALL_DATA = ["benchmark.n_tasks=4", "benchmark.n_train_per_task=40", "benchmark.n_eval_per_task=6"]


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


def run(overrides, out, cache_dir):
    cfg = compose_train(["debug=smoke", *SMALL_DATA, *overrides], output_dir=out, cache_dir=cache_dir)
    return train(cfg)


@pytest.mark.parametrize("method", METHODS)
def test_each_method_trains_and_writes_its_run_folder(method, tmp_path, cache_dir):
    results = run([f"method={method}"], tmp_path, cache_dir)
    assert RESULT_KEYS <= set(results)
    assert results["steps"] == 4 and results["status"] == "finished" and results["method"] == method
    assert set(results["test"]["final"]["per_task"]) == set(results["tasks"]) and len(results["tasks"]) == 4
    assert "char_similarity" in results["test"]["final"]["avg"] and "exact_match" in results["test"]["final"]["avg"]
    counts = results["parameters"]
    assert counts["trainable"] == counts["shared_skills"] + counts["task_skills"] + counts["router"] + counts["heads"]
    files = {p.name for p in tmp_path.iterdir()}
    assert {
        "config_resolved.yaml",
        "tasks.txt",
        "metrics.jsonl",
        "predictions.jsonl",
        "results.json",
        "last",
        "best",
    } <= files
    routed = method in ("poly", "mhr", "cpoly", "mtl_lora")  # a learned task-to-skill allocation
    assert ("allocation.png" in files) == ("dendrogram.png" in files) == routed
    if not routed:
        assert results["skill_recovery"] is None and results["allocation"] is None
    else:
        allocation = results["allocation"]
        layers, width = allocation["layers"], len(allocation["shared"][0])
        assert len(allocation["shared"]) == 4 and width % layers == 0 and layers > 1  # every layer side by side
        assert 0 <= allocation["entropy"] <= 1 and 0 < allocation["true_entropy"] < 1
    assert (results["exclusive_skills"] is not None) == (method in ("task_lora", "cpoly"))
    assert results["majority_baseline"] is None and results["parameter_matching"] is None  # generative, unmatched
    assert json.loads((tmp_path / "results.json").read_text()) == json.loads(json.dumps(results))
    prediction = json.loads((tmp_path / "predictions.jsonl").read_text().splitlines()[0])
    assert set(prediction) == {"task", "id", "source", "prediction", "references"}
    assert len((tmp_path / "predictions.jsonl").read_text().splitlines()) == results["n_test"] == 4 * 2
    assert {"adapter_config.json", "adapter_model.safetensors", "trainer_state.pt"} <= {
        p.name for p in (tmp_path / "last").iterdir()
    }
    logged = read_metrics(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in logged if "train/loss" in r] == [2, 4]
    assert any("dev/avg/char_similarity" in r for r in logged)


@pytest.mark.parametrize(
    "method",
    [["method=cpoly"], ["method=task_lora"], ["method=cpoly", "trainer.grad_accum=2", "trainer.batch_size=4"]],
    ids=["cpoly", "task_lora", "cpoly-grad_accum"],
)
def test_resumed_run_ends_like_an_uninterrupted_one(method, tmp_path, cache_dir, monkeypatch):
    overrides = ["trainer.max_steps=6", "trainer.eval_every=3", "trainer.log_every=1", *method]
    reference = run(overrides, tmp_path / "whole", cache_dir)

    from cpoly.train.loop import TrainLoop

    original = TrainLoop._evaluate_and_checkpoint

    def crash_after_first_checkpoint(self, step):
        original(self, step)
        raise KeyboardInterrupt("preempted")

    monkeypatch.setattr(TrainLoop, "_evaluate_and_checkpoint", crash_after_first_checkpoint)
    with pytest.raises(KeyboardInterrupt):
        run(overrides, tmp_path / "split", cache_dir)
    monkeypatch.setattr(TrainLoop, "_evaluate_and_checkpoint", original)
    assert not (tmp_path / "split" / "results.json").exists()
    resumed = run([*overrides, "resume=must"], tmp_path / "split", cache_dir)

    assert all(resumed[k] == reference[k] for k in ("dev", "test", "selection"))
    strip = lambda rows: [{k: v for k, v in r.items() if k != "time"} for r in rows]  # noqa: E731
    assert strip(read_metrics(tmp_path / "split" / "metrics.jsonl")) == strip(
        read_metrics(tmp_path / "whole" / "metrics.jsonl")
    )
    from safetensors.torch import load_file

    a = load_file(str(tmp_path / "whole" / "last" / "adapter_model.safetensors"))
    b = load_file(str(tmp_path / "split" / "last" / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)


def test_resume_refuses_what_would_lose_or_mix_work(cfg_train, tmp_path):
    train(copy.deepcopy(cfg_train))
    with pytest.raises(ConfigError, match="resume=never but .* holds a checkpoint"):
        train(with_values(cfg_train, resume="never"))
    with pytest.raises(ConfigError, match=r"another config.*optim.lr"):
        train(with_values(cfg_train, **{"optim.lr": 0.5}))
    again = train(copy.deepcopy(cfg_train))  # finished: reports the results without training again
    assert again["steps"] == 4
    with pytest.raises(ConfigError, match="resume=must: no checkpoint"):
        train(with_values(cfg_train, resume="must", **{"paths.output_dir": str(tmp_path / "fresh")}))


def test_wandb_offline_writes_a_run_folder(tmp_path, cache_dir, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    results = run(["logger=wandb"], tmp_path, cache_dir)
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and results["wandb_run_id"] and results["wandb_run_id"] in runs[0].name


def test_unknown_eval_tasks_need_uniform_routing(cfg_train, tmp_path, monkeypatch):
    from cpoly import run as run_module
    from cpoly.data.example import BenchmarkData

    real = run_module.load_benchmark

    def with_an_unseen_task(cfg, data_dir):
        data = real(cfg, data_dir)
        unseen = [
            type(ex)(task="unseen", source=ex.source, target=ex.target, id=f"u{i}")
            for i, ex in enumerate(data.test[:3])
        ]
        return BenchmarkData(**{**data.__dict__, "test": data.test + unseen})

    monkeypatch.setattr(run_module, "load_benchmark", with_an_unseen_task)
    with pytest.raises(ConfigError, match="method.unknown_task=uniform"):
        train(copy.deepcopy(cfg_train))
    results = train(
        with_values(cfg_train, **{"method.unknown_task": "uniform", "paths.output_dir": str(tmp_path / "b")})
    )
    assert "unseen" in results["test"]["final"]["per_task"] and "unseen" not in results["tasks"]


@pytest.mark.parametrize(
    "overrides",
    [
        [
            "benchmark=superni",
            "benchmark.n_tasks=3",
            "benchmark.n_train_per_task=8",
            "benchmark.n_eval_per_task=2",
            "benchmark.n_dev_per_task=2",
        ],
        [
            "benchmark=superni_xtask",
            "benchmark.n_train_per_task=2",
            "benchmark.n_eval_per_task=1",
            "benchmark.n_dev_per_task=1",
            "method.unknown_task=uniform",
        ],
        [
            "benchmark=superglue",
            "benchmark.n_train_per_task=8",
            "benchmark.n_eval_per_task=4",
            "benchmark.n_dev_per_task=2",
            "benchmark.train_from_validation=true",
        ],
    ],
    ids=["superni", "superni_xtask", "superglue"],
)
def test_smoke_run_on_each_real_benchmark(overrides, data_dir, tmp_path, cache_dir):
    cfg = compose_train(
        ["debug=smoke", f"paths.data_dir={data_dir}", *overrides], output_dir=tmp_path, cache_dir=cache_dir
    )
    results = train(cfg)
    assert results["steps"] == 4 and results["test"]["final"]["avg"]
    main = results["main_metric"]
    assert main in results["test"]["final"]["avg"] and 0.0 <= results["test"]["final"]["avg"][main] <= 100.0
    assert (tmp_path / "tasks.txt").read_text().split() == results["tasks"]


def smoke_on_jsonl(lines, tmp_path, cache_dir, *overrides):
    """A debug=smoke run on `lines` written as the user's own JSON lines file."""
    data = tmp_path / "data.jsonl"
    data.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    cfg = compose_train(
        ["debug=smoke", "benchmark=jsonl", f"benchmark.file={data}", "benchmark.n_dev_per_task=1", *overrides],
        output_dir=tmp_path / "run",
        cache_dir=cache_dir,
    )
    return train(cfg)


def test_smoke_run_on_bring_your_own_jsonl(tmp_path, cache_dir):
    lines = [
        {"task": task, "source": f"{word} ->", "target": word[::-1] if task == "rev" else word.upper()}
        for task in ("rev", "up")
        for word in ("abc", "hello", "tiny", "model", "skills", "route", "task", "lora", "poly", "mhr")
    ]
    results = smoke_on_jsonl(lines, tmp_path, cache_dir, "benchmark.eval_fraction=0.2")
    assert sorted(results["tasks"]) == ["rev", "up"] and results["n_test"] == 4


def test_debug_overfit_memorises_a_few_batches(tmp_path, cache_dir):
    cfg = compose_train(
        ["debug=overfit", *SMALL_DATA, "trainer.max_steps=40", "trainer.eval_every=40", "trainer.log_every=5"],
        output_dir=tmp_path,
        cache_dir=cache_dir,
    )
    train(cfg)
    losses = [r["train/loss"] for r in read_metrics(tmp_path / "metrics.jsonl") if "train/loss" in r]
    assert losses[-1] < 0.5 * losses[0], losses


def test_the_loop_trains_a_decoder_only_backbone(tmp_path, cache_dir):
    cfg = compose_train(
        [
            "debug=overfit",
            *SMALL_DATA,
            "backbone=tiny_llama",
            "trainer.max_steps=30",
            "trainer.eval_every=30",
            "trainer.log_every=5",
        ],
        output_dir=tmp_path,
        cache_dir=cache_dir,
    )
    results = train(cfg)
    losses = [r["train/loss"] for r in read_metrics(tmp_path / "metrics.jsonl") if "train/loss" in r]
    assert losses[-1] < 0.85 * losses[0], losses
    first = json.loads((tmp_path / "predictions.jsonl").read_text().splitlines()[0])
    assert not first["prediction"].startswith(first["source"])  # the prompt is not part of the output
    assert results["throughput"]["tokens_per_second"] > 0


def test_the_loop_trains_an_encoder_with_task_heads(tmp_path, cache_dir):
    lines = [
        {"task": task, "source": word, "target": label, "choices": ["yes", "no"]}
        for task, rule in (("long", lambda w: len(w) > 4), ("has_a", lambda w: "a" in w))
        for word in (
            "abc",
            "hello",
            "tiny",
            "models",
            "skills",
            "route",
            "task",
            "lora",
            "poly",
            "mixtures",
            "ab",
            "zzz",
        )
        for label in ["yes" if rule(word) else "no"]
    ]
    results = smoke_on_jsonl(lines, tmp_path, cache_dir, "backbone=tiny_bert")
    assert results["metric"] == "classification" and set(results["test"]["final"]["per_task"]) == {"long", "has_a"}
    assert results["parameters"]["heads"] == 2 * (128 * 2 + 2)  # one 2-way head per task, trained and counted
    predictions = [
        json.loads(line)["prediction"] for line in (tmp_path / "run" / "predictions.jsonl").read_text().splitlines()
    ]
    assert set(predictions) <= {"yes", "no"}
