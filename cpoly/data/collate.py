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

from cpoly.data.tokenize import IGNORE_INDEX, KINDS


def pad_sequences(
    sequences: Sequence[Sequence[int]],
    pad_value: int,
    side: str = "right",
    pad_to_multiple_of: int | None = None,
) -> torch.Tensor:
    """A (batch x longest) LongTensor of ragged id lists, padded on `side`."""
    if side not in ("right", "left"):
        raise ValueError(f"padding side must be 'right' or 'left', got {side!r}")
    width = max((len(s) for s in sequences), default=0)
    if pad_to_multiple_of:
        width = -(-width // pad_to_multiple_of) * pad_to_multiple_of
    batch = torch.full((len(sequences), width), pad_value, dtype=torch.long)
    for row, values in enumerate(sequences):
        if len(values) == 0:
            continue
        tensor = torch.as_tensor(values, dtype=torch.long)
        if side == "right":
            batch[row, : len(values)] = tensor
        else:
            batch[row, width - len(values) :] = tensor
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
        if isinstance(rows, Mapping):
            rows = [dict(zip(rows.keys(), values, strict=True)) for values in zip(*rows.values(), strict=True)]
        if not rows:
            raise ValueError("cannot collate an empty list of rows")
        side = self.padding_side
        input_ids = [row["input_ids"] for row in rows]
        batch = {
            "input_ids": pad_sequences(input_ids, self.pad_token_id, side, self.pad_to_multiple_of),
            "attention_mask": pad_sequences([[1] * len(ids) for ids in input_ids], 0, side, self.pad_to_multiple_of),
        }
        if "labels" in rows[0]:
            labels = [row["labels"] for row in rows]
            if self.kind == "encoder":
                batch["labels"] = torch.as_tensor(labels, dtype=torch.long)
            else:
                # seq2seq labels are their own sequence; causal labels align with input_ids.
                batch["labels"] = pad_sequences(labels, IGNORE_INDEX, side, self.pad_to_multiple_of)
        batch["task_ids"] = torch.as_tensor([int(row["task_id"]) for row in rows], dtype=torch.long)
        batch["index"] = torch.as_tensor([int(row["index"]) for row in rows], dtype=torch.long)
        return batch


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
