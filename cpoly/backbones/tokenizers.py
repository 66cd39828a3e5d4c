"""Load a tokenizer and set it up for its kind of backbone."""

from __future__ import annotations

from typing import Any

from cpoly.backbones.config import BYT5_TOKENIZER


def load_tokenizer(tokenizer_id: str, *, revision: str | None = None, local_files_only: bool = False) -> Any:
    from transformers import AutoTokenizer, ByT5Tokenizer

    if tokenizer_id == BYT5_TOKENIZER:
        return ByT5Tokenizer()
    return AutoTokenizer.from_pretrained(tokenizer_id, revision=revision, local_files_only=local_files_only)


def prepare_tokenizer(tokenizer: Any, kind: str, backbone_name: str) -> Any:
    """Causal models: pad on the left so a batch of prompts ends where generation starts, and have a
    pad token (EOS when the tokenizer has none). Every generative model needs an EOS to stop on."""
    if kind == "causal":
        tokenizer.padding_side = "left"
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
    if kind != "encoder" and tokenizer.eos_token_id is None:
        raise ValueError(
            f"backbone {backbone_name}: tokenizer {type(tokenizer).__name__} has no EOS token, so generation "
            "could not stop; set backbone.tokenizer_id to a tokenizer that has one"
        )
    if tokenizer.pad_token_id is None:
        raise ValueError(
            f"backbone {backbone_name}: tokenizer {type(tokenizer).__name__} has no pad token; "
            "set backbone.tokenizer_id to a tokenizer that has one"
        )
    return tokenizer
