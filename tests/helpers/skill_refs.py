"""Reference computations, configs and constants the skills tests share (formulas written out, reference
blocks of other packages, the block W_B config)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from torch import nn

from cpoly import SkillConfig, add_skills, use_tasks
from cpoly.skills import skilled_layers
from helpers.factories import skill_config
from helpers.tiny_models import TASKS, randomize_adapters, t5_batch, tiny_t5

FIVE = [f"task_{i}" for i in range(5)]


def block_config(task_names=TASKS, **overrides) -> SkillConfig:
    return skill_config("cpoly", task_names=task_names, task_weights="block", **overrides)


def shared_weights_at(layer, task: int, uniforms: torch.Tensor | None) -> torch.Tensor:
    """(S, K): sigmoid(Z[t]) at evaluation; in training the relaxed-Bernoulli sample of the uniforms,
    sigmoid((log u - log(1 - u) + Z[t]) / tau); normalised within each split."""
    c = layer.config
    logits = layer.allocation.logits[task].view(c.n_splits, c.n_skills)
    if uniforms is None:
        z = torch.sigmoid(logits)
    else:
        z = torch.sigmoid((uniforms.log() - torch.log1p(-uniforms) + logits) / c.temperature)
    return z / z.sum(-1, keepdim=True)


def block_reference_delta(layer, x, task: int, uniforms: torch.Tensor | None) -> torch.Tensor:
    """The delta of one example of `task` written out: A~ = sum_k w_k A_k + sum_{j<B} W_B[t, j] A_{tB+j},
    the same for B~, s * x A~ B~ (params mixing); or s * (sum_k w_k x A_k B_k + sum_j W_B[t, j] x A_j B_j)
    (outputs mixing)."""
    c = layer.config
    r, B = c.rank, c.n_task_skills
    w_shared = shared_weights_at(layer, task, uniforms)  # (S, K)
    w_own = layer.task_weights.weight[task]  # (B,): the task's block of W_B
    own = slice(task * B, (task + 1) * B)
    if c.mixing == "outputs":
        delta = sum(w_shared[0, k] * x @ layer.shared_A[0, k] @ layer.shared_B[0, k] for k in range(c.n_skills))
        for j, column in enumerate(range(own.start, own.stop)):
            delta = delta + w_own[j] * x @ layer.task_A[0, column] @ layer.task_B[0, column]
        return c.scaling * delta
    a = torch.einsum("qk,qkdr->qdr", w_shared, layer.shared_A)
    a = a + torch.einsum("j,qjdr->qdr", w_own, layer.task_A[:, own])
    b = torch.einsum("qk,qkro->qro", w_shared, layer.shared_B)
    b = b + torch.einsum("j,qjro->qro", w_own, layer.task_B[:, own])
    a_full = a.reshape(layer.d_in, r)  # rows split-major
    b_full = b.permute(1, 0, 2).reshape(r, layer.d_out)  # columns split-major
    return c.scaling * x @ a_full @ b_full


NEW_METHODS = ("mtl_lora", "hydralora", "mixlora")


MIXED_TASKS = ["task_b", "task_c", "task_a"]


FIXTURE = Path(__file__).parents[1] / "parity" / "mtl_lora_adapters.safetensors"


class OneLinear(nn.Module):
    """A model that is one linear layer, `lin`, so that add_skills / use_tasks apply to it."""

    def __init__(self, d_in: int, d_out: int, bias: bool = True, dtype=torch.float32) -> None:
        super().__init__()
        self.lin = nn.Linear(d_in, d_out, bias=bias, dtype=dtype)

    def forward(self, x):
        return self.lin(x)


def mtl_lora_delta(layer, x: torch.Tensor, task_ids: list[int]) -> torch.Tensor:
    """(alpha / r) x A Lambda_t sum_i softmax(w_t / tau)_i B_i, per example, written out."""
    c = layer.config
    A = layer.shared_A[0, 0]  # (d_in, r)
    out = []
    for b, t in enumerate(task_ids):
        lam = layer.bottleneck.weight[t]
        lam = lam if lam.dim() == 2 else torch.diag(lam)
        z = layer.allocation.logits[t] / c.temperature
        p = torch.exp(z - z.max()) / torch.exp(z - z.max()).sum()
        mixed_b = sum(p[i] * layer.shared_B[0, i] for i in range(c.n_skills))
        out.append((c.alpha / c.rank) * (x[b] @ A @ lam @ mixed_b))
    return torch.stack(out)


def mixlora_reference_block(D, E, K, R, alpha, seed=7):
    """mixlora's MixLoraSparseMoe around a phi-style block that is one linear layer (see the module
    docstring), with seeded random base, router and expert weights; returns it and the weights."""
    mixlora_config = pytest.importorskip(
        "mixlora.config", reason="mixlora==0.2.3 (dev extra) is not installed: pip install -e '.[dev]'"
    )
    from mixlora.lora_linear import LoraLinear
    from mixlora.model import MixLoraSparseMoe

    config = mixlora_config.MixLoraConfig.from_config(
        {
            "bias": "none",
            "peft_type": "MIXLORA",
            "r": R,
            "lora_alpha": alpha,
            "lora_dropout": 0.1,  # mixlora asserts > 0; its experts run in eval mode below
            "target_modules": ["fc1"],
            "routing_strategy": "mixlora",
            "num_experts": E,
            "act_fn": "linear",
            "top_k": K,
            "base_model_name_or_path": "none",
            "task_type": "CAUSAL_LM",
        }
    )
    config.model_type_, config.dtype_ = "phi", torch.float32
    assert config.jitter_noise_ == 0.0
    g = torch.Generator().manual_seed(seed)
    block = nn.Module()
    block.fc1, block.fc2 = nn.Linear(D, D), nn.Linear(D, D, bias=False)
    weights = {}
    with torch.no_grad():
        block.fc1.weight.copy_(torch.randn(D, D, generator=g) * 0.3)
        block.fc1.bias.copy_(torch.randn(D, generator=g) * 0.1)
        block.fc2.weight.copy_(torch.eye(D))
    moe = MixLoraSparseMoe(block, config)
    moe.gate_ = weights["gate"] = torch.randn(E, D, generator=g)
    for e in range(E):
        a, b = torch.randn(R, D, generator=g) * 0.3, torch.randn(D, R, generator=g) * 0.3
        weights[f"A{e}"], weights[f"B{e}"] = a, b
        # experts_ is a plain dict, out of reach of moe.eval(): put each expert in eval mode (no dropout)
        moe.experts_[f"experts.{e}.fc1"] = LoraLinear(block.fc1, config, (a, b)).eval()
    return moe, block, weights


def switch_loss_written_out(logits: torch.Tensor, k: int) -> torch.Tensor:
    """K * sum_i f_i P_i: f_i the share of (token, choice) pairs routed to expert i (a token's k choices each
    count), P_i the mean router probability of expert i; float64, loops."""
    logits = logits.double().reshape(-1, logits.shape[-1])
    n, n_experts = logits.shape
    probs = torch.softmax(logits, -1)
    chosen = probs.topk(k, -1).indices
    f = torch.zeros(n_experts, dtype=torch.float64)
    for token in range(n):
        for j in range(k):
            f[chosen[token, j]] += 1.0 / n
    P = probs.mean(0)
    return n_experts * sum(f[i] * P[i] for i in range(n_experts))


ABSENT = ["task_a", "task_c", "task_a"]  # task_b sits this batch out


def fixed_config(**overrides) -> SkillConfig:
    return skill_config("cpoly", task_weights="fixed", **overrides)


def backward_loss(model, tasks, batch=None):
    with use_tasks(model, tasks):
        loss = model(**(batch or t5_batch())).loss
        loss.backward()
    return loss


def fixed_and_identity_trainable(n_task_skills: int = 1):
    """A fixed-W_B model and a trainable-W_B model whose W_B is frozen at its identity init, with the
    same (random) adapters."""
    base = tiny_t5()
    fixed = add_skills(copy.deepcopy(base), fixed_config(n_task_skills=n_task_skills))
    randomize_adapters(fixed)
    trainable = add_skills(copy.deepcopy(base), skill_config("cpoly", n_task_skills=n_task_skills))
    for (_, t), (_, f) in zip(skilled_layers(trainable), skilled_layers(fixed), strict=True):
        t.load_adapter_tensors(f.adapter_tensors())
        t.task_weights.weight.data.copy_(t.task_weights.initial_weight())
        t.task_weights.weight.requires_grad_(False)
    return fixed, trainable


def reference_delta(layer, x, task: int):
    """s * x A~ B~ written out for one example in evaluation mode (DESIGN.md section 2)."""
    c = layer.config
    S, r = c.n_splits, c.rank
    a = torch.zeros(S, layer.d_in // S, r)
    b = torch.zeros(S, r, layer.d_out // S)
    if c.n_skills:
        w = layer.allocation.probabilities()[task]  # (S, K)
        a = a + torch.einsum("qk,qkdr->qdr", w, layer.shared_A)
        b = b + torch.einsum("qk,qkro->qro", w, layer.shared_B)
    if c.n_task_skills:
        task_A, task_B = layer.task_A, layer.task_B
        w = layer.task_weights.full()[task]  # (T*B,)
        a = a + torch.einsum("j,qjdr->qdr", w, task_A)
        b = b + torch.einsum("j,qjro->qro", w, task_B)
    a_full = a.reshape(layer.d_in, r)
    b_full = b.permute(1, 0, 2).reshape(r, layer.d_out)
    return c.scaling * x @ a_full @ b_full


AUTOCAST_SETTINGS = [
    dict(method="shared_lora"),
    dict(method="task_lora"),
    dict(method="moe_lora"),
    dict(method="poly"),
    dict(method="mhr", n_splits=2),
    dict(method="cpoly"),
    dict(method="cpoly", task_weights="fixed"),
    dict(method="cpoly", task_weights="block", n_task_skills=2),
]
