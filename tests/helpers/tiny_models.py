"""Tiny randomly initialised models of the architecture classes the skill library supports."""

from __future__ import annotations

import torch
from transformers import (
    BertConfig,
    BertModel,
    ByT5Tokenizer,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    T5Config,
    T5ForConditionalGeneration,
)

TASKS = ["task_a", "task_b", "task_c"]


def tiny_t5(seed: int = 0) -> T5ForConditionalGeneration:
    torch.manual_seed(seed)
    config = T5Config(
        vocab_size=384,
        d_model=32,
        d_ff=64,
        num_layers=2,
        num_decoder_layers=2,
        num_heads=4,
        d_kv=8,
        decoder_start_token_id=0,
        pad_token_id=0,
        eos_token_id=1,
    )
    return T5ForConditionalGeneration(config).eval()


# Sizes of the tiny decoder-only models (Llama, Qwen2 classes).
TINY_DECODER = dict(
    vocab_size=384,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=128,
)


def tiny_llama(seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        **TINY_DECODER,
        pad_token_id=0,
        bos_token_id=2,
        eos_token_id=1,
    )
    return LlamaForCausalLM(config).eval()


def tiny_bert(seed: int = 0) -> BertModel:
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=384,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=128,
    )
    return BertModel(config).eval()


def tiny_gpt2(seed: int = 0) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=384, n_embd=32, n_layer=2, n_head=4, n_positions=128)
    return GPT2LMHeadModel(config).eval()


def t5_batch(texts=("hello world", "abc", "a longer input here")):
    tok = ByT5Tokenizer()
    enc = tok(list(texts), return_tensors="pt", padding=True)
    labels = tok([t[::-1][:6] for t in texts], return_tensors="pt", padding=True).input_ids
    labels[labels == tok.pad_token_id] = -100
    return {"input_ids": enc.input_ids, "attention_mask": enc.attention_mask, "labels": labels}


def logits_and_generation(model, tasks=("task_b", "task_c", "task_a")):
    """A skilled tiny T5's logits on `t5_batch()` and its beam-search generation (2 beams), routed by `tasks`."""
    from cpoly import use_tasks

    batch = t5_batch()
    with use_tasks(model, list(tasks)):
        logits = model(**batch).logits
        tokens = model.generate(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], num_beams=2, max_new_tokens=5
        )
    return logits, tokens


def causal_batch(n: int = 3, length: int = 9):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, 384, (n, length), generator=g)
    mask = torch.ones_like(ids)
    mask[0, :3] = 0  # left padding on one row
    return {"input_ids": ids, "attention_mask": mask, "labels": ids.masked_fill(mask == 0, -100)}


def randomize_adapters(model: torch.nn.Module, std: float = 0.3) -> None:
    """Non-zero B and allocation so adapters change outputs (a fresh adapter is an identity)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.requires_grad and any(k in name for k in ("shared_B", "task_B", "allocation", "task_weights")):
                p.add_(torch.randn_like(p) * std)
