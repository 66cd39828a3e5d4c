"""SuperNI loader: protocol counts, determinism, disjointness, prompts, layouts, Hub schema, bad input."""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import pytest

from cpoly.data.io import DataError, read_name_list, write_name_list
from cpoly.data.superni import SuperNIConfig, build_prompt, load_superni
from cpoly.data.superni_sources import open_task_store, tasks_from_hub_rows


def _shared_data_dir() -> Path:
    return Path(os.environ.get("CPOLY_DATA_DIR") or Path(__file__).parents[2] / "shared" / "data")


@pytest.fixture(scope="session")
def data_dir() -> Path:
    path = _shared_data_dir()
    if not (path / "superni").is_dir():
        pytest.skip(f"real SuperNI data not found at {path}/superni (set CPOLY_DATA_DIR)")
    return path


@pytest.fixture(scope="session")
def paper_protocol(data_dir):
    return load_superni(SuperNIConfig(), data_dir)


def _small(**overrides) -> SuperNIConfig:
    return SuperNIConfig(**{"n_tasks": 5, "n_train_per_task": 40, "n_eval_per_task": 10, **overrides})


def _by_task(examples):
    grouped = {}
    for example in examples:
        grouped.setdefault(example.task, []).append(example)
    return grouped


# ------------------------------------------------------------------------------------ the paper protocol


def test_paper_protocol_counts_and_pool(paper_protocol, data_dir):
    data = paper_protocol
    assert data.metric == "superni" and data.main_metric == "rougeL"
    assert len(data.task_names) == 100 and data.task_names == sorted(data.task_names)
    train, evaluation = _by_task(data.train), _by_task(data.test)
    assert set(train) == set(evaluation) == set(data.task_names)
    assert all(len(train[t]) == 1000 and len(evaluation[t]) == 100 for t in data.task_names)
    test_tasks = set(read_name_list(data_dir / "superni/splits/default/test_tasks.txt"))
    assert not test_tasks & set(data.task_names), "default test tasks must stay out of the default pool"
    assert data.info["tasks"] == data.task_names and data.info["data_seed"] == 42


def test_train_and_eval_instances_are_disjoint(paper_protocol):
    train_ids = {ex.id for ex in paper_protocol.train}
    eval_ids = {ex.id for ex in paper_protocol.test}
    assert len(train_ids) == len(paper_protocol.train) and len(eval_ids) == len(paper_protocol.test)
    assert not train_ids & eval_ids
    train_inputs = {(ex.task, ex.source) for ex in paper_protocol.train}
    assert not any((ex.task, ex.source) in train_inputs for ex in paper_protocol.test)


def test_examples_are_well_formed(paper_protocol):
    for example in paper_protocol.test[:2000]:
        assert isinstance(example.target, list) and example.target and all(r.strip() for r in example.target)
        assert example.prefix.startswith("Definition: ") and example.source.endswith("\nOutput:")
        assert example.choices is None and example.id.startswith(example.task.split("_")[0])


def test_same_seed_same_data_other_seed_other_data(paper_protocol, data_dir):
    again = load_superni(SuperNIConfig(), data_dir)
    assert again.task_names == paper_protocol.task_names
    assert [ex.id for ex in again.train] == [ex.id for ex in paper_protocol.train]
    assert [ex.id for ex in again.test] == [ex.id for ex in paper_protocol.test]
    small, other = load_superni(_small(), data_dir), load_superni(_small(data_seed=7), data_dir)
    assert small.task_names != other.task_names


def test_task_list_round_trip_reproduces_the_draw(paper_protocol, data_dir, tmp_path):
    task_file = write_name_list(tmp_path / "tasks.txt", paper_protocol.task_names)
    again = load_superni(SuperNIConfig(task_list=str(task_file)), data_dir)
    assert again.task_names == paper_protocol.task_names
    assert [ex.id for ex in again.test] == [ex.id for ex in paper_protocol.test]
    assert again.info["task_list_file"] == str(task_file)


def test_instance_draw_does_not_depend_on_the_other_tasks(paper_protocol, data_dir, tmp_path):
    subset = paper_protocol.task_names[3:6][::-1]  # another order, other companions
    task_file = write_name_list(tmp_path / "subset.txt", subset)
    data = load_superni(SuperNIConfig(task_list=str(task_file)), data_dir)
    assert data.task_names == subset  # file order is the routing order
    full = _by_task(paper_protocol.test)
    for task, examples in _by_task(data.test).items():
        assert [ex.id for ex in examples] == [ex.id for ex in full[task]]


# ------------------------------------------------------------------------------------------- prompts


def test_golden_prompt_with_one_demonstration(data_dir):
    cfg = SuperNIConfig(n_positive_examples=1)
    store = open_task_store(data_dir)
    task = store.get("task1508_wordnet_antonyms")
    instance = next(i for i in task.instances if i.id == "task1508-6f09fae053fd4fa7b8dc2030beab3703")
    example = build_prompt(task, instance, cfg)
    assert example.prefix == (
        "Definition: Given an adjective, generate its antonym. An antonym of a word is a word opposite in "
        "meaning to it.\n\nPositive Example 1 -\nInput: able\nOutput: unable\n\n"
    )
    assert example.source == "Now complete the following example -\nInput: unable\nOutput:"
    assert example.target == ["able"] and example.prompt == example.prefix + example.source


def test_loader_uses_the_template_and_no_demonstrations_by_default(data_dir, tmp_path):
    task_file = write_name_list(tmp_path / "t.txt", ["task1508_wordnet_antonyms"])
    data = load_superni(_small(task_list=str(task_file)), data_dir)
    definition = (
        "Definition: Given an adjective, generate its antonym. An antonym of a word is a word opposite in "
        "meaning to it.\n\n"
    )
    assert {ex.prefix for ex in data.train + data.test} == {definition}
    custom = load_superni(_small(task_list=str(task_file), instance_template="Q: {input}\nA:"), data_dir)
    assert all(ex.source.startswith("Q: ") and ex.source.endswith("\nA:") for ex in custom.test)
    three = load_superni(_small(task_list=str(task_file), n_positive_examples=3), data_dir)
    assert "Positive Example 2 -" in three.test[0].prefix and "Positive Example 3" not in three.test[0].prefix
    assert three.info["fewer_positive_examples"] == {"task1508_wordnet_antonyms": 2}


# ---------------------------------------------------------------------------------------- cross-task


def test_cross_task_protocol(data_dir):
    cfg = SuperNIConfig(protocol="cross_task", task_pool=["train"], n_tasks=None, n_train_per_task=20)
    data = load_superni(cfg, data_dir)
    train_list = set(read_name_list(data_dir / "superni/splits/default/train_tasks.txt"))
    test_list = read_name_list(data_dir / "superni/splits/default/test_tasks.txt")
    assert set(data.task_names) <= train_list and len(data.task_names) == 208
    eval_tasks = data.info["eval_tasks"]
    assert eval_tasks == [t for t in test_list if t in set(data.test_task_names)] and len(eval_tasks) == 23
    assert not set(eval_tasks) & set(data.task_names)
    assert "unknown_task=uniform" in data.info["unknown_eval_tasks"]
    # Official evaluation: the first 100 instances of each test task, in file order.
    with gzip.open(data_dir / "superni/superni_test.jsonl.gz", "rt") as handle:
        first = {rec["task"]: [i["id"] for i in rec["instances"][:100]] for rec in map(json.loads, handle)}
    by_task = _by_task(data.test)
    assert all([ex.id for ex in by_task[t]] == first[t] for t in eval_tasks)
    assert all(len(v) <= 20 for v in _by_task(data.train).values())


def test_cross_task_refuses_test_tasks_in_the_pool(data_dir):
    with pytest.raises(DataError, match="task_pool"):
        load_superni(SuperNIConfig(protocol="cross_task", task_pool=["train", "test"]), data_dir)


# --------------------------------------------------------------------------------------- bad input


def test_unknown_task_in_list_is_named(data_dir, tmp_path):
    task_file = write_name_list(tmp_path / "t.txt", ["task1508_wordnet_antonyms", "task9999_no_such_task"])
    with pytest.raises(DataError, match="task9999_no_such_task"):
        load_superni(_small(task_list=str(task_file)), data_dir)


def test_small_tasks_are_named_or_skipped(data_dir, tmp_path):
    store = open_task_store(data_dir)
    small = next(n for n in sorted(store.available) if len(store.get(n).instances) < 1100)
    task_file = write_name_list(tmp_path / "t.txt", ["task1508_wordnet_antonyms", small])
    with pytest.raises(DataError, match=small):
        load_superni(SuperNIConfig(task_list=str(task_file)), data_dir)
    data = load_superni(SuperNIConfig(task_list=str(task_file), skip_small_tasks=True), data_dir)
    assert data.task_names == ["task1508_wordnet_antonyms"] and small in data.info["skipped_small_tasks"]


def test_empty_targets_are_dropped_and_counted_or_an_error(data_dir, tmp_path):
    task_file = write_name_list(tmp_path / "t.txt", ["task388_torque_token_classification"])
    data = load_superni(_small(task_list=str(task_file), n_train_per_task=1000), data_dir)
    assert data.info["dropped_empty_target_instances"] == {"task388_torque_token_classification": 3}
    with pytest.raises(DataError, match=r"task388-4a2b2063547e41e3a010da3e04059563.*empty target"):
        load_superni(_small(task_list=str(task_file), empty_targets="error"), data_dir)


def test_too_few_eligible_tasks_is_an_error(data_dir):
    with pytest.raises(DataError, match="n_tasks=500"):
        load_superni(SuperNIConfig(n_tasks=500), data_dir)


@pytest.mark.parametrize(
    "overrides, field",
    [
        ({"protocol": "paper"}, "protocol"),
        ({"task_pool": ["dev"]}, "task_pool"),
        ({"n_train_per_task": 0}, "n_train_per_task"),
        ({"empty_targets": "ignore"}, "empty_targets"),
        ({"instance_template": "Input: {text}"}, "instance_template"),
    ],
)
def test_bad_config_values_are_named(overrides, field, data_dir):
    with pytest.raises(DataError, match=f"benchmark.{field}="):
        load_superni(SuperNIConfig(**overrides), data_dir)


def test_malformed_line_names_file_and_line(tmp_path):
    folder = tmp_path / "superni"
    folder.mkdir()
    good = {
        "task": "task1_x",
        "definition": ["Do it."],
        "positive_examples": [],
        "instances": [],
        "input_language": ["English"],
        "output_language": ["English"],
    }
    with gzip.open(folder / "superni_train.jsonl.gz", "wt") as handle:
        handle.write(json.dumps(good) + "\n" + '{"task": "task2_y", "definition": [\n')
    with pytest.raises(DataError, match=r"superni_train\.jsonl\.gz:2: malformed JSON"):
        load_superni(_small(), tmp_path)


# ------------------------------------------------------------------------- upstream layout, Hub schema


def _write_upstream(root: Path, tasks: dict[str, dict]) -> None:
    (root / "tasks").mkdir(parents=True)
    (root / "splits" / "default").mkdir(parents=True)
    for name, record in tasks.items():
        (root / "tasks" / f"{name}.json").write_text(json.dumps(record))
    (root / "splits/default/train_tasks.txt").write_text("task001_upper\ntask002_french\n")
    (root / "splits/default/test_tasks.txt").write_text("task003_lower\n")
    (root / "splits/default/excluded_tasks.txt").write_text("")


def _upstream_task(prefix: str, n: int, language: str = "English") -> dict:
    return {
        "Definition": [f"Rewrite the word ({prefix})."],
        "Positive Examples": [{"input": "cat", "output": "CAT", "explanation": "upper case"}],
        "Negative Examples": [],
        "Input_language": [language],
        "Output_language": [language],
        "Instruction_language": ["English"],
        "Instances": [{"id": f"{prefix}-{i}", "input": f"word{i}", "output": [f"WORD{i}"]} for i in range(n)],
    }


def test_upstream_layout_is_detected_and_filtered_to_english(tmp_path):
    _write_upstream(
        tmp_path / "natural-instructions",
        {
            "task001_upper": _upstream_task("task001", 30),
            "task002_french": _upstream_task("task002", 30, language="French"),
            "task003_lower": _upstream_task("task003", 30),
        },
    )
    data = load_superni(_small(n_tasks=1, n_train_per_task=20, n_eval_per_task=5, task_pool=["train"]), tmp_path)
    assert data.info["source"] == "upstream" and data.task_names == ["task001_upper"]
    assert len(data.train) == 20 and len(data.test) == 5
    assert data.test[0].prefix == "Definition: Rewrite the word (task001).\n\n"
    with pytest.raises(DataError, match="only 1 tasks"):
        load_superni(_small(n_tasks=2, n_train_per_task=20, n_eval_per_task=5, task_pool=["train"]), tmp_path)
    xtask = load_superni(_small(protocol="cross_task", n_tasks=None, task_pool=["train"], n_eval_per_task=7), tmp_path)
    assert xtask.task_names == ["task001_upper"] and [ex.id for ex in xtask.test] == [f"task003-{i}" for i in range(7)]


def test_hub_rows_convert_to_tasks():
    rows = [  # Muennighoff/natural-instructions schema
        {"task_name": "task1_a", "id": "task1-0", "definition": "Answer.", "inputs": "2+2?", "targets": "4"},
        {
            "task_name": "task1_a",
            "id": "task1-0",
            "definition": "Answer.",
            "inputs": "2+2?",
            "targets": "four",
        },
        {"task_name": "task1_a", "id": "task1-1", "definition": "Answer.", "inputs": "1+1?", "targets": "2"},
        {"task_name": "task2_b", "id": "task2-0", "definition": "Echo.", "inputs": "hi", "targets": "hi"},
    ]
    tasks = tasks_from_hub_rows(rows, origin="fixture")
    assert sorted(tasks) == ["task1_a", "task2_b"]
    task = tasks["task1_a"]
    assert task.definition == "Answer." and task.positive_examples == () and task.english is None
    assert [(i.id, i.input, i.outputs) for i in task.instances] == [
        ("task1-0", "2+2?", ("4", "four")),
        ("task1-1", "1+1?", ("2",)),
    ]
    example = build_prompt(task, task.instances[0], SuperNIConfig())
    assert example.prompt == "Definition: Answer.\n\nNow complete the following example -\nInput: 2+2?\nOutput:"
    with pytest.raises(DataError, match="fixture row 0: missing field 'inputs'"):
        tasks_from_hub_rows([{"task_name": "t", "id": "0", "definition": "d", "targets": "x"}], origin="fixture")


def test_offline_without_local_data_is_a_one_line_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DataError) as err:
        load_superni(SuperNIConfig(), tmp_path)
    message = str(err.value)
    assert "\n" not in message and "CPOLY_DATA_DIR" in message and "HF_HUB_OFFLINE" in message
    assert "Muennighoff/natural-instructions" in message


def _compose_benchmark(option: str, schemas: dict | None = None):
    """benchmark/<option>.yaml composed into the app's config (schemas registered by cpoly.config)."""
    from helpers.compose import compose_train
    from omegaconf import OmegaConf

    return OmegaConf.to_object(compose_train([f"benchmark={option}"], output_dir="unused").benchmark)


def test_hydra_options_compose_over_the_schema():
    paper = _compose_benchmark("superni", {"superni_schema": SuperNIConfig})
    assert paper == SuperNIConfig()  # the YAML spells out the dataclass defaults
    xtask = _compose_benchmark("superni_xtask", {"superni_schema": SuperNIConfig})
    assert isinstance(xtask, SuperNIConfig) and xtask.name == "superni_xtask"
    assert (xtask.protocol, xtask.n_tasks, xtask.n_train_per_task, xtask.task_pool) == (
        "cross_task",
        None,
        100,
        ["train"],
    )


def test_hub_is_used_without_local_data_when_online(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)

    def fake_rows(dataset_id, split, config=None):  # stands in for datasets.load_dataset: no network
        assert dataset_id == "Muennighoff/natural-instructions" and config is None
        task = "task1_train" if split == "train" else "task2_test"
        return [
            {
                "task_name": task,
                "id": f"{task}-{i}",
                "definition": "Copy.",
                "inputs": f"w{i}",
                "targets": f"w{i}",
            }
            for i in range(12)
        ]

    monkeypatch.setattr("cpoly.data.superni_sources.load_hub_rows", fake_rows)
    data = load_superni(_small(n_tasks=1, n_train_per_task=8, n_eval_per_task=4, task_pool=["train"]), tmp_path)
    assert data.info["source"] == "hub" and data.task_names == ["task1_train"]
    assert (len(data.train), len(data.test)) == (8, 4)


def test_cross_task_few_shot_pool_of_the_test_tasks(tmp_path):
    """k training instances of each unseen test task, from outside its evaluation instances, with a dev
    split of its own held out of the drawn ones; the evaluation instances and the train tasks' draws stay."""
    from cpoly.data import load_benchmark

    _write_upstream(
        tmp_path / "natural-instructions",
        {"task001_upper": _upstream_task("task001", 30), "task003_lower": _upstream_task("task003", 30)},
    )
    base = dict(protocol="cross_task", n_tasks=None, task_pool=["train"], n_eval_per_task=7, n_dev_per_task=3)
    zero = load_benchmark(_small(**base), tmp_path)
    few = load_benchmark(_small(**base, few_shot_per_task=4), tmp_path)
    only = load_benchmark(_small(**base, few_shot_per_task=4, few_shot_only=True), tmp_path)
    assert zero.task_names == ["task001_upper"] and few.task_names == ["task001_upper", "task003_lower"]
    assert only.task_names == ["task003_lower"] and only.info["few_shot_only"] is True
    evaluation = [f"task003-{i}" for i in range(7)]  # the first n_eval_per_task, in file order, as before
    assert [ex.id for ex in zero.test] == [ex.id for ex in few.test] == [ex.id for ex in only.test] == evaluation
    for data in (few, only):
        pool = [ex.id for ex in data.train if ex.task == "task003_lower"]
        dev = [ex.id for ex in data.dev if ex.task == "task003_lower"]
        assert len(pool) == 4 and len(dev) == 3 and not (set(pool) | set(dev)) & set(evaluation)
    assert [ex.id for ex in few.train if ex.task == "task003_lower"] == [ex.id for ex in only.train]
    seen = lambda data: [ex.id for ex in data.train + data.dev if ex.task == "task001_upper"]  # noqa: E731
    assert seen(few) == seen(zero)  # the train task's train and dev are untouched
    with pytest.raises(DataError, match="few_shot_per_task=30: test task 'task003_lower' has 23 usable"):
        load_superni(_small(**base, few_shot_per_task=30), tmp_path)
    with pytest.raises(DataError, match="set protocol=cross_task"):
        load_superni(_small(few_shot_per_task=4), tmp_path)
