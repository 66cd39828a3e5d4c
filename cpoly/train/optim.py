"""AdamW with three parameter groups (adapters, routers, task-skill weights) and a warmup + decay schedule."""

from __future__ import annotations

import math

import torch
from torch import nn
from transformers import get_scheduler

from cpoly.config import OptimConfig
from cpoly.skills import skilled_layers

# Parameters of a SkilledLinear that route: the allocation logits Z and moe_lora's gate train at
# `router_lr`. C-Poly's exclusive-skill weights W_B start at the identity and train at the adapters'
# lr (at a router lr of 0.1 they lose their identity within a few steps), as does MTL-LoRA's per-task
# bottleneck; neither kind decays to zero.
ROUTER_PREFIXES = ("allocation.", "gate.")
# W_B and MTL-LoRA's per-task bottleneck Lambda_t: identity at init, no weight decay
TASK_WEIGHT_PREFIX = ("task_weights.", "bottleneck.")


def parameter_groups(model: nn.Module, optim: OptimConfig) -> list[dict]:
    """Adapters (and task heads) at `lr` with weight decay; routers at `router_lr` and task-skill
    weights at `lr`, both without weight decay."""
    kinds: dict[int, str] = {}
    for _, layer in skilled_layers(model):
        for name, p in layer.named_parameters():
            if name.startswith(ROUTER_PREFIXES):
                kinds[id(p)] = "router"
            elif name.startswith(TASK_WEIGHT_PREFIX):
                kinds[id(p)] = "task_weights"
    trainable = [p for p in model.parameters() if p.requires_grad]
    of_kind = lambda kind: [p for p in trainable if kinds.get(id(p), "adapters") == kind]  # noqa: E731
    router_lr = optim.router_lr if optim.router_lr is not None else optim.lr
    groups = [
        {"name": "adapters", "params": of_kind("adapters"), "lr": optim.lr, "weight_decay": optim.weight_decay},
        {"name": "router", "params": of_kind("router"), "lr": router_lr, "weight_decay": 0.0},
        {"name": "task_weights", "params": of_kind("task_weights"), "lr": optim.lr, "weight_decay": 0.0},
    ]
    return [g for g in groups if g["params"]]


def build_optimizer(model: nn.Module, optim: OptimConfig) -> torch.optim.AdamW:
    # The fused kernel (CPU and CUDA) is the same update as the default for-each one at a third of the
    # time; it matters here because C-Poly's task skills grow with the number of tasks.
    return torch.optim.AdamW(parameter_groups(model, optim), betas=tuple(optim.betas), eps=optim.eps, fused=True)


def fill_missing_grads(optimizer: torch.optim.Optimizer) -> None:
    """Give every parameter the step did not reach (an absent task's encoder head, say) a zero gradient,
    so AdamW steps every trainable tensor every step: absent tasks' slices of the packed skills, Z and
    W_B get zero gradients from autograd already, and their moments move them the same way (the rule of
    `docs/design-decisions.md`, as PEFT Poly and mttl step their packed tensors)."""
    for group in optimizer.param_groups:
        for p in group["params"]:
            if p.grad is None:
                p.grad = torch.zeros_like(p)


def build_scheduler(optimizer: torch.optim.Optimizer, optim: OptimConfig, max_steps: int):
    """Linear warmup over `warmup_ratio * max_steps`, then linear or cosine decay to 0, or constant."""
    name = {"linear": "linear", "cosine": "cosine", "constant": "constant_with_warmup"}[optim.scheduler]
    warmup = math.ceil(optim.warmup_ratio * max_steps)
    return get_scheduler(name, optimizer, num_warmup_steps=warmup, num_training_steps=max_steps)


def learning_rates(optimizer: torch.optim.Optimizer) -> dict[str, float]:
    return {f"train/lr_{g.get('name', i)}": g["lr"] for i, g in enumerate(optimizer.param_groups)}
