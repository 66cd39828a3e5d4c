"""Evaluation: predict every example of a split (generation or classification), score per task.

Each process predicts its share of the examples; the predictions are gathered by example index, so
the scores are those of a single-process run. A sharded model (FSDP2) is gathered whole for the
evaluation, so no process waits for another's forwards (`cpoly.distributed.full_parameters`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import gather_object

from cpoly.data.collate import make_collator
from cpoly.data.example import Example
from cpoly.data.sampling import eval_batches
from cpoly.distributed import full_parameters
from cpoly.eval import score_by_task
from cpoly.skills import use_tasks

# Metric keys: `dev/<task>/<metric>` and `dev/avg/<metric>` (every evaluation), `test/<final|best>/...` (once,
# at the end). Selection reads dev only: `optimized_metric` is a `dev/avg/<metric>` key.
DEV_AVERAGE = "dev/avg/"


@dataclass
class Evaluation:
    scores: dict[str, dict[str, float]]  # per task and "avg"
    predictions: list[str]  # aligned with the eval examples


def _generate(
    model, batch: dict[str, torch.Tensor], kind: str, tokenizer, num_beams: int, max_new_tokens: int
) -> list[str]:
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    # synced_gpus=False: processes generate independently (a sharded model is whole here)
    out = model.generate(
        **inputs, num_beams=num_beams, max_new_tokens=max_new_tokens, do_sample=False, synced_gpus=False
    )
    if kind == "causal":  # left-padded prompts all end at the same column: keep what follows
        out = out[:, inputs["input_ids"].shape[1] :]
    return tokenizer.batch_decode(out, skip_special_tokens=True)


def _classify(model, batch: dict[str, torch.Tensor], examples: Sequence[Example]) -> list[str]:
    logits = model(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], task_ids=batch["task_ids"]
    ).logits
    labels = logits.argmax(-1).tolist()
    return [examples[i].choices[label] for i, label in zip(batch["index"].tolist(), labels, strict=True)]


@torch.no_grad()
def predict(
    model,
    accelerator: Accelerator,
    *,
    kind: str,
    tokenizer,
    dataset,
    examples: Sequence[Example],
    batch_size: int,
    num_beams: int,
    max_new_tokens: int,
) -> list[str]:
    """Predictions for `examples` (tokenised in `dataset`, row i = example i), in their order."""
    model.eval()
    collate = make_collator(tokenizer, kind, for_generation=kind != "encoder")
    mine: list[tuple[int, str]] = []
    batches = eval_batches(
        dataset["length"], batch_size, num_replicas=accelerator.num_processes, rank=accelerator.process_index
    )
    fsdp = accelerator.state.fsdp_plugin if accelerator.is_fsdp2 else None
    with full_parameters(model, reshard_after_forward=fsdp.reshard_after_forward if fsdp else None):
        for indices in batches:
            batch = {k: v.to(accelerator.device) for k, v in collate(dataset[indices]).items()}
            with use_tasks(model, batch["task_ids"]), accelerator.autocast():
                if kind == "encoder":
                    texts = _classify(model, batch, examples)
                else:
                    texts = _generate(model, batch, kind, tokenizer, num_beams, max_new_tokens)
            mine.extend(zip(batch["index"].tolist(), (t.strip() for t in texts), strict=True))
    gathered = gather_object(mine) if accelerator.num_processes > 1 else mine
    predictions: list[str | None] = [None] * len(examples)
    for index, text in gathered:
        predictions[index] = text
    missing = [i for i, p in enumerate(predictions) if p is None]
    if missing:
        raise RuntimeError(f"evaluation lost {len(missing)} predictions (first index {missing[0]})")
    return predictions  # type: ignore[return-value]


def evaluate(
    model, accelerator: Accelerator, *, metric: str, examples: Sequence[Example], **predict_kwargs: Any
) -> Evaluation:
    predictions = predict(model, accelerator, examples=examples, **predict_kwargs)
    return Evaluation(scores=score_by_task(metric, examples, predictions), predictions=predictions)
