"""`SkilledLinear`: a frozen linear layer plus a skilled LoRA delta (DESIGN.md section 2).

Tensors, in PEFT Poly's layout so its adapters import by plain copy:
  shared skills  shared_A (S, K, d_in/S, r)      shared_B (S, K, r, d_out/S)
  task skills    task_A   (S, T*B, d_in/S, r)    task_B   (S, T*B, r, d_out/S)
  routing        allocation.logits (T, S*K)      task_weights.weight (T, T*B)   gate (moe_lora)
Output: h = W0 x + (alpha / r) * x A~ B~, where A~ and B~ mix the skills with each example's weights
("params" mixing); or the weighted sum of each skill's own x A_k B_k ("outputs" mixing).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from cpoly.skills.config import SkillConfig
from cpoly.skills.router import RoutingState, SharedAllocation, TaskBatch, TaskSkillWeights, TokenGate

ADAPTABLE_TYPES = (nn.Linear, Conv1D)


def linear_shape(module: nn.Module) -> tuple[int, int]:
    """(d_in, d_out) of an nn.Linear or a transformers Conv1D (whose weight is stored transposed)."""
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    if isinstance(module, Conv1D):
        d_in, d_out = module.weight.shape
        return d_in, d_out
    raise TypeError(f"cannot adapt {type(module).__name__}: only nn.Linear and Conv1D")


def _skill_pair(n_splits: int, n: int, d_in: int, d_out: int, rank: int) -> tuple[nn.Parameter, nn.Parameter]:
    """n LoRA skills per split: A ~ U(+-1/sqrt(d_in/S)) (Kaiming-uniform, a=sqrt(5)), B = 0."""
    bound = 1.0 / math.sqrt(d_in // n_splits)
    a = torch.empty(n_splits, n, d_in // n_splits, rank).uniform_(-bound, bound)
    b = torch.zeros(n_splits, n, rank, d_out // n_splits)
    return nn.Parameter(a), nn.Parameter(b)


class SkilledLinear(nn.Module):
    """Wraps one linear layer; the wrapped layer stays frozen as `base_layer`."""

    def __init__(self, base_layer: nn.Module, config: SkillConfig, routing: RoutingState) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.d_in, self.d_out = linear_shape(base_layer)
        self.config = config
        self.routing = routing
        c = config
        n_tasks, S, K, B, r = c.n_tasks, c.n_splits, c.n_skills, c.n_task_skills, c.rank
        for name, dim in (("d_in", self.d_in), ("d_out", self.d_out)):
            if dim % S:
                raise ValueError(f"SkillConfig.n_splits={S}: does not divide {name}={dim} of this layer")
        if K:
            self.shared_A, self.shared_B = _skill_pair(S, K, self.d_in, self.d_out, r)
        if B:
            self.task_A, self.task_B = _skill_pair(S, n_tasks * B, self.d_in, self.d_out, r)
            self.task_weights = TaskSkillWeights(n_tasks, B, trainable=c.task_weights == "trainable")
        if c.has_learned_allocation:
            self.allocation = SharedAllocation(n_tasks, S, K, c.temperature)
        if c.method == "moe_lora":
            self.gate = TokenGate(self.d_in, K, c.temperature, c.top_k)
        self._move_to(base_layer)
        self.train(base_layer.training)  # new submodules start in training mode; follow the model's mode

    def _move_to(self, base_layer: nn.Module) -> None:
        # Adapters train in fp32 (or fp64 in tests) whatever the backbone dtype, as PEFT does.
        weight = base_layer.weight
        dtype = weight.dtype if weight.dtype in (torch.float32, torch.float64) else torch.float32
        self.to(device=weight.device)
        for name, p in self.named_parameters():
            if not name.startswith("base_layer."):
                p.data = p.data.to(dtype)

    # Model code reads these off its linear layers (T5 checks `wo.weight.dtype`, for one).
    @property
    def weight(self) -> torch.Tensor:
        return self.base_layer.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.base_layer.bias

    @property
    def n_shared(self) -> int:
        return self.config.n_skills

    @property
    def n_task(self) -> int:
        return self.config.n_task_skills

    # -- forward ----------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        result = self.base_layer(x, *args, **kwargs)
        dtype = self._adapter_dtype()
        h = x.to(dtype)
        if self.config.method == "moe_lora":
            delta = self._moe_delta(h)
        elif self.config.method == "shared_lora":
            delta = h @ self.shared_A[0, 0] @ self.shared_B[0, 0]
        else:
            delta = self._routed_delta(h)
        return result + (delta * self.config.scaling).to(result.dtype)

    def _adapter_dtype(self) -> torch.dtype:
        return (self.shared_A if self.n_shared else self.task_A).dtype

    def _task_batch(self, batch_size: int) -> tuple[TaskBatch, int]:
        """The current task ids and how often each repeats in this batch (beams, returned sequences)."""
        batch = self.routing.batch
        if batch is None:
            raise RuntimeError(
                f"method {self.config.method} routes by task but no task ids are set: run the model inside "
                "`with cpoly.use_tasks(model, tasks):` (with gradient checkpointing, call backward() inside it "
                "too, or enable checkpointing with cpoly.enable_gradient_checkpointing)"
            )
        n = batch.ids.shape[0]
        if batch_size % n:
            raise ValueError(f"batch of {batch_size} inputs does not match the {n} task ids given to use_tasks")
        return batch.to(self.shared_A.device if self.n_shared else self.task_A.device), batch_size // n

    def _routed_delta(self, x: torch.Tensor) -> torch.Tensor:
        x3 = x.reshape(x.shape[0], -1, self.d_in)
        batch, repeats = self._task_batch(x3.shape[0])
        if self.config.mixing == "outputs":
            delta = self._output_mixed_delta(x3, batch, repeats)
        else:
            a, b = self.mixed_lora(batch)
            if repeats > 1:
                a, b = a.repeat_interleave(repeats, 0), b.repeat_interleave(repeats, 0)
            delta = x3.bmm(a).bmm(b)
        return delta.reshape(*x.shape[:-1], self.d_out)

    def shared_weights(self, batch: TaskBatch) -> torch.Tensor:
        """(b, S, K) weights of the shared skills."""
        if self.config.has_learned_allocation:
            return self.allocation(batch)
        b, S, K = batch.ids.shape[0], self.config.n_splits, self.n_shared
        return torch.full((b, S, K), 1.0 / K, device=batch.ids.device, dtype=self._adapter_dtype())

    def mixed_lora(self, batch: TaskBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """Each example's mixed A~ (b, d_in, r) and B~ (b, r, d_out), split-major."""
        b, S, r = batch.ids.shape[0], self.config.n_splits, self.config.rank
        a = b_ = None
        if self.n_shared:
            w = self.shared_weights(batch)
            a = torch.einsum("bqk,qkdr->bqdr", w, self.shared_A)
            b_ = torch.einsum("bqk,qkro->bqro", w, self.shared_B)
        if self.n_task:
            ta, tb = self._task_mixture(batch)
            a = ta if a is None else a + ta
            b_ = tb if b_ is None else b_ + tb
        a = a.reshape(b, self.d_in, r)
        b_ = b_.transpose(1, 2).reshape(b, r, self.d_out)  # (b, r, S, d_out/S): output blocks split-major
        return a, b_

    def _task_mixture(self, batch: TaskBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """Exclusive skills mixed with W_B, (b, S, d_in/S, r) and (b, S, r, d_out/S)."""
        S = self.config.n_splits
        if self.task_weights.trainable:
            w = self.task_weights(batch)  # (b, T*B): a matmul over all tasks' skills
            a = (w @ self.task_A.transpose(0, 1).reshape(w.shape[1], -1)).view(-1, S, *self.task_A.shape[2:])
            b = (w @ self.task_B.transpose(0, 1).reshape(w.shape[1], -1)).view(-1, S, *self.task_B.shape[2:])
            return a, b
        # Fixed weights: gather each example's own B skills (cost independent of T).
        index = self.task_weights.own_skill_index(batch)  # (b, B)
        a = self.task_A[:, index].mean(2).transpose(0, 1)  # (S, b, B, d, r) -> (b, S, d, r)
        b = self.task_B[:, index].mean(2).transpose(0, 1)
        if not batch.all_known:
            keep = batch.known.view(-1, 1, 1, 1).to(a.dtype)
            a, b = a * keep, b * keep
        return a, b

    def _output_mixed_delta(self, x3: torch.Tensor, batch: TaskBatch, repeats: int) -> torch.Tensor:
        """sum_k w_k (x A_k) B_k over shared and exclusive skills (n_splits == 1)."""
        delta = None
        if self.n_shared:
            w = self.shared_weights(batch)[:, 0].repeat_interleave(repeats, 0)  # (b, K)
            xa = torch.einsum("bld,kdr->blkr", x3, self.shared_A[0]) * w[:, None, :, None]
            delta = torch.einsum("blkr,kro->blo", xa, self.shared_B[0])
        if self.n_task:
            if self.task_weights.trainable:
                w = self.task_weights(batch).repeat_interleave(repeats, 0)  # (b, T*B)
                xa = torch.einsum("bld,jdr->bljr", x3, self.task_A[0]) * w[:, None, :, None]
                part = torch.einsum("bljr,jro->blo", xa, self.task_B[0])
            else:
                index = self.task_weights.own_skill_index(batch).repeat_interleave(repeats, 0)  # (b, B)
                xa = torch.einsum("bld,bjdr->bljr", x3, self.task_A[0][index])
                part = torch.einsum("bljr,bjro->blo", xa, self.task_B[0][index]) / self.n_task
                if not batch.all_known:
                    part = part * batch.known.repeat_interleave(repeats, 0).view(-1, 1, 1).to(part.dtype)
            delta = part if delta is None else delta + part
        return delta

    def _moe_delta(self, x: torch.Tensor) -> torch.Tensor:
        gates = self.gate(x)  # (..., K)
        xa = torch.einsum("...d,kdr->...kr", x, self.shared_A[0]) * gates.unsqueeze(-1)
        return torch.einsum("...kr,kro->...o", xa, self.shared_B[0])

    def extra_repr(self) -> str:
        c = self.config
        return (
            f"method={c.method}, d_in={self.d_in}, d_out={self.d_out}, rank={c.rank}, K={c.n_skills}, "
            f"B={c.n_task_skills}, S={c.n_splits}, T={c.n_tasks}, mixing={c.mixing}"
        )
