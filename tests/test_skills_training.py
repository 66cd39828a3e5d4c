"""What a training step does to the skills: which tensors get gradients and are stepped (absent tasks
included, whatever the storage), gradient checkpointing, bf16 autocast, and the load-balancing loss in the
objective."""

from __future__ import annotations

import copy

import pytest
import torch
from helpers.compose import compose_train
from helpers.factories import skill_config
from helpers.skill_refs import (
    ABSENT,
    AUTOCAST_SETTINGS,
    FIVE,
    backward_loss,
    block_config,
    fixed_and_identity_trainable,
    fixed_config,
)
from helpers.tiny_models import TASKS, randomize_adapters, t5_batch, tiny_t5
from safetensors.torch import load_file

from cpoly import (
    SkillConfig,
    add_skills,
    enable_gradient_checkpointing,
    use_tasks,
)
from cpoly.config import OptimConfig
from cpoly.logging.local import read_metrics
from cpoly.skills import skilled_layers
from cpoly.train.optim import build_optimizer, fill_missing_grads


def test_gradients_reach_only_the_batch_tasks_and_every_tensor_is_stepped():
    """A step of tasks 0 and 3 (of 5) gives non-zero gradients to their exclusive skills and block weights
    only; the other rows get zeros from the gather, so the trainer's AdamW steps every tensor (the rule of
    docs/design-decisions.md), W_B in its own group without weight decay."""
    model = add_skills(tiny_t5(), block_config(FIVE, n_task_skills=2))
    randomize_adapters(model)
    model.train()
    optimizer = build_optimizer(model, OptimConfig(name="adamw", lr=1e-2, weight_decay=0.1))
    with use_tasks(model, [0, 3, 0]):
        model(**t5_batch()).loss.backward()
    fill_missing_grads(optimizer)
    present, absent = [0, 1, 6, 7], [2, 3, 4, 5, 8, 9]  # task 0's and task 3's columns of the packed skills
    for _, layer in skilled_layers(model):
        grad = layer.task_weights.weight.grad
        assert grad.shape == (5, 2) and grad[[1, 2, 4]].abs().max() == 0 and (grad[[0, 3]] != 0).all()
        for skills in (layer.task_A, layer.task_B):
            assert skills.grad[:, absent].abs().max() == 0
        assert (layer.task_B.grad[:, present].flatten(2).abs().amax(-1) > 0).all()
    [group] = [g for g in optimizer.param_groups if g["name"] == "task_weights"]
    assert group["weight_decay"] == 0.0 and all(p.shape == (5, 2) for p in group["params"])
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    optimizer.step()
    for name, p in model.named_parameters():
        if p.requires_grad and "task_" in name:
            assert not torch.equal(p, before[name]), name  # stepped, absent tasks' rows included


def test_absent_tasks_follow_one_rule_whatever_the_storage():
    """The trainer's optimiser (AdamW with weight decay, `fill_missing_grads`) steps every trainable tensor
    every step: an absent task's skills keep moving under AdamW's moments and weight decay, the same
    for fixed W_B and for trainable W_B (here frozen at the identity, so the two are one function)."""
    fixed, trainable = fixed_and_identity_trainable()
    optim = OptimConfig(name="adamw", lr=1e-2, weight_decay=0.1)
    optimizers = [build_optimizer(m, optim) for m in (fixed, trainable)]
    layer = next(layer for _, layer in skilled_layers(fixed))
    history = []
    for tasks in (["task_a", "task_b", "task_a"], ["task_a", "task_a", "task_a"]):  # task_c never, task_b once
        for model, optimizer in zip((fixed, trainable), optimizers, strict=True):
            model.train()
            torch.manual_seed(5)
            backward_loss(model, tasks)
            fill_missing_grads(optimizer)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        history.append(layer.task_B.detach().clone())
    for (_, f), (_, t) in zip(skilled_layers(fixed), skilled_layers(trainable), strict=True):
        for name in ("task_A", "task_B", "shared_A", "shared_B", "allocation.logits"):
            torch.testing.assert_close(f.get_parameter(name), t.get_parameter(name), atol=1e-6, rtol=0)
    # task_b was absent from the second step and still moved (momentum); task_c, never present, decayed
    assert not torch.equal(history[1][:, 1], history[0][:, 1])
    assert layer.task_A.abs().sum() > 0 and int(optimizers[0].state[layer.task_A]["step"]) == 2


def test_trainable_task_weights_rows_of_absent_tasks_are_stepped_too():
    """W_B's row of an absent task has a zero gradient and is stepped by AdamW's moments, as the
    allocation logits' rows are: the same rule as the skills."""
    model = add_skills(tiny_t5(), skill_config("cpoly"))
    randomize_adapters(model)
    model.train()
    optimizer = build_optimizer(model, OptimConfig(name="adamw", lr=1e-2))
    layer = next(layer for _, layer in skilled_layers(model))
    rows = []
    for tasks in (["task_b", "task_b", "task_b"], ["task_a", "task_a", "task_a"]):
        backward_loss(model, tasks)
        fill_missing_grads(optimizer)
        if tasks[0] == "task_a":
            assert layer.task_weights.weight.grad[1].abs().max() == 0  # task_b's row: absent now
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        rows.append(layer.task_weights.weight[1].detach().clone())
    assert not torch.equal(rows[0], rows[1])


def test_missing_gradients_become_zeros():
    """What no example reached (an absent task's encoder head) gets a zero gradient, so it is stepped."""
    used, unused = torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.ones(2))
    optimizer = torch.optim.AdamW([used, unused], lr=0.1)
    used.sum().backward()
    fill_missing_grads(optimizer)
    assert torch.equal(unused.grad, torch.zeros(2)) and torch.equal(used.grad, torch.ones(2))


def test_gradient_checkpointing_with_fixed_task_weights():
    base = add_skills(tiny_t5(), fixed_config())
    randomize_adapters(base)
    base.train()
    checkpointed = copy.deepcopy(base)
    enable_gradient_checkpointing(checkpointed)
    grads = []
    for model in (base, checkpointed):
        torch.manual_seed(11)
        backward_loss(model, ABSENT)
        grads.append({n: p.grad for n, p in model.named_parameters() if p.requires_grad})
    assert grads[0].keys() == grads[1].keys()
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, atol=1e-6, rtol=1e-5, msg=name)


@pytest.mark.parametrize("settings", AUTOCAST_SETTINGS, ids=lambda s: "-".join(map(str, s.values())))
def test_bf16_autocast_trains_close_to_fp32(settings):
    """The fused in-place add of the delta is not autocast: its operands are cast as the out-of-place op
    would be (Accelerate trains in bf16 autocast on GPUs)."""
    model = add_skills(tiny_t5(), SkillConfig(task_names=TASKS, **settings))
    randomize_adapters(model)
    model.train()
    batch = t5_batch()
    torch.manual_seed(2)
    with use_tasks(model, ABSENT):
        expected = model(**batch).logits
    torch.manual_seed(2)
    with torch.autocast("cpu", dtype=torch.bfloat16), use_tasks(model, ABSENT):
        out = model(**batch)
        out.loss.backward()
    torch.testing.assert_close(out.logits.float(), expected, atol=0.1, rtol=0.05)
    assert all(p.grad is not None for n, p in model.named_parameters() if "shared_B" in n)


def test_aux_loss_reaches_training(tmp_path):
    """A smoke run of the train loop with mixlora logs train/aux_loss (top-2 of 4 near a balanced router:
    about k = 2)."""
    from cpoly.run import train

    overrides = [
        "debug=smoke",
        "method=mixlora",
        "benchmark.n_tasks=3",
        "benchmark.n_train_per_task=8",
        "benchmark.n_eval_per_task=2",
    ]
    results = train(compose_train(overrides, tmp_path))
    assert results["status"] == "finished" and results["method"] == "mixlora"
    logged = [r for r in read_metrics(tmp_path / "metrics.jsonl") if "train/loss" in r]
    assert logged and all("train/aux_loss" in r for r in logged)
    assert all(1.5 < r["train/aux_loss"] < 2.5 for r in logged), logged


def test_the_aux_loss_joins_the_objective_but_not_the_logged_loss(tmp_path):
    """The same two steps with aux_loss_coef 0 and 1: the first logged loss (before any update) is equal,
    so train/loss is the task loss alone; the gates end apart, so the aux term reached backward (with
    coefficient 0 it is not even computed)."""
    from cpoly.run import train

    base = ["debug=smoke", "method=mixlora", "benchmark.n_tasks=3", "benchmark.n_train_per_task=8"]
    base += ["benchmark.n_eval_per_task=2", "trainer.max_steps=2", "trainer.log_every=1"]
    runs = {}
    for coef in (0.0, 1.0):
        out = tmp_path / f"coef{coef}"
        train(compose_train([*base, f"method.aux_loss_coef={coef}"], out))
        first = next(r for r in read_metrics(out / "metrics.jsonl") if "train/loss" in r)
        runs[coef] = (first, load_file(str(out / "last" / "adapter_model.safetensors")))
    (plain, plain_weights), (with_aux, aux_weights) = runs[0.0], runs[1.0]
    assert "train/aux_loss" not in plain and with_aux["train/aux_loss"] > 0
    assert with_aux["train/loss"] == plain["train/loss"]
    gates = [k for k in plain_weights if k.endswith("gate.proj.weight")]
    assert gates and all(not torch.equal(plain_weights[k], aux_weights[k]) for k in gates)
