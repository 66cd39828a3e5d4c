"""What results.json reads off trained adapters: reliance on exclusive skills, and allocations compared
layer by layer (the layer mean blurs allocations that each layer does learn)."""

from __future__ import annotations

import pytest
import torch
from helpers.tiny_models import randomize_adapters, tiny_t5

from cpoly.data.synthetic import skill_recovery
from cpoly.skills import SkillConfig, add_skills, allocation_matrix
from cpoly.skills.model import skilled_layers
from cpoly.skills.usage import exclusive_skill_usage

TASKS = ["a", "b", "c", "d"]


def skilled(method: str, **extra):
    torch.manual_seed(0)
    model = add_skills(tiny_t5(), SkillConfig(method=method, task_names=TASKS, target_modules=["q", "v"], **extra))
    randomize_adapters(model)
    return model


def test_task_lora_relies_only_on_its_exclusive_skills_and_poly_has_none():
    usage = exclusive_skill_usage(skilled("task_lora"))
    assert usage["reliance"] == pytest.approx(1.0) and usage["own_task_weight"] is None
    assert exclusive_skill_usage(skilled("poly")) is None
    assert exclusive_skill_usage(skilled("moe_lora")) is None


def test_cpoly_reliance_follows_its_exclusive_skills_and_the_model_is_left_as_it_was():
    model = skilled("cpoly")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    usage = exclusive_skill_usage(model)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # restored after zeroing
    assert 0 < usage["reliance"] < 1 and set(usage["per_task_reliance"]) == set(TASKS)
    assert 0 < usage["own_task_weight"] < 1  # randomised W_B: some weight off its own block
    with torch.no_grad():
        for _, layer in skilled_layers(model):
            layer.task_B.zero_()  # exclusive B skills contribute nothing to B~, but their A's still mix into A~
            layer.task_A.zero_()
    assert exclusive_skill_usage(model)["reliance"] == pytest.approx(0.0, abs=1e-9)


def test_untrained_tasks_have_no_reliance_rather_than_zero():
    model = add_skills(tiny_t5(), SkillConfig(method="task_lora", task_names=TASKS, target_modules=["q"]))
    usage = exclusive_skill_usage(model)  # B = 0 everywhere: no update to attribute
    assert usage["reliance"] is None and set(usage["per_task_reliance"].values()) == {None}


def test_skill_recovery_compares_tasks_layer_by_layer_not_through_the_layer_mean():
    """Each layer learns the true allocation with its own numbering of the skills: the layer mean is
    uniform and says nothing, the stacked layers recover the structure."""
    structure = {"a": ["x"], "b": ["x", "y"], "c": ["z"], "d": ["z", "w"]}
    truth = torch.tensor([[1, 0, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 1, 1]], dtype=torch.float)
    model = add_skills(tiny_t5(), SkillConfig(method="poly", task_names=TASKS, target_modules=["q"]))
    layers = [layer for _, layer in skilled_layers(model)]
    with torch.no_grad():
        for i, layer in enumerate(layers):
            permuted = truth[:, torch.roll(torch.arange(4), i)]
            layer.allocation.logits.copy_(8 * permuted - 4)
    allocation = allocation_matrix(model)
    assert allocation.stacked.shape == (4, 4 * len(layers))
    spread = allocation.mean.reshape(4, -1)
    assert float(spread.max() - spread.min()) < 0.2  # the layer mean: nearly uniform
    assert skill_recovery(allocation.stacked, TASKS, structure) > 0.8
