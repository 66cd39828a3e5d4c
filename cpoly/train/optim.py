"""AdamW with two parameter groups (adapters, routers) and a warmup + decay schedule."""

from __future__ import annotations

import math

import torch
from torch import nn
from transformers import get_scheduler

from cpoly.config import OptimConfig
from cpoly.skills import skilled_layers

# Parameters of a SkilledLinear that route rather than transform: the allocation logits Z, the
# trainable exclusive-skill weights W_B and moe_lora's gate.
ROUTER_PREFIXES = ("allocation.", "task_weights.", "gate.")


def parameter_groups(model: nn.Module, optim: OptimConfig) -> list[dict]:
    """Adapters (and task heads) at `lr` with weight decay; routers at `router_lr` without it."""
    router_ids = {
        id(p)
        for _, layer in skilled_layers(model)
        for name, p in layer.named_parameters()
        if name.startswith(ROUTER_PREFIXES) and p.requires_grad
    }
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    adapters = [p for _, p in trainable if id(p) not in router_ids]
    routers = [p for _, p in trainable if id(p) in router_ids]
    groups = [{"name": "adapters", "params": adapters, "lr": optim.lr, "weight_decay": optim.weight_decay}]
    if routers:
        lr = optim.router_lr if optim.router_lr is not None else optim.lr
        groups.append({"name": "router", "params": routers, "lr": lr, "weight_decay": 0.0})
    return [g for g in groups if g["params"]]


def build_optimizer(model: nn.Module, optim: OptimConfig) -> torch.optim.AdamW:
    return torch.optim.AdamW(parameter_groups(model, optim), betas=tuple(optim.betas), eps=optim.eps)


def build_scheduler(optimizer: torch.optim.Optimizer, optim: OptimConfig, max_steps: int):
    """Linear warmup over `warmup_ratio * max_steps`, then linear or cosine decay to 0, or constant."""
    name = {"linear": "linear", "cosine": "cosine", "constant": "constant_with_warmup"}[optim.scheduler]
    warmup = math.ceil(optim.warmup_ratio * max_steps)
    return get_scheduler(name, optimizer, num_warmup_steps=warmup, num_training_steps=max_steps)


def learning_rates(optimizer: torch.optim.Optimizer) -> dict[str, float]:
    return {f"train/lr_{g.get('name', i)}": g["lr"] for i, g in enumerate(optimizer.param_groups)}
