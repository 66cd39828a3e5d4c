"""Bring-your-own JSON-lines loader: both layouts, the seeded per-task split, metric choice, bad input."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from cpoly.data.io import DataError
from cpoly.data.jsonl import JsonlConfig, load_jsonl


def _write(path: Path, records: list[dict | str]) -> Path:
    lines = "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records)
    if path.suffix == ".gz":
        with gzip.open(path, "wt") as handle:
            handle.write(lines)
    else:
        path.write_text(lines)
    return path


def _lines(task: str, n: int, **extra) -> list[dict]:
    return [{"task": task, "source": f"{task} input {i}", "target": f"out {i}", **extra} for i in range(n)]


def test_train_and_eval_files(tmp_path):
    _write(tmp_path / "train.jsonl", _lines("b_task", 3) + _lines("a_task", 2))
    _write(tmp_path / "eval.jsonl.gz", [{"task": "a_task", "source": "x", "target": ["y", "z"], "id": "e1"}])
    data = load_jsonl(JsonlConfig(train_file="train.jsonl", eval_file="eval.jsonl.gz"), tmp_path)
    assert data.task_names == ["a_task", "b_task"] and len(data.train) == 5 and len(data.test) == 1
    assert data.metric == "superni" and data.main_metric == "rougeL"
    assert data.test[0].references == ["y", "z"] and data.test[0].id == "e1"
    assert data.train[0].id == "train-1" and data.info["unknown_eval_tasks"] == []


def test_single_file_is_split_per_task_with_the_data_seed(tmp_path):
    _write(tmp_path / "all.jsonl", _lines("a", 20) + _lines("b", 10) + _lines("c", 1))
    cfg = JsonlConfig(file=str(tmp_path / "all.jsonl"), eval_fraction=0.25)
    data = load_jsonl(cfg, None)
    evaluation = {t: [ex for ex in data.test if ex.task == t] for t in "abc"}
    assert [len(evaluation[t]) for t in "abc"] == [5, 2, 0]  # round(0.25 n); a 1-line task trains only
    assert not {ex.id for ex in data.train} & {ex.id for ex in data.test}
    assert len(data.train) + len(data.test) == 31
    again = load_jsonl(cfg, None)
    assert [ex.id for ex in again.test] == [ex.id for ex in data.test]
    other = load_jsonl(JsonlConfig(file=cfg.file, eval_fraction=0.25, data_seed=1), None)
    assert [ex.id for ex in other.test] != [ex.id for ex in data.test]


def test_choices_select_the_classification_metric(tmp_path):
    lines = [
        {"task": "sent", "source": f"s{i}", "target": ["neg", "pos"][i % 2], "choices": ["neg", "pos"]}
        for i in range(10)
    ]
    data = load_jsonl(JsonlConfig(file=str(_write(tmp_path / "c.jsonl", lines))), None)
    assert data.metric == "classification" and data.main_metric == "accuracy"
    assert all(ex.choices == ["neg", "pos"] for ex in data.train)
    named = load_jsonl(JsonlConfig(file=str(tmp_path / "c.jsonl"), metric="superni", main_metric="exact_match"), None)
    assert named.metric == "superni" and named.main_metric == "exact_match"


def test_task_filter_and_unknown_eval_tasks(tmp_path):
    _write(tmp_path / "train.jsonl", _lines("a", 2) + _lines("b", 2))
    _write(tmp_path / "eval.jsonl", [{"task": "new", "source": "s", "target": "t", "id": "n1"}])
    data = load_jsonl(JsonlConfig(train_file="train.jsonl", eval_file="eval.jsonl"), tmp_path)
    assert data.info["unknown_eval_tasks"] == ["new"]
    only_b = load_jsonl(JsonlConfig(train_file="train.jsonl", eval_file="eval.jsonl", tasks=["b"]), tmp_path)
    assert only_b.task_names == ["b"] and {ex.task for ex in only_b.train} == {"b"} and only_b.test == []
    with pytest.raises(DataError, match=r"\['zzz'\] have no training lines"):
        load_jsonl(JsonlConfig(train_file="train.jsonl", eval_file="eval.jsonl", tasks=["zzz"]), tmp_path)


@pytest.mark.parametrize(
    "bad_line, match",
    [
        ('{"task": "a", "source": "s", "target": "t"', r"bad\.jsonl:2: malformed JSON"),
        ({"source": "s", "target": "t"}, r"bad\.jsonl:2: field 'task'"),
        ({"task": "a", "source": "s", "target": "  "}, r"bad\.jsonl:2: field 'target' is empty"),
        ({"task": "a", "source": "s", "target": []}, r"bad\.jsonl:2: field 'target' should be"),
        ({"task": "a", "source": 3, "target": "t"}, r"bad\.jsonl:2: field 'source'"),
        (
            {"task": "a", "source": "s", "target": "x", "choices": ["y", "z"]},
            r"bad\.jsonl:2: field 'target' should be one of",
        ),
        ({"task": "a", "source": "s", "target": "y", "choices": ["y"]}, r"bad\.jsonl:2: field 'choices'"),
        (
            {"task": "a", "source": "s", "target": "t", "id": "bad-1"},
            r"bad\.jsonl:2: id 'bad-1' is also used at .*bad\.jsonl:1",
        ),
        ("[1, 2]", r"bad\.jsonl:2: expected a JSON object"),
    ],
)
def test_bad_lines_name_file_line_and_field(tmp_path, bad_line, match):
    path = _write(tmp_path / "bad.jsonl", [{"task": "a", "source": "s", "target": "t"}, bad_line])
    with pytest.raises(DataError, match=match):
        load_jsonl(JsonlConfig(file=str(path)), None)


@pytest.mark.parametrize(
    "cfg, match",
    [
        (JsonlConfig(), "give `file`"),
        (JsonlConfig(file="a.jsonl", train_file="b.jsonl"), "not both"),
        (JsonlConfig(file="missing.jsonl"), r"benchmark.file='missing.jsonl': file not found"),
        (JsonlConfig(file="a.jsonl", eval_fraction=1.5), "eval_fraction"),
        (JsonlConfig(file="a.jsonl", metric="bleu"), "benchmark.metric='bleu'"),
    ],
)
def test_bad_config_is_named(cfg, match, tmp_path):
    with pytest.raises(DataError, match=match):
        load_jsonl(cfg, tmp_path)


def _compose_benchmark(option: str, schemas: dict | None = None):
    """benchmark/<option>.yaml composed into the app's config (schemas registered by cpoly.config)."""
    from helpers.compose import compose_train
    from omegaconf import OmegaConf

    return OmegaConf.to_object(compose_train([f"benchmark={option}"], output_dir="unused").benchmark)


def test_hydra_option_composes_over_the_schema():
    assert _compose_benchmark("jsonl", {"jsonl_schema": JsonlConfig}) == JsonlConfig()
