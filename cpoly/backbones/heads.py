"""An encoder with one linear classification head per task (SuperGLUE with BERT-style backbones).

Each example is scored by its own task's head. Tasks have different label counts, so logits are
padded to the largest label set with MASKED_LOGIT: argmax and softmax never pick a padded label, and
cross-entropy over the padded row equals cross-entropy over the task's own labels.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn
from transformers.modeling_outputs import SequenceClassifierOutput

# Large enough that exp() underflows to 0 next to real logits; small enough for float16 and bfloat16.
MASKED_LOGIT = -1.0e4
POOLINGS = ("cls", "mean")


class TaskHeadClassifier(nn.Module):
    """`encoder` (an `AutoModel`) + pooling + `task_heads[t]`: Linear(hidden, len(task_labels[t])).

    Task ids index `task_labels` in insertion order. The heads are trained with the adapters (a skills
    library that freezes the backbone must keep `modules_to_save` trainable); they and the logits are
    float32 whatever the encoder's dtype.
    """

    # For `SkillConfig(modules_to_save=...)`: kept trainable and saved with the adapters.
    modules_to_save = ["task_heads"]

    def __init__(
        self,
        encoder: nn.Module,
        task_labels: Mapping[str, Sequence[str]],
        *,
        pooling: str = "cls",
        head_dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"TaskHeadClassifier.pooling={pooling!r}: must be one of {', '.join(POOLINGS)}")
        if not task_labels:
            raise ValueError("TaskHeadClassifier.task_labels={}: at least one task is needed")
        for task, labels in task_labels.items():
            if len(labels) < 2:
                raise ValueError(f"TaskHeadClassifier.task_labels[{task!r}]={list(labels)!r}: needs >= 2 labels")
        self.encoder = encoder
        self.config = encoder.config  # what trainers and adapter libraries look for on a model
        self.pooling = pooling
        self.task_names = list(task_labels)
        self.task_labels = {task: list(labels) for task, labels in task_labels.items()}
        hidden = encoder.config.hidden_size
        self.dropout = nn.Dropout(head_dropout)
        # float32 whatever the encoder's dtype, like the adapters: small, and trained.
        self.task_heads = nn.ModuleList(nn.Linear(hidden, len(labels)) for labels in task_labels.values())
        self.register_buffer(
            "num_labels",
            torch.tensor([len(labels) for labels in self.task_labels.values()]),
            persistent=False,
        )

    @property
    def max_labels(self) -> int:
        return max(len(labels) for labels in self.task_labels.values())

    def task_id(self, task: str) -> int:
        try:
            return self.task_names.index(task)
        except ValueError:
            raise KeyError(f"TaskHeadClassifier: unknown task {task!r}; known: {self.task_names}") from None

    def encode(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The pooled representation (b, hidden): first token, or the mean over non-padding tokens."""
        extra = {} if token_type_ids is None else {"token_type_ids": token_type_ids}
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask, **extra).last_hidden_state
        if self.pooling == "cls":
            return hidden[:, 0]
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        task_ids: torch.Tensor,
        labels: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> SequenceClassifierOutput:
        pooled = self.dropout(self.encode(input_ids, attention_mask, token_type_ids).float())
        task_ids = torch.as_tensor(task_ids, device=pooled.device)
        logits = pooled.new_full((pooled.shape[0], self.max_labels), MASKED_LOGIT)
        for task_id in task_ids.unique().tolist():
            if not 0 <= task_id < len(self.task_heads):
                raise IndexError(f"TaskHeadClassifier: task id {task_id} out of range [0, {len(self.task_heads)})")
            rows = task_ids == task_id
            head = self.task_heads[task_id]
            logits[rows, : head.out_features] = head(pooled[rows])
        loss = None
        if labels is not None:
            labels = labels.to(logits.device)
            if bool((labels < 0).any() | (labels >= self.num_labels[task_ids]).any()):
                raise ValueError(
                    f"TaskHeadClassifier: labels {labels.tolist()} out of range for tasks "
                    f"{task_ids.tolist()} (label counts {self.num_labels.tolist()})"
                )
            loss = nn.functional.cross_entropy(logits, labels)
        return SequenceClassifierOutput(loss=loss, logits=logits)

    @torch.no_grad()
    def predict(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        task_ids: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Label indices (b,), each within its task's label set."""
        logits = self.forward(input_ids, attention_mask, task_ids, token_type_ids=token_type_ids).logits
        return logits.argmax(dim=-1)

    # Activation checkpointing is the encoder's; the heads are cheap. Both spellings of transformers 5.
    def activation_checkpointing_enable(self, activation_checkpointing_kwargs=None, **kwargs) -> None:
        self.encoder.activation_checkpointing_enable(activation_checkpointing_kwargs, **kwargs)

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs=None, **kwargs) -> None:
        self.encoder.activation_checkpointing_enable(gradient_checkpointing_kwargs, **kwargs)

    @property
    def is_activation_checkpointing(self) -> bool:
        return self.encoder.is_activation_checkpointing
