"""Putting skills into a model and routing tasks through it.

`add_skills` wraps the target linear layers in place and freezes the backbone; `use_tasks` hands a
batch's task ids to every adapted layer for `forward` and `generate` (beams and returned sequences
included) and takes them away again on exit, also on an exception.
"""

from __future__ import annotations

import contextlib
import functools
import operator
import types
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from cpoly.skills.config import SkillConfig
from cpoly.skills.layer import SkilledLinear
from cpoly.skills.router import RoutingState, TaskBatch
from cpoly.skills.targets import adaptable_layer_names, matching_modules, name_matches

STATE_ATTR = "cpoly_skills"


@dataclass
class SkillState:
    """What `add_skills` attaches to the model: the config and the routing state of its layers."""

    config: SkillConfig
    routing: RoutingState

    @property
    def task_to_id(self) -> dict[str, int]:
        return {name: i for i, name in enumerate(self.config.task_names)}


def skill_state(model: nn.Module) -> SkillState:
    state = getattr(model, STATE_ATTR, None)
    if state is None:
        raise ValueError(f"{type(model).__name__} has no skills: call cpoly.add_skills(model, config) first")
    return state


def skilled_layers(model: nn.Module) -> Iterator[tuple[str, SkilledLinear]]:
    for name, module in model.named_modules():
        if isinstance(module, SkilledLinear):
            yield name, module


def find_target_modules(model: nn.Module, targets: list[str] | str) -> list[str]:
    """Names of the linear layers matched by `targets`; none matched is an error listing them all."""
    linears = adaptable_layer_names(model)
    matched = [n for n in linears if name_matches(n, targets)]
    if not matched:
        suffixes = sorted({n.rsplit(".", 1)[-1] for n in linears})
        raise ValueError(
            f"SkillConfig.target_modules={targets!r} matches no linear layer of {type(model).__name__}. "
            f"Its linear layer names end in: {', '.join(suffixes)}. All {len(linears)} linear layers: "
            f"{', '.join(linears)}"
        )
    return matched


def add_skills(model: nn.Module, config: SkillConfig) -> nn.Module:
    """Wrap every target linear layer of `model` in a `SkilledLinear`, in place; freeze the backbone
    (except `config.modules_to_save`); return the model."""
    if hasattr(model, STATE_ATTR):
        raise ValueError(f"{type(model).__name__} already has skills")
    targets = find_target_modules(model, config.target_modules)
    for name in config.modules_to_save:
        if not matching_modules(model, [name]):
            raise ValueError(f"SkillConfig.modules_to_save: no module named {name!r} in {type(model).__name__}")
    model.requires_grad_(False)
    routing = RoutingState()
    for index, name in enumerate(targets):
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        setattr(parent, child, SkilledLinear(getattr(parent, child), config, routing, index))
    for _, layer in skilled_layers(model):
        for pname, p in layer.named_parameters():
            p.requires_grad_(not pname.startswith("base_layer."))
    for _, module in matching_modules(model, config.modules_to_save):
        module.requires_grad_(True)
    object.__setattr__(model, STATE_ATTR, SkillState(config, routing))
    if callable(getattr(type(model), "generate", None)):
        # a bound method (deepcopy rebinds it to the copy), so the layers know when generate() runs
        model.generate = types.MethodType(_generate_with_routing, model)
    return model


def _generate_with_routing(model: nn.Module, *args, **kwargs):
    """The model class's `generate`, during which the layers accept each task id repeated (beams and
    returned sequences); outside it, a batch must have exactly one task id per example."""
    routing = skill_state(model).routing
    previous, routing.generating = routing.generating, True
    try:
        return type(model).generate(model, *args, **kwargs)
    finally:
        routing.generating = previous


def task_batch(
    model: nn.Module, tasks: Sequence[str] | torch.Tensor | Sequence[int], noise_keys: torch.Tensor | None = None
) -> TaskBatch:
    """Task names or ids -> a validated `TaskBatch` (-1 marks unknown tasks when allowed)."""
    state = skill_state(model)
    config = state.config
    if isinstance(tasks, torch.Tensor) or (len(tasks) and not isinstance(tasks[0], str)):
        ids = torch.as_tensor(tasks, dtype=torch.long).reshape(-1)
        bad = ids[(ids >= config.n_tasks) | (ids < -1)]
        if bad.numel():
            raise ValueError(f"task id {int(bad[0])} out of range: the model has {config.n_tasks} tasks")
        unknown = ids < 0
        if unknown.any() and config.unknown_task == "error":
            raise ValueError("task id -1 (unknown task) needs SkillConfig.unknown_task='uniform'")
    else:
        lookup = state.task_to_id
        missing = sorted({t for t in tasks if t not in lookup})
        if missing and config.unknown_task == "error":
            raise ValueError(
                f"unknown task {missing[0]!r} (unknown_task='error'); the model knows {len(lookup)} tasks: "
                f"{', '.join(config.task_names[:10])}{' ...' if len(lookup) > 10 else ''}"
            )
        ids = torch.tensor([lookup.get(t, -1) for t in tasks], dtype=torch.long)
    if ids.numel() == 0:
        raise ValueError("use_tasks needs at least one task")
    if noise_keys is not None and noise_keys.shape != ids.shape:
        raise ValueError(f"noise_keys of shape {tuple(noise_keys.shape)}: need one key per task id, {tuple(ids.shape)}")
    device = next((p.device for _, layer in skilled_layers(model) for p in layer.parameters()), ids.device)
    # ids checked where they came (on the host, a training loop's case: no device sync), then copied
    keys = None if noise_keys is None else noise_keys.to(device, non_blocking=True)
    return TaskBatch(ids.to(device, non_blocking=True), all_known=bool((ids >= 0).all()), noise_keys=keys)


@contextlib.contextmanager
def use_tasks(
    model: nn.Module, tasks: Sequence[str] | torch.Tensor, noise_keys: torch.Tensor | None = None
) -> Iterator[nn.Module]:
    """Route every adapted layer by `tasks` (names or ids, one per example) inside the block.

    `noise_keys` (optional, one int64 per example, `cpoly.skills.router.example_noise_keys`) makes the
    training-mode routing noise a function of each example's key instead of torch's global generator."""
    routing = skill_state(model).routing
    previous = routing.batch
    routing.batch = task_batch(model, tasks, noise_keys)
    try:
        yield model
    finally:
        routing.batch = previous


def pop_aux_loss(model: nn.Module) -> torch.Tensor | None:
    """The token gates' load-balancing loss of the last training forward (`SkillConfig.aux_loss_coef` > 0),
    over the tokens of every adapted layer pooled (as Mixtral's `load_balancing_loss_func` and MixLoRA pool
    their layers), or None; the routing state is cleared. Call it after each forward whose loss it joins."""
    stats = skill_state(model).routing.gate_stats
    if not stats:
        return None
    pooled = functools.reduce(operator.add, (stats[i] for i in sorted(stats)))
    stats.clear()
    return pooled.loss()


def _checkpoint_contexts(routing: RoutingState):
    """For torch.utils.checkpoint's `context_fn`: the recomputation in backward sees the task ids the
    forward saw, even when backward runs after `use_tasks` has exited."""
    saved = routing.batch

    @contextlib.contextmanager
    def restore():
        previous, routing.batch = routing.batch, saved
        try:
            yield
        finally:
            routing.batch = previous

    return contextlib.nullcontext(), restore()


def enable_gradient_checkpointing(model: nn.Module) -> None:
    """Hugging Face activation checkpointing (non-reentrant) that carries the task ids into the
    backward recomputation."""
    routing = skill_state(model).routing
    model.activation_checkpointing_enable(
        activation_checkpointing_kwargs={
            "use_reentrant": False,
            "context_fn": functools.partial(_checkpoint_contexts, routing),
        }
    )


@dataclass
class Allocation:
    """The learned allocation: evaluation-mode shared-skill weights per layer and averaged over layers,
    each (T, S, K), and the exclusive-skill weights W_B (T, T*B) averaged over layers (if any)."""

    task_names: list[str]
    per_layer: dict[str, torch.Tensor]
    mean: torch.Tensor
    task_weights: torch.Tensor | None

    @property
    def stacked(self) -> torch.Tensor:
        """(T, L*S*K): every layer's allocation side by side. What task similarities are computed from:
        skill k of one layer has nothing to do with skill k of another, so the layer *mean* blurs
        allocations that each layer does learn into a near-uniform matrix, while the rows of this matrix
        compare tasks layer by layer (their cosine is a weighted mean of per-layer similarities)."""
        if not self.per_layer:
            return self.mean.reshape(self.mean.shape[0], -1)
        return torch.cat([m.reshape(m.shape[0], -1) for m in self.per_layer.values()], dim=1)


@torch.no_grad()
def allocation_matrix(model: nn.Module) -> Allocation:
    config = skill_state(model).config
    if not config.has_learned_allocation:
        raise ValueError(f"method {config.method} has no learned task-to-skill allocation")
    per_layer = {name: layer.allocation.probabilities().detach().float().cpu() for name, layer in skilled_layers(model)}
    mean = torch.stack(list(per_layer.values())).mean(0)
    task_weights = None
    if config.n_task_skills:
        task_weights = torch.stack(
            [layer.task_weights.full().detach().float().cpu() for _, layer in skilled_layers(model)]
        ).mean(0)
    return Allocation(list(config.task_names), per_layer, mean, task_weights)


def count_parameters(model: nn.Module) -> dict[str, int]:
    """Trainable and total parameters, the adapters split into shared skills, task skills (and per-task
    bottlenecks) and router (allocation logits, trainable task weights, token gates); `heads` counts other
    trainable modules."""
    counts = dict(shared_skills=0, task_skills=0, router=0, heads=0)
    adapter_ids: set[int] = set()
    for _, layer in skilled_layers(model):
        for name, p in layer.named_parameters():
            if name.startswith("base_layer."):
                continue
            adapter_ids.add(id(p))
            if name.startswith("shared_"):
                counts["shared_skills"] += p.numel()
            elif name.startswith(("task_A", "task_B", "bottleneck.")):  # MTL-LoRA's Lambda_t is per task
                counts["task_skills"] += p.numel()
            else:
                counts["router"] += p.numel()
    unique = {id(p): p for p in model.parameters()}
    counts["heads"] = sum(p.numel() for i, p in unique.items() if p.requires_grad and i not in adapter_ids)
    counts["trainable"] = sum(p.numel() for p in unique.values() if p.requires_grad)
    counts["total"] = sum(p.numel() for p in unique.values())
    return counts
