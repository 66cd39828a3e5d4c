"""Padding tokenised rows (see `cpoly.data.tokenize`) into a batch of tensors.

Batch keys: `input_ids`, `attention_mask`, `labels` (when the rows have them; -100 padding for
token labels, a plain LongTensor for encoder class labels), `task_ids`, `index`.
Training pads on the right. Batched causal generation pads on the left, so every prompt ends at the
last position and the model continues each of them from there.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn.utils.rnn import pad_sequence

from cpoly.data.tokenize import IGNORE_INDEX, KINDS


def pad_sequences(
    sequences: Sequence[Sequence[int]],
    pad_value: int,
    side: str = "right",
    pad_to_multiple_of: int | None = None,
) -> torch.Tensor:
    """A (batch x longest) LongTensor of ragged id lists, padded on `side` (torch's `pad_sequence`), then
    widened on the same side to a multiple of `pad_to_multiple_of`."""
    if side not in ("right", "left"):
        raise ValueError(f"padding side must be 'right' or 'left', got {side!r}")
    if not sequences:
        return torch.full((0, 0), pad_value, dtype=torch.long)
    tensors = [torch.as_tensor(values, dtype=torch.long) for values in sequences]
    batch = pad_sequence(tensors, batch_first=True, padding_value=pad_value, padding_side=side)
    extra = -batch.shape[1] % pad_to_multiple_of if pad_to_multiple_of else 0
    if extra:
        batch = nn.functional.pad(batch, (extra, 0) if side == "left" else (0, extra), value=pad_value)
    return batch


@dataclass
class Collator:
    """Pads rows of one backbone `kind`; `for_generation` selects left padding for causal prompts."""

    kind: str
    pad_token_id: int
    for_generation: bool = False
    pad_to_multiple_of: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
        if self.pad_to_multiple_of is not None and self.pad_to_multiple_of < 1:
            raise ValueError(f"pad_to_multiple_of must be >= 1 or None, got {self.pad_to_multiple_of}")

    @property
    def padding_side(self) -> str:
        return "left" if self.kind == "causal" and self.for_generation else "right"

    def __call__(self, rows: Sequence[Mapping[str, Any]] | Mapping[str, Sequence[Any]]) -> dict[str, torch.Tensor]:
        """Collate a list of rows, or the column dict `dataset[indices]` returns (one fast slice)."""
        columns = _columns(rows)
        side, multiple = self.padding_side, self.pad_to_multiple_of
        input_ids = columns["input_ids"]
        batch = {
            "input_ids": pad_sequences(input_ids, self.pad_token_id, side, multiple),
            "attention_mask": pad_sequences([[1] * len(ids) for ids in input_ids], 0, side, multiple),
        }
        if "labels" in columns:
            if self.kind == "encoder":
                batch["labels"] = torch.as_tensor(columns["labels"], dtype=torch.long)
            else:
                # seq2seq labels are their own sequence; causal labels align with input_ids.
                batch["labels"] = pad_sequences(columns["labels"], IGNORE_INDEX, side, multiple)
        batch["task_ids"] = torch.as_tensor([int(t) for t in columns["task_id"]], dtype=torch.long)
        batch["index"] = torch.as_tensor([int(i) for i in columns["index"]], dtype=torch.long)
        return batch


def _columns(rows: Sequence[Mapping[str, Any]] | Mapping[str, Sequence[Any]]) -> Mapping[str, Sequence[Any]]:
    """The rows as columns (a column dict is already that); no rows is an error."""
    columns = (
        rows if isinstance(rows, Mapping) else {key: [row[key] for row in rows] for key in rows[0]} if rows else {}
    )
    if not columns or not len(columns["input_ids"]):
        raise ValueError("cannot collate an empty list of rows")
    return columns


def pad_token_id_of(tokenizer: Any) -> int:
    """The tokenizer's pad id; decoder-only tokenizers without one pad with EOS (masked anyway)."""
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if candidate is not None:
            return int(candidate)
    raise ValueError(f"{type(tokenizer).__name__} has neither a pad_token_id nor an eos_token_id to pad with")


def make_collator(
    tokenizer: Any, kind: str, *, for_generation: bool = False, pad_to_multiple_of: int | None = None
) -> Collator:
    return Collator(
        kind=kind,
        pad_token_id=pad_token_id_of(tokenizer),
        for_generation=for_generation,
        pad_to_multiple_of=pad_to_multiple_of,
    )
