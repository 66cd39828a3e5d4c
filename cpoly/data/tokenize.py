"""Examples -> token ids per backbone kind, cached on disk.

Layout of one tokenised row (a `datasets.Dataset` row):
- `input_ids`: the model input. seq2seq and encoder: [specials] prompt [specials]. causal training:
  [bos] prompt target [eos]; causal generation: [bos] prompt, ending exactly where generation starts.
- `labels` (absent in the generation variant of seq2seq/causal): seq2seq the target ids ending with EOS;
  causal the input ids with -100 on every prompt position; encoder the index of the target in `choices`.
- `task_id`: routing id from `task_to_id`, -1 for a task outside it (an unknown task).
- `index`: position of the example in the list given, so predictions map back to their Examples.
- `length`: number of input ids, for length-grouped batching.

Prompt = `prefix` + `source`. When it exceeds `max_source_length`, the prefix (instructions) is
shortened first, keeping its beginning; only if the source alone is still too long is the prefix
dropped and the source cut, keeping its end (the question and the "Output:" cue generation follows).
Prefix, source and target are tokenised separately and joined at token level: what a decoder learns to
produce after the prompt is exactly the target's own tokenisation, the same boundary as in generation.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import pyarrow as pa
from datasets.table import InMemoryTable

from cpoly.atomic import atomic_directory
from cpoly.data.example import Example

log = logging.getLogger(__name__)

KINDS = ("seq2seq", "causal", "encoder")
IGNORE_INDEX = -100
# Bump whenever the tokenised layout or truncation rules change: old cache entries then miss.
FORMAT_VERSION = 1


@dataclass
class TruncationStats:
    """What truncation did to one split; also stored beside a cache entry so a cache hit reports it."""

    n_examples: int = 0
    prefix_shortened: int = 0  # the prefix lost its end but part of it stayed
    prefix_dropped: int = 0  # a non-empty prefix was removed entirely
    source_truncated: int = 0  # the source alone did not fit and lost its beginning
    target_truncated: int = 0  # the training target lost its end
    longest_prompt: int = 0  # prompt tokens (with specials) before truncation: helps choose max lengths

    def any_prompt_cut(self) -> bool:
        return bool(self.prefix_shortened or self.prefix_dropped or self.source_truncated)

    def describe(self) -> str:
        return (
            f"{self.n_examples} examples: prefix shortened in {self.prefix_shortened}, prefix dropped "
            f"entirely in {self.prefix_dropped}, source cut in {self.source_truncated}, target cut in "
            f"{self.target_truncated}; longest prompt {self.longest_prompt} tokens"
        )


@dataclass
class TokenizedSplit:
    dataset: datasets.Dataset
    stats: TruncationStats
    cache_path: Path | None = None  # where it lives on disk (None without a cache dir)
    from_cache: bool = False


@dataclass(frozen=True)
class _SpecialFrame:
    """The special tokens a tokenizer puts around one sequence ([CLS] x [SEP], x </s>, <bos> x)."""

    head: tuple[int, ...]
    tail: tuple[int, ...]


def special_frame(tokenizer: Any) -> _SpecialFrame:
    """Find the special tokens around a single sequence by encoding a probe with and without them."""
    probe = "a b"
    bare = tokenizer(probe, add_special_tokens=False)["input_ids"]
    full = tokenizer(probe, add_special_tokens=True)["input_ids"]
    for start in range(len(full) - len(bare) + 1):
        if full[start : start + len(bare)] == bare:
            return _SpecialFrame(head=tuple(full[:start]), tail=tuple(full[start + len(bare) :]))
    raise ValueError(
        f"cannot locate the text between the special tokens of {type(tokenizer).__name__}: "
        f"{probe!r} encodes to {bare} bare and {full} with special tokens"
    )


def _encode(tokenizer: Any, texts: Sequence[str]) -> list[list[int]]:
    """One batched tokenizer call, no special tokens, no truncation (this module truncates)."""
    if not texts:
        return []
    encoded = tokenizer(
        list(texts),
        add_special_tokens=False,
        return_attention_mask=False,
        return_token_type_ids=False,
        verbose=False,
    )
    return encoded["input_ids"]


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """A hash of everything about a tokenizer that changes token ids."""
    digest = hashlib.blake2b(digest_size=16)
    frame = special_frame(tokenizer)
    identity = {
        "class": f"{type(tokenizer).__module__}.{type(tokenizer).__qualname__}",
        "name_or_path": str(getattr(tokenizer, "name_or_path", "")),
        "vocab_size": tokenizer.vocab_size,
        "len": len(tokenizer),
        "special_tokens": list(tokenizer.all_special_tokens),
        "special_ids": list(tokenizer.all_special_ids),
        "eos_token_id": tokenizer.eos_token_id,
        "frame": [list(frame.head), list(frame.tail)],
    }
    digest.update(json.dumps(identity, sort_keys=True, default=str).encode())
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        # A fast tokenizer's full definition: vocab, merges, normaliser (lower-casing), pre-tokeniser.
        digest.update(backend.to_str().encode())
    else:
        digest.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
        options = {k: v for k, v in tokenizer.init_kwargs.items() if isinstance(v, (str, int, float, bool))}
        digest.update(json.dumps(options, sort_keys=True).encode())
    return digest.hexdigest()


def _examples_digest(examples: Sequence[Example], kind: str) -> str:
    """A hash of the example fields that reach the token ids, in order (order gives `index`)."""
    digest = hashlib.blake2b(digest_size=16)
    for example in examples:
        label = str(example.label) if kind == "encoder" else ""
        for text in (example.task, example.prefix, example.source, example.train_target, label):
            data = text.encode()
            digest.update(len(data).to_bytes(8, "little"))
            digest.update(data)
    return digest.hexdigest()


def cache_key(
    examples: Sequence[Example],
    tokenizer: Any,
    *,
    kind: str,
    max_source_length: int,
    max_target_length: int,
    task_to_id: Mapping[str, int],
    for_generation: bool,
) -> str:
    settings = {
        "format_version": FORMAT_VERSION,
        "kind": kind,
        "for_generation": for_generation,
        "max_source_length": max_source_length,
        "max_target_length": max_target_length,
        "task_to_id": sorted(task_to_id.items()),
        "tokenizer": tokenizer_fingerprint(tokenizer),
        "examples": _examples_digest(examples, kind),
        "n_examples": len(examples),
    }
    return hashlib.blake2b(json.dumps(settings, sort_keys=True).encode(), digest_size=16).hexdigest()


def _as_task_mapping(task_to_id: Mapping[str, int] | Sequence[str]) -> dict[str, int]:
    if isinstance(task_to_id, Mapping):
        return {str(k): int(v) for k, v in task_to_id.items()}
    return {name: i for i, name in enumerate(task_to_id)}


def _check_settings(kind: str, max_source_length: int, max_target_length: int, frame: _SpecialFrame) -> None:
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    n_special = len(frame.head) + (0 if kind == "causal" else len(frame.tail))
    if max_source_length <= n_special:
        raise ValueError(
            f"max_source_length={max_source_length} leaves no room for text after {n_special} special tokens"
        )
    if kind != "encoder" and max_target_length < 2:
        raise ValueError(f"max_target_length must be >= 2 (a token and EOS), got {max_target_length}")


def _fit_prompt(prefix: list[int], source: list[int], budget: int, stats: TruncationStats) -> list[int]:
    """Prefix + source within `budget` tokens: shorten the prefix first, then cut the source's beginning."""
    if len(prefix) + len(source) <= budget:
        return prefix + source
    if len(source) < budget:
        stats.prefix_shortened += 1
        return prefix[: budget - len(source)] + source
    if prefix:
        stats.prefix_dropped += 1
    if len(source) > budget:
        stats.source_truncated += 1
    return source[len(source) - budget :]


def _build_rows(
    examples: Sequence[Example],
    tokenizer: Any,
    kind: str,
    max_source_length: int,
    max_target_length: int,
    task_to_id: Mapping[str, int],
    for_generation: bool,
) -> tuple[dict[str, Any], TruncationStats]:
    frame = special_frame(tokenizer)
    head, tail = list(frame.head), list(frame.tail)
    if kind == "causal":
        tail = []  # the prompt continues into the target (training) or into generation
    budget = max_source_length - len(head) - len(tail)
    eos = tokenizer.eos_token_id
    if kind != "encoder" and eos is None:
        raise ValueError(f"{type(tokenizer).__name__} has no eos_token_id; {kind} targets need one")

    # Prefixes repeat across a task's examples (SuperNI definitions): tokenise each distinct one once.
    distinct_prefixes = sorted({ex.prefix for ex in examples if ex.prefix})
    prefix_ids = dict(zip(distinct_prefixes, _encode(tokenizer, distinct_prefixes), strict=True))
    source_ids = _encode(tokenizer, [ex.source for ex in examples])
    with_labels = kind == "encoder" or not for_generation
    target_ids = _encode(tokenizer, [ex.train_target for ex in examples]) if kind != "encoder" and with_labels else []

    stats = TruncationStats(n_examples=len(examples))
    input_ids: list[list[int]] = []
    labels: list[Any] = []
    for i, example in enumerate(examples):
        prefix = prefix_ids.get(example.prefix, [])
        source = source_ids[i]
        stats.longest_prompt = max(stats.longest_prompt, len(head) + len(prefix) + len(source) + len(tail))
        prompt = head + _fit_prompt(prefix, source, budget, stats) + tail
        if kind == "encoder":
            input_ids.append(prompt)
            labels.append(example.label)
            continue
        if not with_labels:
            input_ids.append(prompt)
            continue
        target = target_ids[i]
        if len(target) + 1 > max_target_length:
            stats.target_truncated += 1
            target = target[: max_target_length - 1]
        target = target + [eos]
        if kind == "seq2seq":
            input_ids.append(prompt)
            labels.append(target)
        else:
            input_ids.append(prompt + target)
            labels.append([IGNORE_INDEX] * len(prompt) + target)

    columns: dict[str, Any] = {"input_ids": input_ids}
    if with_labels:
        columns["labels"] = labels
    columns["task_id"] = [task_to_id.get(ex.task, -1) for ex in examples]
    columns["index"] = list(range(len(examples)))
    columns["length"] = [len(ids) for ids in input_ids]
    return columns, stats


def _list_array(rows: list[list[int]]) -> pa.Array:
    """A list<int32> Arrow column from ragged Python lists, without per-row Arrow conversions."""
    lengths = np.fromiter((len(r) for r in rows), dtype=np.int64, count=len(rows))
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    values = pa.array(np.fromiter(itertools.chain.from_iterable(rows), dtype=np.int32, count=int(offsets[-1])))
    if offsets[-1] < 2**31 - 1:
        return pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), values)
    return pa.LargeListArray.from_arrays(pa.array(offsets), values)  # over 2**31 tokens in one column


def _to_dataset(columns: dict[str, Any], kind: str) -> datasets.Dataset:
    ragged = {"input_ids"} if kind == "encoder" else {"input_ids", "labels"}
    arrays = {}
    for name, values in columns.items():
        if name in ragged:
            arrays[name] = _list_array(values)
        else:
            arrays[name] = pa.array(values, type=pa.int64() if name == "index" else pa.int32())
    return datasets.Dataset(InMemoryTable(pa.table(arrays)))


def _report(stats: TruncationStats, where: str) -> None:
    if stats.prefix_shortened or stats.prefix_dropped:
        log.warning("tokenisation (%s) cut instructions: %s", where, stats.describe())
    elif stats.source_truncated or stats.target_truncated:
        log.warning("tokenisation (%s) truncated: %s", where, stats.describe())


def tokenize_examples(
    examples: Sequence[Example],
    tokenizer: Any,
    *,
    kind: str,
    max_source_length: int,
    max_target_length: int,
    task_to_id: Mapping[str, int] | Sequence[str],
    for_generation: bool = False,
    cache_dir: str | os.PathLike | None = None,
) -> TokenizedSplit:
    """Tokenise `examples` for a `kind` backbone (see the module doc for the row layout).

    `for_generation` gives prompt-only inputs without labels for seq2seq and causal (the encoder
    variant is the training one: classification needs no separate input). `task_to_id` maps task
    names to routing ids (a list of names means their positions). With `cache_dir`, the result is
    stored under a key hashing everything that changes it and a later identical call loads it from
    disk without tokenising. Truncation counts are returned in `stats` and logged as a warning.
    """
    mapping = _as_task_mapping(task_to_id)
    _check_settings(kind, max_source_length, max_target_length, special_frame(tokenizer))
    if kind == "encoder":
        unlabeled = next((ex for ex in examples if ex.choices is None), None)
        if unlabeled is not None:
            raise ValueError(
                f"encoder backbones classify: example {unlabeled.id!r} of task {unlabeled.task!r} has no choices"
            )
    settings = dict(
        kind=kind,
        max_source_length=max_source_length,
        max_target_length=max_target_length,
        task_to_id=mapping,
        for_generation=for_generation,
    )
    where = f"{kind}, {'generation' if for_generation else 'training'}"

    entry: Path | None = None
    if cache_dir is not None:
        key = cache_key(examples, tokenizer, **settings)
        entry = Path(cache_dir) / f"{kind}-{'gen' if for_generation else 'train'}-{key}"
        if (entry / "stats.json").is_file():
            dataset = datasets.load_from_disk(str(entry / "dataset"))
            stats = TruncationStats(**json.loads((entry / "stats.json").read_text()))
            log.info("tokenised %s loaded from cache %s", where, entry)
            _report(stats, where)
            return TokenizedSplit(dataset=dataset, stats=stats, cache_path=entry, from_cache=True)

    columns, stats = _build_rows(examples, tokenizer, **settings)
    dataset = _to_dataset(columns, kind)
    _report(stats, where)
    if entry is None:
        return TokenizedSplit(dataset=dataset, stats=stats)

    _write_atomically(dataset, stats, entry)
    # Serve the memory-mapped copy, as a cache hit would, so both paths behave the same.
    return TokenizedSplit(dataset=datasets.load_from_disk(str(entry / "dataset")), stats=stats, cache_path=entry)


def _write_atomically(dataset: datasets.Dataset, stats: TruncationStats, entry: Path) -> None:
    """Write into a temporary folder beside `entry`, then rename (`atomic_directory`): readers never see
    half an entry; a concurrent writer that published the same entry first wins."""
    bars_were_on = not datasets.utils.are_progress_bars_disabled()
    datasets.utils.disable_progress_bars()  # a cache write is not worth a progress bar in the logs
    try:
        with atomic_directory(entry, replace=False) as temporary:
            dataset.save_to_disk(str(temporary / "dataset"))
            (temporary / "stats.json").write_text(json.dumps(asdict(stats), indent=1))
    finally:
        if bars_were_on:
            datasets.utils.enable_progress_bars()
    if not (entry / "stats.json").is_file():
        raise ValueError(f"{entry}: a tokenisation cache folder without stats.json (not written by cpoly): remove it")
