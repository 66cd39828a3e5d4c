"""How the layer stores and steps its skills: one packed storage of exclusive skills whatever W_B is
(fixed W_B gathers a task's own skills and computes what trainable W_B at the identity does), the one
optimiser rule for absent tasks (every trainable tensor is stepped every step), and the fused output
paths against the formulas of DESIGN.md section 2."""

from __future__ import annotations

import copy

import pytest
import torch
from helpers.factories import skill_config
from helpers.tiny_models import TASKS, randomize_adapters, t5_batch, tiny_t5

from cpoly import SkillConfig, add_skills, enable_gradient_checkpointing, use_tasks
from cpoly.config import OptimConfig
from cpoly.skills import skilled_layers
from cpoly.train.optim import build_optimizer, fill_missing_grads

ABSENT = ["task_a", "task_c", "task_a"]  # task_b sits this batch out


def _fixed(**overrides) -> SkillConfig:
    return skill_config("cpoly", task_weights="fixed", **overrides)


def _loss(model, tasks, batch=None):
    with use_tasks(model, tasks):
        loss = model(**(batch or t5_batch())).loss
        loss.backward()
    return loss


def _fixed_and_identity_trainable(n_task_skills: int = 1):
    """A fixed-W_B model and a trainable-W_B model whose W_B is frozen at its identity init, with the
    same (random) adapters."""
    base = tiny_t5()
    fixed = add_skills(copy.deepcopy(base), _fixed(n_task_skills=n_task_skills))
    randomize_adapters(fixed)
    trainable = add_skills(copy.deepcopy(base), skill_config("cpoly", n_task_skills=n_task_skills))
    for (_, t), (_, f) in zip(skilled_layers(trainable), skilled_layers(fixed), strict=True):
        t.load_adapter_tensors(f.adapter_tensors())
        t.task_weights.weight.data.copy_(t.task_weights.initial_weight())
        t.task_weights.weight.requires_grad_(False)
    return fixed, trainable


@pytest.mark.parametrize("n_task_skills", [1, 2])
def test_fixed_task_weights_compute_what_identity_weights_do(n_task_skills):
    """Gathering each example's own task's skills equals mixing all of them with W_B = identity: the same
    outputs (train and eval mode, same noise) and the same gradients, zeros for the absent task."""
    fixed, trainable = _fixed_and_identity_trainable(n_task_skills)
    batch = t5_batch()
    for mode in ("eval", "train"):
        getattr(fixed, mode)(), getattr(trainable, mode)()
        outputs = []
        for model in (fixed, trainable):
            torch.manual_seed(3)
            with use_tasks(model, ABSENT):
                outputs.append(model(**batch).logits)
        torch.testing.assert_close(outputs[0], outputs[1], atol=1e-5, rtol=1e-5)
    for model in (fixed, trainable):
        torch.manual_seed(4)
        _loss(model, ABSENT, batch)
    absent = slice(n_task_skills, 2 * n_task_skills)  # task_b's columns
    for (_, f), (_, t) in zip(skilled_layers(fixed), skilled_layers(trainable), strict=True):
        for name in ("shared_A", "shared_B", "allocation.logits", "task_A", "task_B"):
            torch.testing.assert_close(f.get_parameter(name).grad, t.get_parameter(name).grad, atol=1e-6, rtol=0)
        assert f.task_A.grad[:, absent].abs().max() == 0 and f.task_B.grad[:, absent].abs().max() == 0


def test_absent_tasks_follow_one_rule_whatever_the_storage():
    """The trainer's optimiser (AdamW with weight decay, `fill_missing_grads`) steps every trainable tensor
    every step: an absent task's skills keep moving under AdamW's moments and weight decay, the same
    for fixed W_B and for trainable W_B (here frozen at the identity, so the two are one function)."""
    fixed, trainable = _fixed_and_identity_trainable()
    optim = OptimConfig(name="adamw", lr=1e-2, weight_decay=0.1)
    optimizers = [build_optimizer(m, optim) for m in (fixed, trainable)]
    layer = next(layer for _, layer in skilled_layers(fixed))
    history = []
    for tasks in (["task_a", "task_b", "task_a"], ["task_a", "task_a", "task_a"]):  # task_c never, task_b once
        for model, optimizer in zip((fixed, trainable), optimizers, strict=True):
            model.train()
            torch.manual_seed(5)
            _loss(model, tasks)
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
        _loss(model, tasks)
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
    base = add_skills(tiny_t5(), _fixed())
    randomize_adapters(base)
    base.train()
    checkpointed = copy.deepcopy(base)
    enable_gradient_checkpointing(checkpointed)
    grads = []
    for model in (base, checkpointed):
        torch.manual_seed(11)
        _loss(model, ABSENT)
        grads.append({n: p.grad for n, p in model.named_parameters() if p.requires_grad})
    assert grads[0].keys() == grads[1].keys()
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, atol=1e-6, rtol=1e-5, msg=name)


def _reference_delta(layer, x, task: int):
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


@pytest.mark.parametrize(
    "settings",
    [
        dict(),
        dict(task_weights="fixed"),
        dict(n_splits=2, n_task_skills=2),
        dict(n_splits=2, n_task_skills=2, task_weights="fixed"),
    ],
    ids=["trainable", "fixed", "S2-B2-trainable", "S2-B2-fixed"],
)
@pytest.mark.parametrize("tokens", [5, None], ids=["3d-input", "2d-input"])
def test_layer_output_is_the_formula(settings, tokens):
    model = add_skills(tiny_t5(), skill_config("cpoly", alpha=3.0, **settings)).eval()
    randomize_adapters(model)
    layer = next(layer for _, layer in skilled_layers(model))
    x = torch.randn(3, tokens, layer.d_in) if tokens else torch.randn(3, layer.d_in)
    with use_tasks(model, [2, 0, 1]), torch.no_grad():
        actual = layer(x)
        expected = torch.stack(
            [layer.base_layer(x[i]) + _reference_delta(layer, x[i], t) for i, t in enumerate([2, 0, 1])]
        )
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("top_k", [None, 2])
def test_moe_lora_is_the_gated_sum_of_its_experts(top_k):
    model = add_skills(tiny_t5(), skill_config("moe_lora", top_k=top_k, alpha=3.0))
    randomize_adapters(model)
    layer = next(layer for _, layer in skilled_layers(model))
    x = torch.randn(3, 5, layer.d_in)
    with torch.no_grad():
        gates, _ = layer.gate(x)
        experts = torch.stack([x @ layer.shared_A[0, k] @ layer.shared_B[0, k] for k in range(layer.n_shared)], -1)
        expected = layer.base_layer(x) + layer.config.scaling * (experts * gates.unsqueeze(-2)).sum(-1)
        torch.testing.assert_close(layer(x), expected, atol=1e-5, rtol=1e-5)


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
