"""SuperGLUE loader: counts, label words, golden prompts, MultiRC groups, caps, ReCoRD, Hub rows, errors."""

from __future__ import annotations

import gzip
import json
import os
from collections import Counter
from pathlib import Path

import pytest

from cpoly.data.io import DataError
from cpoly.data.superglue import SuperGLUEConfig, load_superglue
from cpoly.data.superglue_tasks import TASKS, records_from_hub_rows


def _shared_data_dir() -> Path:
    return Path(os.environ.get("CPOLY_DATA_DIR") or Path(__file__).parents[2] / "shared" / "data")


@pytest.fixture(scope="session")
def data_dir() -> Path:
    path = _shared_data_dir()
    if not (path / "superglue").is_dir():
        pytest.skip(f"real SuperGLUE data not found at {path}/superglue (set CPOLY_DATA_DIR)")
    return path


@pytest.fixture(scope="session")
def full(data_dir):
    return load_superglue(SuperGLUEConfig(train_from_validation=True), data_dir)


def _by_task(examples):
    grouped = {}
    for example in examples:
        grouped.setdefault(example.task, []).append(example)
    return grouped


def _by_id(examples):
    return {ex.id: ex for ex in examples}


# ----------------------------------------------------------------------------------------- the real data


def test_counts_match_the_official_sizes(full):
    assert full.task_names == ["boolq", "cb", "copa", "multirc", "rte", "wic", "wsc"]
    assert full.metric == "superglue" and full.main_metric == "score"
    official = {
        "cb": (250, 56),
        "copa": (400, 100),
        "multirc": (27243, 4848),
        "rte": (2490, 277),
        "wic": (5428, 638),
        "wsc": (554, 104),
    }
    for task, (n_train, n_eval) in official.items():
        assert full.info["counts"][task] == {"train": n_train, "eval": n_eval}
    assert "record" in full.info["skipped"]


def test_boolq_train_from_validation_is_a_disjoint_split_of_validation(full):
    train, evaluation = _by_task(full.train)["boolq"], _by_task(full.test)["boolq"]
    assert len(train) + len(evaluation) == 3270 and abs(len(train) - len(evaluation)) <= 1
    assert not {ex.id for ex in train} & {ex.id for ex in evaluation}
    assert all(ex.id.startswith("boolq-val-") for ex in train + evaluation)
    assert full.info["train_from_validation"]["boolq"]["fraction"] == 0.5


def test_targets_are_label_words_with_the_raw_label_distribution(full):
    for example in full.train + full.test:
        assert example.choices == list(TASKS[example.task].label_words) and example.target in example.choices
    cb = Counter(ex.target for ex in _by_task(full.test)["cb"])
    assert cb == {"contradiction": 28, "entailment": 23, "neutral": 5}
    assert Counter(ex.label for ex in _by_task(full.test)["copa"]) == {0: 55, 1: 45}


def test_golden_prompts(full):
    examples = _by_id(full.test)
    cb = examples["cb-val-0"]
    assert cb.prompt == (
        "Premise: Valence the void-brain, Valence the virtuous valet. Why couldn't the figger choose his own "
        "portion of titanic anatomy to shaft? Did he think he was helping?\nHypothesis: Valence was helping\n"
        "Does the premise entail the hypothesis?\nOptions: entailment, contradiction, neutral\nAnswer:"
    )
    assert cb.target == "contradiction" and cb.label == 1
    copa = examples["copa-val-0"]
    assert copa.prompt == (
        "Premise: The man turned on the faucet.\nQuestion: What happened as a result?\n"
        "choice1: The toilet filled with water.\nchoice2: Water flowed from the spout.\n"
        "Options: choice1, choice2\nAnswer:"
    )
    assert copa.target == "choice2"
    wsc = examples["wsc-val-0"]
    assert "could take his claim away from *him* .\n" in wsc.source
    assert wsc.source.endswith('does the pronoun "*him*" refer to "anyone"?\nOptions: false, true\nAnswer:')
    wic = examples["wic-val-0"]
    assert 'Is the word "class" used with the same meaning in both sentences?' in wic.source


def test_multirc_has_one_example_per_answer_option_grouped_by_question(full, data_dir):
    evaluation = _by_task(full.test)["multirc"]
    groups = Counter(ex.group for ex in evaluation)
    assert len(groups) == 953 and sum(groups.values()) == 4848
    with gzip.open(data_dir / "superglue/MultiRC/val.jsonl.gz", "rt") as handle:
        first = json.loads(handle.readline())
    question = first["passage"]["questions"][0]
    options = [ex for ex in evaluation if ex.group == f"multirc-val-p{first['idx']}-q{question['idx']}"]
    assert [ex.target for ex in options] == [["false", "true"][a["label"]] for a in question["answers"]]
    assert all(f"Question: {question['question']}\n" in ex.source for ex in options)


def test_boolq_without_train_file_is_an_error_naming_the_file(data_dir):
    with pytest.raises(DataError, match=r"'boolq'.*BoolQ/train\.jsonl.*train_from_validation=true"):
        load_superglue(SuperGLUEConfig(), data_dir)
    data = load_superglue(SuperGLUEConfig(tasks=["cb", "rte"]), data_dir)
    assert data.task_names == ["cb", "rte"]


def test_record_listed_explicitly_without_files_is_an_error(data_dir):
    with pytest.raises(DataError, match=r"'record'.*ReCoRD/train\.jsonl"):
        load_superglue(SuperGLUEConfig(tasks=["record"]), data_dir)


def test_caps_are_seeded_and_multirc_caps_count_questions(data_dir):
    cfg = SuperGLUEConfig(tasks=["cb", "multirc", "wic"], n_train_per_task=20, n_eval_per_task=10)
    data = load_superglue(cfg, data_dir)
    train, evaluation = _by_task(data.train), _by_task(data.test)
    assert len(train["cb"]) == 20 and len(evaluation["wic"]) == 10
    assert len({ex.group for ex in evaluation["multirc"]}) == 10
    again = load_superglue(cfg, data_dir)
    assert [ex.id for ex in again.train] == [ex.id for ex in data.train]
    other = load_superglue(SuperGLUEConfig(**{**cfg.__dict__, "data_seed": 1}), data_dir)
    assert [ex.id for ex in other.train] != [ex.id for ex in data.train]


@pytest.mark.parametrize(
    "overrides, match",
    [
        ({"tasks": ["cb", "axb"]}, "axb"),
        ({"n_eval_per_task": 0}, "n_eval_per_task"),
        ({"validation_train_fraction": 1.0}, "validation_train_fraction"),
    ],
)
def test_bad_config_values_are_named(overrides, match, data_dir):
    with pytest.raises(DataError, match=match):
        load_superglue(SuperGLUEConfig(**overrides), data_dir)


# --------------------------------------------------------------------------------- hand-written fixtures


def _write(path: Path, records: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


RECORD_PASSAGE = {
    "idx": 0,
    "source": "fixture",
    "passage": {
        "text": "Ada Lovelace met Charles Babbage in London.\n@highlight\nLovelace wrote notes",
        "entities": [{"start": 0, "end": 11}, {"start": 17, "end": 31}, {"start": 36, "end": 41}],
    },
    "qas": [
        {
            "query": "@placeholder wrote the first program.",
            "idx": 0,
            "answers": [{"start": 0, "end": 11, "text": "Ada Lovelace"}],
        },
    ],
}


def test_record_is_loaded_when_its_files_exist(tmp_path):
    _write(tmp_path / "superglue/ReCoRD/train.jsonl", [RECORD_PASSAGE])
    _write(tmp_path / "superglue/ReCoRD/val.jsonl", [RECORD_PASSAGE])
    data = load_superglue(SuperGLUEConfig(tasks=["record"]), tmp_path)
    example = data.test[0]
    assert example.id == "record-val-p0-q0" and example.target == ["Ada Lovelace"] and example.choices is None
    assert example.source == (
        "Passage: Ada Lovelace met Charles Babbage in London.\n- Lovelace wrote notes\n"
        "Query: @placeholder wrote the first program.\nEntities: Ada Lovelace, Charles Babbage, London\n"
        "Question: Which entity should replace @placeholder in the query?\nAnswer:"
    )


def test_malformed_line_and_bad_label_name_file_and_line(tmp_path):
    cb = {"premise": "p", "hypothesis": "h", "label": "entailment", "idx": 0}
    _write(tmp_path / "superglue/CB/train.jsonl", [cb])
    (tmp_path / "superglue/CB/val.jsonl").write_text(json.dumps(cb) + "\n{not json\n")
    with pytest.raises(DataError, match=r"CB/val\.jsonl:2: malformed JSON"):
        load_superglue(SuperGLUEConfig(tasks=["cb"]), tmp_path)
    _write(tmp_path / "superglue/CB/val.jsonl", [cb, {**cb, "label": "maybe"}])
    with pytest.raises(DataError, match=r"CB/val\.jsonl:2: field 'label' should be one of"):
        load_superglue(SuperGLUEConfig(tasks=["cb"]), tmp_path)


def test_offline_without_local_data_is_a_one_line_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DataError) as err:
        load_superglue(SuperGLUEConfig(), tmp_path)
    assert "\n" not in str(err.value) and "aps/super_glue" in str(err.value)


# ---------------------------------------------------------------------------------------- Hub schema


def _examples(task: str, records: list[dict]):
    return [ex for i, r in enumerate(records) for unit in TASKS[task].build(r, "val", f"row {i}") for ex in unit]


HUB_ROWS = {  # aps/super_glue schema: ClassLabel ints, flattened WSC / MultiRC / ReCoRD
    "boolq": [{"question": "is it", "passage": "It is.", "idx": 3, "label": 1}],
    "cb": [{"premise": "p", "hypothesis": "h", "idx": 0, "label": 2}],
    "copa": [{"premise": "p", "choice1": "a", "choice2": "b", "question": "cause", "idx": 0, "label": 0}],
    "rte": [{"premise": "p", "hypothesis": "h", "idx": 0, "label": 1}],
    "wic": [
        {
            "word": "w",
            "sentence1": "a w",
            "sentence2": "b w",
            "start1": 2,
            "start2": 2,
            "end1": 3,
            "end2": 3,
            "idx": 0,
            "label": 0,
        }
    ],
    "wsc": [
        {
            "text": "Ann thanked Bo because she was kind .",
            "span1_index": 0,
            "span2_index": 4,
            "span1_text": "Ann",
            "span2_text": "she",
            "idx": 0,
            "label": 1,
        }
    ],
}
OFFICIAL = {  # the same examples in the official jsonl schema
    "boolq": [{"question": "is it", "passage": "It is.", "idx": 3, "label": True}],
    "cb": [{"premise": "p", "hypothesis": "h", "idx": 0, "label": "neutral"}],
    "copa": [{"premise": "p", "choice1": "a", "choice2": "b", "question": "cause", "idx": 0, "label": 0}],
    "rte": [{"premise": "p", "hypothesis": "h", "idx": 0, "label": "not_entailment"}],
    "wic": [
        {
            "word": "w",
            "sentence1": "a w",
            "sentence2": "b w",
            "start1": 2,
            "start2": 2,
            "end1": 3,
            "end2": 3,
            "idx": 0,
            "label": False,
            "version": 1.1,
        }
    ],
    "wsc": [
        {
            "text": "Ann thanked Bo because she was kind .",
            "idx": 0,
            "label": True,
            "target": {"span1_index": 0, "span2_index": 4, "span1_text": "Ann", "span2_text": "she"},
        }
    ],
}


@pytest.mark.parametrize("task", sorted(HUB_ROWS))
def test_hub_rows_give_the_same_examples_as_official_records(task):
    assert _examples(task, records_from_hub_rows(task, HUB_ROWS[task])) == _examples(task, OFFICIAL[task])


def test_hub_wsc_marks_the_pronoun():
    example = _examples("wsc", records_from_hub_rows("wsc", HUB_ROWS["wsc"]))[0]
    assert example.source.startswith("Text: Ann thanked Bo because *she* was kind .\n") and example.target == "true"


def test_hub_multirc_rows_are_grouped_into_questions():
    def row(q, a, label):
        return {
            "paragraph": "Text.",
            "question": f"Q{q}?",
            "answer": f"A{a}",
            "label": label,
            "idx": {"paragraph": 0, "question": q, "answer": a},
        }

    records = records_from_hub_rows("multirc", [row(0, 0, 1), row(0, 1, 0), row(1, 2, 1)])
    examples = _examples("multirc", records)
    assert [(ex.id, ex.group, ex.target) for ex in examples] == [
        ("multirc-val-p0-q0-a0", "multirc-val-p0-q0", "true"),
        ("multirc-val-p0-q0-a1", "multirc-val-p0-q0", "false"),
        ("multirc-val-p0-q1-a2", "multirc-val-p0-q1", "true"),
    ]


def test_hub_record_rows_match_the_official_record():
    row = {
        "passage": RECORD_PASSAGE["passage"]["text"],
        "query": "@placeholder wrote the first program.",
        "entities": ["Ada Lovelace", "Charles Babbage", "London"],
        "answers": ["Ada Lovelace"],
        "idx": {"passage": 0, "query": 0},
    }
    assert _examples("record", records_from_hub_rows("record", [row])) == _examples("record", [RECORD_PASSAGE])


def _compose_benchmark(option: str, schemas: dict | None = None):
    """benchmark/<option>.yaml composed into the app's config (schemas registered by cpoly.config)."""
    from helpers.compose import compose_train
    from omegaconf import OmegaConf

    return OmegaConf.to_object(compose_train([f"benchmark={option}"], output_dir="unused").benchmark)


def test_hydra_option_composes_over_the_schema():
    assert _compose_benchmark("superglue", {"superglue_schema": SuperGLUEConfig}) == SuperGLUEConfig()


def test_hub_is_used_without_local_data_when_online(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)

    def fake_rows(dataset_id, split, config=None):  # stands in for datasets.load_dataset: no network
        assert (dataset_id, config) == ("aps/super_glue", "cb") and split in ("train", "validation")
        return [{"premise": f"p{i}", "hypothesis": "h", "idx": i, "label": i % 3} for i in range(6)]

    monkeypatch.setattr("cpoly.data.superglue.load_hub_rows", fake_rows)
    data = load_superglue(SuperGLUEConfig(tasks=["cb"]), tmp_path)
    assert data.info["source"] == "hub" and len(data.train) == len(data.test) == 6
    assert [ex.target for ex in data.test[:3]] == ["entailment", "contradiction", "neutral"]
