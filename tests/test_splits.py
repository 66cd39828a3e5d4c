"""Three disjoint splits for every benchmark: dev held out of the training side (or drawn of its own on the
synthetic benchmark), deterministic in data_seed, groups whole, the test split untouched."""

from __future__ import annotations

import pytest

from cpoly.data import load_benchmark
from cpoly.data.example import Example
from cpoly.data.io import DataError
from cpoly.data.jsonl import JsonlConfig
from cpoly.data.splits import carve_dev
from cpoly.data.superglue import SuperGLUEConfig
from cpoly.data.superni import SuperNIConfig, load_superni
from cpoly.data.synthetic import SyntheticConfig, load_synthetic


def examples(task: str, n: int, group_size: int = 1) -> list[Example]:
    return [
        Example(
            task=task,
            source=f"{task}{i}",
            target="x",
            id=f"{task}-{i}",
            group=f"{task}-g{i // group_size}" if group_size > 1 else None,
        )
        for i in range(n)
    ]


def test_carve_dev_holds_out_n_per_task_deterministically_and_independently_of_other_tasks():
    train = examples("a", 20) + examples("b", 30)
    kept, dev = carve_dev(train, 5, data_seed=1, benchmark="b")
    assert len(dev) == 10 and len(kept) == 40 and {ex.task for ex in dev} == {"a", "b"}
    assert not {ex.id for ex in kept} & {ex.id for ex in dev}
    assert carve_dev(train, 5, data_seed=1, benchmark="b") == (kept, dev)
    assert carve_dev(train, 5, data_seed=2, benchmark="b")[1] != dev
    alone = carve_dev(examples("a", 20), 5, data_seed=1, benchmark="b")[1]
    assert alone == [ex for ex in dev if ex.task == "a"]  # a task's dev does not depend on the others
    assert [train.index(ex) for ex in dev] == sorted(train.index(ex) for ex in dev)  # file order kept


def test_carve_dev_keeps_groups_whole_and_refuses_a_task_it_would_empty():
    train = examples("multirc", 12, group_size=3)  # 4 questions of 3 answer options
    kept, dev = carve_dev(train, 1, data_seed=0, benchmark="superglue")
    assert len(dev) == 3 and len({ex.group for ex in dev}) == 1 and not {ex.group for ex in kept} & {dev[0].group}
    with pytest.raises(DataError, match=r"task .multirc. has 4 training units .* benchmark.n_dev_per_task=4 would"):
        carve_dev(train, 4, data_seed=0, benchmark="superglue")
    with pytest.raises(DataError, match="n_dev_per_task=0: must be >= 1"):
        carve_dev(train, 0, data_seed=0, benchmark="superglue")


def test_synthetic_dev_words_are_their_own_and_leave_train_and_test_as_they_were():
    base = load_synthetic(SyntheticConfig(n_dev_per_task=5))
    more = load_synthetic(SyntheticConfig(n_dev_per_task=50))
    assert base.train == more.train and base.test == more.test  # dev's size changes nothing else
    assert len(more.dev) == 10 * 50 and more.dev[:5] == base.dev[:5]
    for task in more.task_names:
        dev, train, test = ({ex.source for ex in s if ex.task == task} for s in (more.dev, more.train, more.test))
        assert len(dev) == 50 and not dev & (train | test)


def test_every_benchmark_loads_three_disjoint_splits(data_dir, tmp_path):
    lines = "\n".join(f'{{"task": "t{i % 2}", "source": "s{i}", "target": "y"}}' for i in range(40))
    (tmp_path / "d.jsonl").write_text(lines + "\n")
    configs = [
        SyntheticConfig(n_tasks=4, n_train_per_task=20, n_eval_per_task=5, n_dev_per_task=5),
        SuperNIConfig(n_tasks=3, n_train_per_task=30, n_eval_per_task=5, n_dev_per_task=4),
        SuperGLUEConfig(tasks=["cb", "copa", "multirc"], n_train_per_task=30, n_eval_per_task=5, n_dev_per_task=6),
        JsonlConfig(file=str(tmp_path / "d.jsonl"), n_dev_per_task=3),
    ]
    for cfg in configs:
        data = load_benchmark(cfg, data_dir)
        ids = [{ex.id for ex in split} for split in (data.train, data.dev, data.test)]
        assert all(ids) and not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2]), cfg.name
        assert data.info["splits"] == {"train": len(data.train), "dev": len(data.dev), "test": len(data.test)}
        assert {ex.task for ex in data.dev} == set(data.task_names)


def test_superni_dev_comes_out_of_the_training_draw_never_the_evaluation_instances(data_dir):
    cfg = SuperNIConfig(n_tasks=3, n_train_per_task=30, n_eval_per_task=5, n_dev_per_task=4)
    plain = load_superni(cfg, data_dir)  # the loader's own train and test, before dev is held out
    data = load_benchmark(cfg, data_dir)
    assert data.test == plain.test  # the evaluation instances are untouched
    assert sorted(ex.id for ex in data.train + data.dev) == sorted(ex.id for ex in plain.train)
    assert len(data.train) == 3 * (30 - 4) and len(data.dev) == 3 * 4


def test_jsonl_dev_file_is_the_dev_split(tmp_path):
    write = lambda name, rows: (tmp_path / name).write_text(
        "".join(f'{{"task": "a", "source": "{r}", "target": "y"}}\n' for r in rows)
    )  # noqa: E731
    write("train.jsonl", ["a", "b", "c"])
    write("eval.jsonl", ["d"])
    write("dev.jsonl", ["e", "f"])
    cfg = JsonlConfig(
        train_file=str(tmp_path / "train.jsonl"),
        eval_file=str(tmp_path / "eval.jsonl"),
        dev_file=str(tmp_path / "dev.jsonl"),
    )
    data = load_benchmark(cfg, None)
    assert [ex.source for ex in data.dev] == ["e", "f"] and len(data.train) == 3 and len(data.test) == 1
