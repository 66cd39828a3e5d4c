"""`SkilledLinear`: a frozen linear layer plus a skilled LoRA delta (DESIGN.md section 2).

Tensors, in PEFT Poly's layout so its adapters import by plain copy:
  shared skills  shared_A (S, K_A, d_in/S, r)    shared_B (S, K, r, d_out/S)      (K_A = K, or 1: one shared A)
  task skills    task_A   (S, T*B, d_in/S, r)    task_B   (S, T*B, r, d_out/S)
  routing        allocation.logits (T, S*K)      task_weights.weight (T, T*B), (T, B) for block
                 gate.proj.weight (K, d_in) (token-routed methods)   bottleneck.weight (T, r, r) or (T, r)
Output: h = W0 x + (alpha / r) * x A~ Lambda_t B~, where A~ and B~ mix the skills with each example's
weights ("params" mixing) and Lambda_t is the identity unless there is a per-task bottleneck; or the
weighted sum of each skill's own x A_k B_k ("outputs" mixing). Token-routed methods weigh each token's
skills by a gate on that token: sum_k g_k(x) x A_k B_k (with one shared A: x A sum_k g_k(x) B_k).

Exclusive (task) skills are stored packed, `task_A` / `task_B` above, whatever W_B is: trainable (dense)
W_B mixes all T*B skills for every example (a matmul); fixed and block W_B gather each example's own
task's skills (and, block, its row of weights). Either way every skill is one slice of one Parameter, so
every step gives all of them a gradient (zero for the skills no example used) and AdamW steps them all:
the one rule of `docs/design-decisions.md`, as PEFT Poly and mttl step their packed tensors.

Routing noise (training-mode relaxed-Bernoulli samples) is drawn from `torch.rand` unless the batch
carries per-example noise keys (`use_tasks(..., noise_keys=...)`, as the trainer does): then each
example's uniforms are a hash of its key, the layer's index and the element, so an example's noise is
the same whichever process or micro-batch holds it (`cpoly.skills.router.keyed_uniforms`).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from cpoly.skills.config import SkillConfig
from cpoly.skills.router import (
    RoutingState,
    SharedAllocation,
    TaskBatch,
    TaskBottleneck,
    TaskSkillWeights,
    TokenGate,
)
from cpoly.skills.settings import LAYER_FIELD_NAMES, LAYER_FIELDS

ADAPTABLE_TYPES = (nn.Linear, Conv1D)


def linear_shape(module: nn.Module) -> tuple[int, int]:
    """(d_in, d_out) of an nn.Linear or a transformers Conv1D (whose weight is stored transposed)."""
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    if isinstance(module, Conv1D):
        d_in, d_out = module.weight.shape
        return d_in, d_out
    raise TypeError(f"cannot adapt {type(module).__name__}: only nn.Linear and Conv1D")


def _skill_pair(
    n_splits: int, n: int, d_in: int, d_out: int, rank: int, n_a: int | None = None
) -> tuple[nn.Parameter, nn.Parameter]:
    """n LoRA skills per split (n_a down-projections, n if None): A ~ U(+-1/sqrt(d_in/S)) (Kaiming-uniform,
    a=sqrt(5)), B = 0."""
    bound = 1.0 / math.sqrt(d_in // n_splits)
    a = torch.empty(n_splits, n if n_a is None else n_a, d_in // n_splits, rank).uniform_(-bound, bound)
    b = torch.zeros(n_splits, n, rank, d_out // n_splits)
    return nn.Parameter(a), nn.Parameter(b)


def _add_scaled_product(result: torch.Tensor, left: torch.Tensor, right: torch.Tensor, scaling: float) -> torch.Tensor:
    """result + scaling * left @ right: left (..., r) has result's leading dims; right is (r, d_out) for
    all tokens, or (n, r, d_out) per example with left (n, L, r).

    One fused matmul-and-add: the delta is never written out, scaled and added in separate passes over
    the (tokens x d_out) output (three passes, half of a PEFT LoRA layer's time). It adds in place into
    the base layer's output, which is fresh and not saved for its backward (an out-of-place add would
    first copy it whole)."""
    device = result.device.type
    if torch.is_autocast_enabled(device) and result.dtype == torch.get_autocast_dtype(device):
        # in-place ops are not autocast: cast the operands as the out-of-place op would be
        left, right = left.to(result.dtype), right.to(result.dtype)
    if not result.dtype == left.dtype == right.dtype:  # a low-precision backbone: add in its dtype, as PEFT does
        return result + (torch.matmul(left, right) * scaling).to(result.dtype)
    if result._is_view() or result.shape[:-1] != left.shape[:-1] or left.dim() > 3:
        # add into a copy, as an out-of-place op would (in place into a view would copy in backward):
        # Conv1D's output is a view; 2-d inputs give (N, d_out) results for (N, 1, r) products
        lead = (-1,) if right.dim() == 2 else (right.shape[0], -1)
        out = result.reshape(*lead, right.shape[-1]).clone()
        return _add_product_(out, left.reshape(*lead, right.shape[-2]), right, scaling).view(result.shape)
    return _add_product_(result, left, right, scaling)


def _add_product_(out: torch.Tensor, left: torch.Tensor, right: torch.Tensor, scaling: float) -> torch.Tensor:
    """out += scaling * left @ right in place, for left (N, r) or (n, L, r)."""
    if left.dim() == 2:
        return out.addmm_(left, right, alpha=scaling)
    return out.baddbmm_(left, right.expand(left.shape[0], *right.shape[-2:]), alpha=scaling)


class SkilledLinear(nn.Module):
    """Wraps one linear layer; the wrapped layer stays frozen as `base_layer`."""

    def __init__(self, base_layer: nn.Module, config: SkillConfig, routing: RoutingState, index: int = 0) -> None:
        """`index`: the layer's position among the model's adapted layers, which keys its routing noise."""
        super().__init__()
        self.base_layer = base_layer
        self.d_in, self.d_out = linear_shape(base_layer)
        self.config = config
        self.routing = routing
        self.index = index
        c = config
        n_tasks, S, K, B, r = c.n_tasks, c.n_splits, c.n_skills, c.n_task_skills, c.rank
        for name, dim in (("d_in", self.d_in), ("d_out", self.d_out)):
            if dim % S:
                raise ValueError(f"SkillConfig.n_splits={S}: does not divide {name}={dim} of this layer")
        if K:
            self.shared_A, self.shared_B = _skill_pair(S, K, self.d_in, self.d_out, r, n_a=c.n_skills_a)
        if B:
            self.task_A, self.task_B = _skill_pair(S, n_tasks * B, self.d_in, self.d_out, r)
            self.task_weights = TaskSkillWeights(n_tasks, B, c.task_weights)
        if c.has_learned_allocation:
            self.allocation = SharedAllocation(n_tasks, S, K, c.temperature, layer_index=index, kind=c.allocation)
        if c.bottleneck != "none":
            self.bottleneck = TaskBottleneck(n_tasks, r, c.bottleneck)
        if c.token_routed:
            # the registry's gate init (MixLoRA's router starts N(0, 0.02)); None keeps nn.Linear's (Kaiming-uniform)
            self.gate = TokenGate(self.d_in, K, c.temperature, c.top_k, init_std=c.spec.gate_init_std)
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

    def _adapter_tensor(self) -> torch.Tensor:
        """Any adapter tensor: its dtype and device are the adapter's."""
        return self.shared_A if self.n_shared else self.task_A

    def adapter_tensors(self) -> dict[str, torch.Tensor]:
        """The adapter's Parameters by saved name (`shared_A`, `task_A`, `allocation.logits`, ...), in PEFT
        Poly's packed layout."""
        return {name: p for name, p in self.named_parameters() if not name.startswith("base_layer.")}

    @torch.no_grad()
    def load_adapter_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        """Copy tensors named and shaped as `adapter_tensors()` into the adapter."""
        for name, value in tensors.items():
            self.get_parameter(name).copy_(value)

    # -- forward ----------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        result = self.base_layer(x, *args, **kwargs)
        h = x.to(self._adapter_tensor().dtype)
        scaling = self.config.scaling
        if self.config.token_routed:
            experts_b = self.shared_B[0].reshape(-1, self.d_out)  # (K*r, d_out)
            return _add_scaled_product(result, self._gated_expert_inputs(h), experts_b, scaling)
        if self.config.spec.routing == "none":  # one LoRA for every input
            return _add_scaled_product(result, h @ self.shared_A[0, 0], self.shared_B[0, 0], scaling)
        x3 = h.reshape(h.shape[0], -1, self.d_in)
        batch, repeats = self._task_batch(x3.shape[0])
        if self.config.mixing == "outputs":
            delta = self._output_mixed_delta(x3, batch, repeats).reshape(*h.shape[:-1], self.d_out)
            return result + (delta * scaling).to(result.dtype)
        a, b = self.mixed_lora(batch)
        if repeats > 1:
            a, b = a.repeat_interleave(repeats, 0), b.repeat_interleave(repeats, 0)
        return _add_scaled_product(result, x3.bmm(a), b, scaling)

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
        if batch_size != n and not (self.routing.generating and batch_size % n == 0):
            raise ValueError(
                f"{self.config.method}: a batch of {batch_size} inputs was routed with {n} task ids: give "
                "use_tasks one task per example (only generate() may expand the batch, by beams and returned "
                "sequences, to a multiple of the task ids)"
            )
        return batch.to(self._adapter_tensor().device), batch_size // n

    def shared_weights(self, batch: TaskBatch) -> torch.Tensor:
        """(b, S, K) weights of the shared skills."""
        if self.config.has_learned_allocation:
            return self.allocation(batch)
        b, S, K = batch.ids.shape[0], self.config.n_splits, self.n_shared
        return torch.full((b, S, K), 1.0 / K, device=batch.ids.device, dtype=self._adapter_tensor().dtype)

    def mixed_lora(self, batch: TaskBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """Each example's mixed A~ (b, d_in, r) and B~ (b, r, d_out), split-major."""
        n, S, r = batch.ids.shape[0], self.config.n_splits, self.config.rank
        a = b = None  # flat (b, S * d_in/S * r) and (b, S * r * d_out/S), in the packed skills' order
        if self.n_shared:
            a, b = self._shared_mixture(self.shared_weights(batch))
        if self.n_task:
            a, b = self._add_task_mixture(batch, a, b)
        b = b.view(n, S, r, self.d_out // S).transpose(1, 2)  # (b, r, S, d_out/S): output blocks split-major
        a = a.view(n, self.d_in, r)
        if self.config.bottleneck != "none":
            a = self.bottleneck(a, batch)
        return a, b.reshape(n, r, self.d_out)

    def _shared_mixture(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """sum_k w[:, q, k] * skill[q, k] for A and B, flattened per example."""
        n = w.shape[0]
        if self.config.n_splits == 1:  # one matmul each over the flattened skills (einsum: more ops a call)
            w = w.view(n, self.n_shared)
            mix_a = lambda: w @ self.shared_A.view(self.n_shared, -1)  # noqa: E731
            b = w @ self.shared_B.view(self.n_shared, -1)
        else:
            mix_a = lambda: torch.einsum("bqk,qkdr->bqdr", w, self.shared_A).reshape(n, -1)  # noqa: E731
            b = torch.einsum("bqk,qkro->bqro", w, self.shared_B).reshape(n, -1)
        if self.config.asymmetric:  # one A for every B: the same A~ for every example
            return self.shared_A.view(1, -1).expand(n, -1), b
        return mix_a(), b

    def _add_task_mixture(
        self, batch: TaskBatch, a: torch.Tensor | None, b: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """a + the exclusive skills' mixture for A, the same for B (flattened as `_shared_mixture`)."""
        n = batch.ids.shape[0]
        if self.task_weights.dense:
            w = self.task_weights(batch)  # (b, T*B): a matmul over all tasks' skills, added to a in it
            skills_a = self.task_A.transpose(0, 1).reshape(w.shape[1], -1)
            skills_b = self.task_B.transpose(0, 1).reshape(w.shape[1], -1)
            if a is None:
                return w @ skills_a, w @ skills_b
            return torch.addmm(a, w, skills_a), torch.addmm(b, w, skills_b)
        own_a, own_b = self._own_task_skills(batch)
        if self.task_weights.block:
            w = self.task_weights(batch).view(n, 1, self.n_task, 1, 1)  # each example's row of its own block
            ta, tb = (w * own_a).sum(2).reshape(n, -1), (w * own_b).sum(2).reshape(n, -1)
        else:
            ta, tb = own_a.mean(2).reshape(n, -1), own_b.mean(2).reshape(n, -1)
        if a is None:
            return ta, tb
        return a + ta, b + tb

    def _own_task_skills(self, batch: TaskBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """Fixed and block weights: each example's own task's B skills gathered from the packed tensors,
        (b, S, B, d_in/S, r) and (b, S, B, r, d_out/S), zeros for an unknown task."""
        B = self.n_task
        columns = (batch.rows[:, None] * B + torch.arange(B, device=batch.ids.device)).reshape(-1)  # (b*B,)
        own = []
        for skills in (self.task_A, self.task_B):
            picked = skills.index_select(1, columns).unflatten(1, (-1, B)).transpose(0, 1)  # (b, S, B, ...)
            if not batch.all_known:
                picked = picked * batch.known.view(-1, 1, 1, 1, 1).to(picked.dtype)
            own.append(picked)
        return own[0], own[1]

    def _output_mixed_delta(self, x3: torch.Tensor, batch: TaskBatch, repeats: int) -> torch.Tensor:
        """sum_k w_k (x A_k) B_k over shared and exclusive skills (n_splits == 1)."""
        delta = None
        if self.n_shared:
            w = self.shared_weights(batch)[:, 0].repeat_interleave(repeats, 0)  # (b, K)
            if self.config.asymmetric:  # x A (sum_k w_k B_k)
                mixed_b = (w @ self.shared_B[0].reshape(self.n_shared, -1)).view(-1, self.config.rank, self.d_out)
                delta = (x3 @ self.shared_A[0, 0]).bmm(mixed_b)
            else:
                xa = torch.einsum("bld,kdr->blkr", x3, self.shared_A[0]) * w[:, None, :, None]
                delta = torch.einsum("blkr,kro->blo", xa, self.shared_B[0])
        if self.n_task:
            if self.task_weights.dense:
                w = self.task_weights(batch).repeat_interleave(repeats, 0)  # (b, T*B)
                xa = torch.einsum("bld,jdr->bljr", x3, self.task_A[0]) * w[:, None, :, None]
                part = torch.einsum("bljr,jro->blo", xa, self.task_B[0])
            else:
                own_a, own_b = (s[:, 0].repeat_interleave(repeats, 0) for s in self._own_task_skills(batch))
                xa = torch.einsum("bld,bjdr->bljr", x3, own_a)
                if self.task_weights.block:
                    w = self.task_weights(batch).repeat_interleave(repeats, 0)  # (b, B)
                    part = torch.einsum("bljr,bjro->blo", xa * w[:, None, :, None], own_b)
                else:
                    part = torch.einsum("bljr,bjro->blo", xa, own_b) / self.n_task
            delta = part if delta is None else delta + part
        return delta

    def _gated_expert_inputs(self, x: torch.Tensor) -> torch.Tensor:
        """Token-routed methods: gate_k(x) * x A_k for every token and expert (x A, the one shared A, for
        every head), (..., K*r); times the experts' stacked B (K*r, d_out) this is the gated sum of the
        experts' outputs. In training, with a load-balancing loss, the gate's routing statistics are left
        in the routing state under this layer's index."""
        c = self.config
        with_aux = c.aux_loss_coef > 0 and self.training and torch.is_grad_enabled()
        gates, stats = self.gate(x, with_stats=with_aux)  # (..., K)
        if stats is not None:
            self.routing.gate_stats[self.index] = stats
        if c.asymmetric:
            xa = (x @ self.shared_A[0, 0]).unsqueeze(-2) * gates.unsqueeze(-1)
        else:
            xa = torch.einsum("...d,kdr->...kr", x, self.shared_A[0]) * gates.unsqueeze(-1)
        return xa.flatten(-2)

    def extra_repr(self) -> str:
        """The method, the layer's shape and task count, its skill counts and rank, and every other layer
        setting (LayerSettings' fields) that differs from the method's default (its registry entry)."""
        c = self.config
        defaults = {f.name: f.default for f in LAYER_FIELDS} | c.spec.settings()
        shown = [f"method={c.method}, d_in={self.d_in}, d_out={self.d_out}, T={c.n_tasks}"]
        for name in LAYER_FIELD_NAMES:
            if name in ("rank", "n_skills", "n_task_skills", "n_splits") or getattr(c, name) != defaults[name]:
                shown.append(f"{name}={getattr(c, name)}")
        return ", ".join(shown)
