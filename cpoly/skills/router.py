"""Routing: which skills an example uses, and with what weight.

- `SharedAllocation`: the learned task-to-skill allocation Z over the shared skills (Poly, MHR, the
  shared half of C-Poly, MTL-LoRA's up-projections): relaxed-Bernoulli samples while training, sigmoid
  at evaluation, normalised within each split (PEFT's Poly router, the same tensors and formulas); or a
  softmax with a temperature (MTL-LoRA).
- `TaskSkillWeights`: the weights W_B of the exclusive skills (C-Poly): block-diagonal 1/B at init,
  trainable (dense), fixed, or trainable within the blocks only.
- `TaskBottleneck`: MTL-LoRA's per-task r x r matrix Lambda_t (or its diagonal) between A and B.
- `TokenGate`: the token-level softmax gate of moe_lora, hydralora and mixlora, optionally top-k, and
  its load-balancing loss.
- `RoutingState`: the task ids of the current batch, shared by every adapted layer of a model and set
  by `use_tasks`.
- `example_noise_keys` / `keyed_uniforms`: routing noise that belongs to the example. A counter-based
  hash of (seed, step, the example's position in the global batch), then of (layer, element), gives
  the same uniforms to an example whichever process or micro-batch holds it, with no generator state.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

NORMALISATION_EPS = 1e-12  # as PEFT Poly: keeps an all-zero row finite


_MASK32 = 0xFFFFFFFF


def _mix32(x):
    """A 32-bit integer hash (xor-shift-multiply rounds) of values in [0, 2**32): Python ints or int64
    tensors. The multipliers are below 2**31, so no product overflows int64: the same bits on every
    device."""
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & _MASK32
    x = x ^ (x >> 15)
    x = (x * 0x2C1B3C6D) & _MASK32
    return x ^ (x >> 16)


def _combine(key: torch.Tensor, value: torch.Tensor | int) -> torch.Tensor:
    """The hash of (key, value), elementwise (broadcasting)."""
    return _mix32(key ^ _mix32(value & _MASK32))


def example_noise_keys(seed: int, step: int, positions: torch.Tensor) -> torch.Tensor:
    """One int64 key in [0, 2**32) per example, from the run's seed, the optimizer step and each example's
    position in the step's global batch (int64 tensor): the example's noise, wherever it is computed."""
    key = torch.full_like(positions, _mix32(seed & _MASK32))
    return _combine(_combine(key, step), positions)


def keyed_uniforms(keys: torch.Tensor, stream: int, n: int, dtype: torch.dtype) -> torch.Tensor:
    """(len(keys), n) uniforms in (0, 1): element j of row i hashes (keys[i], stream, j). 24 random bits
    per value, enough for float32 and below."""
    per_stream = _combine(keys, stream)
    bits = _combine(per_stream[:, None], torch.arange(n, device=keys.device)[None, :]) >> 8
    return ((bits.to(torch.float64) + 0.5) * 2.0**-24).to(dtype)


@dataclass(frozen=True)
class TaskBatch:
    """Task ids of a batch (-1 marks an unknown task), whether any is unknown, and optionally one routing
    noise key per example (`example_noise_keys`; None: noise from torch's global generator)."""

    ids: torch.Tensor
    all_known: bool
    noise_keys: torch.Tensor | None = None

    @property
    def known(self) -> torch.Tensor:
        return self.ids >= 0

    @property
    def rows(self) -> torch.Tensor:
        """The ids as row indices of per-task tensors: an unknown task (-1) reads row 0, which callers
        then mask by `known`."""
        return self.ids if self.all_known else self.ids.clamp(min=0)

    def to(self, device: torch.device) -> TaskBatch:
        if self.ids.device == device:
            return self
        keys = None if self.noise_keys is None else self.noise_keys.to(device)
        return TaskBatch(self.ids.to(device), self.all_known, keys)


def relaxed_bernoulli_sample(
    logits: torch.Tensor, temperature: float, uniforms: torch.Tensor | None = None
) -> torch.Tensor:
    """`torch.distributions.RelaxedBernoulli(temperature, logits=logits).rsample()`, written out: the same
    clamps, the same single `torch.rand` draw and bit-identical values and gradients (so PEFT Poly's
    training-mode routing is reproduced exactly), without building a distribution object per call.
    `uniforms` (logits' shape) replaces the `torch.rand` draw."""
    eps = torch.finfo(logits.dtype).eps
    probs = torch.sigmoid(logits).clamp(eps, 1 - eps)
    if uniforms is None:
        uniforms = torch.rand(logits.shape, dtype=logits.dtype, device=logits.device)
    uniforms = uniforms.clamp(eps, 1 - eps)
    noisy = (uniforms.log() - (-uniforms).log1p() + probs.log() - (-probs).log1p()) / temperature
    return torch.sigmoid(noisy).clamp(torch.finfo(noisy.dtype).tiny, 1 - eps)


class RoutingState:
    """Holds the current `TaskBatch` for all adapted layers of one model (a plain object: nothing of it
    is a parameter or buffer, so it never reaches a state dict)."""

    def __init__(self) -> None:
        self.batch: TaskBatch | None = None
        self.generating = False  # inside generate(): beams and returned sequences repeat each task id
        # token gates' routing statistics of the last training forward, by layer index (`GateStats`;
        # `cpoly.skills.pop_aux_loss` pools them into the load-balancing loss)
        self.gate_stats: dict[int, GateStats] = {}


class SharedAllocation(nn.Module):
    """Task-to-skill allocation logits Z (T, S*K), init U(-1e-3, 1e-3); `kind` is the config's
    `allocation`: "bernoulli" (Poly) or "softmax" (MTL-LoRA: softmax(Z_t / temperature), no noise)."""

    def __init__(
        self,
        n_tasks: int,
        n_splits: int,
        n_skills: int,
        temperature: float,
        layer_index: int = 0,
        kind: str = "bernoulli",
    ) -> None:
        super().__init__()
        self.n_splits, self.n_skills, self.temperature, self.kind = n_splits, n_skills, temperature, kind
        self.layer_index = layer_index  # the noise stream of this layer, with keyed noise
        self.logits = nn.Parameter(torch.empty(n_tasks, n_splits * n_skills))
        nn.init.uniform_(self.logits, -1e-3, 1e-3)

    def forward(self, batch: TaskBatch) -> torch.Tensor:
        """Mixing weights (b, S, K) for the shared skills."""
        z = self.logits[batch.rows].view(-1, self.n_splits, self.n_skills)
        if self.kind == "softmax":
            w = F.softmax(z / self.temperature, dim=-1)
            if not batch.all_known:  # unknown tasks: uniform over the shared skills
                w = torch.where(batch.known.view(-1, 1, 1), w, torch.full_like(w, 1.0 / self.n_skills))
            return w
        if self.training:
            uniforms = None
            if batch.noise_keys is not None:
                uniforms = keyed_uniforms(batch.noise_keys, self.layer_index, z[0].numel(), z.dtype).view_as(z)
            z = relaxed_bernoulli_sample(z, self.temperature, uniforms)
        else:
            z = torch.sigmoid(z)
        if not batch.all_known:  # unknown tasks: uniform over the shared skills
            z = torch.where(batch.known.view(-1, 1, 1), z, torch.ones_like(z))
        return z / (z.sum(-1, keepdim=True) + NORMALISATION_EPS)

    def probabilities(self) -> torch.Tensor:
        """The evaluation-mode allocation of every task, (T, S, K)."""
        if self.kind == "softmax":
            return F.softmax(self.logits.view(-1, self.n_splits, self.n_skills) / self.temperature, dim=-1)
        z = torch.sigmoid(self.logits).view(-1, self.n_splits, self.n_skills)
        return z / (z.sum(-1, keepdim=True) + NORMALISATION_EPS)


class TaskSkillWeights(nn.Module):
    """Exclusive-skill weights W_B (T, T*B): block-diagonal 1/B on a task's own B skills at init.

    `mode` is the config's `task_weights`:
    - `fixed`: never materialised: each example averages its own task's B skills (see `SkilledLinear`),
      so the cost does not grow with the number of tasks;
    - `trainable`: the dense (T, T*B) matrix: every example mixes all T*B skills (the paper lets
      off-diagonal entries learn; the authors' code);
    - `block`: only the diagonal blocks are stored, `weight` (T, B), row t the weights of task t's own B
      skills (the paper's Eq. 2); each example gathers its own task's row and skills, so the cost does
      not grow with the number of tasks either."""

    def __init__(self, n_tasks: int, n_task_skills: int, mode: str) -> None:
        super().__init__()
        self.n_tasks, self.n_task_skills, self.mode = n_tasks, n_task_skills, mode
        if mode != "fixed":
            self.weight = nn.Parameter(self.initial_weight())

    @property
    def dense(self) -> bool:
        """The dense (T, T*B) matrix: each example mixes every task's skills."""
        return self.mode == "trainable"

    @property
    def block(self) -> bool:
        return self.mode == "block"

    def initial_weight(self) -> torch.Tensor:
        """The stored weights at init: (T, T*B) block-diagonal 1/B, or its (T, B) blocks for `block`."""
        if self.block:
            return torch.full((self.n_tasks, self.n_task_skills), 1.0 / self.n_task_skills)
        eye = torch.eye(self.n_tasks)
        return torch.repeat_interleave(eye, self.n_task_skills, dim=1) / self.n_task_skills

    def full(self) -> torch.Tensor:
        """W_B as the (T, T*B) matrix, zeros off the blocks where only they exist."""
        if self.block:
            eye = torch.eye(self.n_tasks, dtype=self.weight.dtype, device=self.weight.device)
            return (eye[:, :, None] * self.weight[:, None, :]).reshape(self.n_tasks, -1)
        return self.weight if self.dense else self.initial_weight()

    def forward(self, batch: TaskBatch) -> torch.Tensor:
        """Stored weights only: rows of `weight` for the batch, (b, T*B) dense or (b, B) block; zero rows
        for unknown tasks."""
        rows = self.weight[batch.rows]
        if not batch.all_known:
            rows = rows * batch.known.unsqueeze(-1).to(rows.dtype)
        return rows


class TaskBottleneck(nn.Module):
    """MTL-LoRA's per-task transform Lambda_t between the down- and up-projection: `weight` (T, r, r),
    identity at init ("full"), or its diagonal (T, r), ones at init ("diagonal"). An unknown task gets
    the identity."""

    def __init__(self, n_tasks: int, rank: int, kind: str) -> None:
        super().__init__()
        self.kind = kind
        eye = torch.eye(rank)
        self.weight = nn.Parameter(eye.repeat(n_tasks, 1, 1) if kind == "full" else torch.ones(n_tasks, rank))

    def forward(self, a: torch.Tensor, batch: TaskBatch) -> torch.Tensor:
        """a (b, d_in, r) -> a Lambda_t, each example by its own task's Lambda."""
        lam = self.weight[batch.rows]
        if not batch.all_known:
            identity = torch.eye(a.shape[-1], dtype=lam.dtype, device=lam.device)
            identity = identity if self.kind == "full" else identity.diagonal()
            lam = torch.where(batch.known.view(-1, *[1] * (lam.dim() - 1)), lam, identity)
        return a.bmm(lam) if self.kind == "full" else a * lam[:, None, :]


class TokenGate(nn.Module):
    """A softmax gate on each token over the K experts (moe_lora, hydralora's B heads, mixlora), optionally
    keeping the top k (renormalised, as Mixtral and MixLoRA do)."""

    def __init__(
        self, in_features: int, n_experts: int, temperature: float, top_k: int | None, init_std: float | None = None
    ) -> None:
        super().__init__()
        self.proj = nn.Linear(in_features, n_experts, bias=False)
        if init_std is not None:
            nn.init.normal_(self.proj.weight, std=init_std)
        self.temperature, self.top_k = temperature, top_k

    def forward(self, x: torch.Tensor, with_stats: bool = False) -> tuple[torch.Tensor, GateStats | None]:
        """The gates (..., K) and, if asked, these tokens' routing statistics (for the load-balancing loss)."""
        probs = F.softmax(self.proj(x.to(self.proj.weight.dtype)) / self.temperature, dim=-1)
        gates, chosen = probs, None
        if self.top_k is not None and self.top_k < probs.shape[-1]:
            top, chosen = probs.topk(self.top_k, dim=-1)
            gates = torch.zeros_like(probs).scatter(-1, chosen, top / top.sum(-1, keepdim=True))
        if not with_stats:
            return gates, None
        if chosen is None:  # a dense gate: each token counts for its largest gate
            chosen = probs.argmax(-1, keepdim=True)
        return gates, GateStats.of(probs, chosen)


@dataclass(frozen=True)
class GateStats:
    """What the load-balancing loss needs from one gate's tokens: per expert, the number of a token's
    choices that went to it (`routed`, a token's k choices each count) and the summed gate probabilities
    (`probability`), and the number of tokens. Summed over layers, they pool every layer's tokens, as
    Mixtral's and MixLoRA's losses do."""

    routed: torch.Tensor  # (K,)
    probability: torch.Tensor  # (K,)
    tokens: int

    @staticmethod
    def of(probs: torch.Tensor, chosen: torch.Tensor) -> GateStats:
        n_experts = probs.shape[-1]
        probs = probs.reshape(-1, n_experts)
        routed = F.one_hot(chosen.reshape(probs.shape[0], -1), n_experts).sum((0, 1)).to(probs.dtype)
        return GateStats(routed, probs.sum(0), probs.shape[0])

    def __add__(self, other: GateStats) -> GateStats:
        return GateStats(self.routed + other.routed, self.probability + other.probability, self.tokens + other.tokens)

    def loss(self) -> torch.Tensor:
        """The Switch Transformer / Mixtral auxiliary loss K * sum_i f_i P_i: f_i the share of tokens routed
        to expert i, P_i its mean gate probability. 1 when top-1 routing is uniform, k for top-k; it grows
        as routing concentrates. Only P carries a gradient (to the gate)."""
        n = max(self.tokens, 1)
        return self.routed.shape[0] * ((self.routed / n) * (self.probability / n)).sum()
