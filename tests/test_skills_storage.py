"""How the layer stores and computes its skills: per-task exclusive skills with fixed task weights (the
same results as the packed layout, lazy optimizer updates, the packed layout on disk) and the fused
output paths against the formulas of DESIGN.md section 2."""

from __future__ import annotations

import copy

import pytest
import torch
from helpers.tiny_models import TASKS, randomize_adapters, t5_batch, tiny_t5
from safetensors.torch import load_file

from cpoly import (
    SkillConfig,
    add_skills,
    count_parameters,
    enable_gradient_checkpointing,
    load_skills,
    save_skills,
    use_tasks,
)
from cpoly.config import OptimConfig
from cpoly.skills import skilled_layers
from cpoly.train.optim import build_optimizer, zero_grads_of_absent_task_skills

ABSENT = ["task_a", "task_c", "task_a"]  # task_b sits this batch out


def _fixed(**overrides) -> SkillConfig:
    return SkillConfig(method="cpoly", task_names=TASKS, task_weights="fixed", **overrides)


def _loss(model, tasks, batch=None):
    with use_tasks(model, tasks):
        loss = model(**(batch or t5_batch())).loss
        loss.backward()
    return loss


def test_per_task_storage_computes_what_the_packed_layout_does():
    """A fixed-weights model (one Parameter per task) and a trainable-weights model (packed tensors) at
    W_B = identity with the same skills: the same outputs, and the same gradients, where a task absent
    from the batch has gradient None instead of zeros."""
    base = tiny_t5()
    packed = add_skills(copy.deepcopy(base), SkillConfig(method="cpoly", task_names=TASKS))
    randomize_adapters(packed)
    per_task = add_skills(copy.deepcopy(base), _fixed())
    for (_, dense), (_, lazy) in zip(skilled_layers(packed), skilled_layers(per_task), strict=True):
        dense.task_weights.weight.data.copy_(dense.task_weights.initial_weight())
        lazy.load_adapter_tensors({k: v for k, v in dense.adapter_tensors().items() if k != "task_weights.weight"})
    batch = t5_batch()
    for mode in ("eval", "train"):
        getattr(packed, mode)(), getattr(per_task, mode)()
        torch.manual_seed(3)
        with use_tasks(packed, ABSENT):
            expected = packed(**batch).logits
        torch.manual_seed(3)
        with use_tasks(per_task, ABSENT):
            actual = per_task(**batch).logits
        torch.testing.assert_close(actual, expected, atol=1e-6, rtol=0)
    torch.manual_seed(4)
    _loss(packed, ABSENT, batch)
    torch.manual_seed(4)
    _loss(per_task, ABSENT, batch)
    for (_, dense), (_, lazy) in zip(skilled_layers(packed), skilled_layers(per_task), strict=True):
        for name in ("shared_A", "shared_B", "allocation.logits"):
            torch.testing.assert_close(lazy.get_parameter(name).grad, dense.get_parameter(name).grad, atol=1e-6, rtol=0)
        for dense_grad, params in (
            (dense.task_A.grad, lazy.task_A_per_task),
            (dense.task_B.grad, lazy.task_B_per_task),
        ):
            assert params[1].grad is None and dense_grad[:, 1].abs().max() == 0
            for t in (0, 2):
                torch.testing.assert_close(params[t].grad, dense_grad[:, t : t + 1], atol=1e-6, rtol=0)


def test_a_task_absent_from_a_step_keeps_its_skills_and_optimizer_state():
    """Lazy updates with the trainer's AdamW (weight decay on): only the tasks of a batch move their
    exclusive skills and AdamW moments; an absent task's skills are not decayed either."""
    model = add_skills(tiny_t5(), _fixed(n_task_skills=2))
    randomize_adapters(model)
    model.train()
    optimizer = build_optimizer(model, OptimConfig(name="adamw", lr=1e-2, weight_decay=0.1))
    layer = next(layer for _, layer in skilled_layers(model))
    skills = lambda t: (layer.task_A_per_task[t], layer.task_B_per_task[t])  # noqa: E731
    start = [[p.detach().clone() for p in skills(t)] for t in range(3)]

    def step(tasks):
        _loss(model, tasks)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step(["task_a", "task_b", "task_a"])
    for p, before in zip(skills(2), start[2], strict=True):  # task_c: never in a batch
        assert torch.equal(p, before) and p not in optimizer.state
    after_first = [[p.detach().clone() for p in skills(t)] for t in range(3)]
    state_b = [{k: v.clone() for k, v in optimizer.state[p].items()} for p in skills(1)]
    step(["task_a", "task_a", "task_a"])
    for p, before, state in zip(skills(1), after_first[1], state_b, strict=True):  # task_b: absent now
        assert torch.equal(p, before)
        assert all(torch.equal(optimizer.state[p][k], v) for k, v in state.items())
    for p, before in zip(skills(0), after_first[0], strict=True):  # task_a: in both batches
        assert not torch.equal(p, before) and int(optimizer.state[p]["step"]) == 2
    shared_state = optimizer.state[layer.shared_A]
    assert int(shared_state["step"]) == 2  # shared skills update every step, as before


def test_dense_task_skill_updates_step_absent_tasks_as_a_packed_tensor():
    """optim.task_skill_updates=dense: an absent task's skills get a zero gradient, so AdamW steps them as
    PEFT Poly steps its packed tensor: the same values as a packed-storage model under the same steps."""
    base = tiny_t5()
    per_task = add_skills(copy.deepcopy(base), _fixed())
    randomize_adapters(per_task)
    packed = add_skills(copy.deepcopy(base), SkillConfig(method="cpoly", task_names=TASKS))
    for (_, dense), (_, lazy) in zip(skilled_layers(packed), skilled_layers(per_task), strict=True):
        dense.load_adapter_tensors({**lazy.adapter_tensors(), "task_weights.weight": dense.task_weights.weight})
        dense.task_weights.weight.requires_grad_(False)  # W_B fixed at the identity in both
    optim = OptimConfig(name="adamw", lr=1e-2, weight_decay=0.1, task_skill_updates="dense")
    optimizers = {id(m): build_optimizer(m, optim) for m in (packed, per_task)}
    for tasks in (["task_a", "task_b", "task_a"], ["task_a", "task_a", "task_a"]):  # task_c never, task_b once
        for model in (packed, per_task):
            model.train()
            torch.manual_seed(5)
            _loss(model, tasks)
            if model is per_task:
                zero_grads_of_absent_task_skills(model)
            optimizers[id(model)].step()
            optimizers[id(model)].zero_grad(set_to_none=True)
    for (_, dense), (_, lazy) in zip(skilled_layers(packed), skilled_layers(per_task), strict=True):
        for name in ("task_A", "task_B", "shared_A", "allocation.logits"):
            torch.testing.assert_close(lazy.adapter_tensors()[name], dense.adapter_tensors()[name], atol=1e-6, rtol=0)
    layer = next(layer for _, layer in skilled_layers(per_task))
    assert int(optimizers[id(per_task)].state[layer.task_A_per_task[2]]["step"]) == 2  # task_c stepped too


def test_gradient_checkpointing_with_per_task_skills():
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
        if grad is None:  # task_b's skills
            assert ".task_A_per_task.1" in name or ".task_B_per_task.1" in name
            assert grads[1][name] is None
        else:
            torch.testing.assert_close(grads[1][name], grad, atol=1e-6, rtol=1e-5, msg=name)


def test_per_task_skills_are_saved_packed(tmp_path):
    """Files hold `<layer>.task_A` (S, T*B, d_in/S, r) as with trainable weights; loading restores the
    per-task Parameters exactly, and the parameter counts are those of the packed tensors."""
    config = _fixed(n_task_skills=2, n_splits=2)
    model = add_skills(tiny_t5(), config)
    randomize_adapters(model)
    save_skills(model, tmp_path)
    tensors = load_file(str(tmp_path / "adapter_model.safetensors"))
    d, r, n_layers = 32, config.rank, sum(1 for _ in skilled_layers(model))
    for name, layer in skilled_layers(model):
        assert f"{name}.task_A_per_task.0" not in tensors
        packed_a, packed_b = tensors[f"{name}.task_A"], tensors[f"{name}.task_B"]
        assert packed_a.shape == (2, 3 * 2, d // 2, r) and packed_b.shape == (2, 3 * 2, r, d // 2)
        for t in range(3):
            assert torch.equal(packed_a[:, 2 * t : 2 * t + 2], layer.task_A_per_task[t])
            assert torch.equal(packed_b[:, 2 * t : 2 * t + 2], layer.task_B_per_task[t])
    loaded = load_skills(tiny_t5(), tmp_path)
    for (_, a), (_, b) in zip(skilled_layers(model), skilled_layers(loaded), strict=True):
        for p, q in zip(
            [*a.task_A_per_task, *a.task_B_per_task], [*b.task_A_per_task, *b.task_B_per_task], strict=True
        ):
            assert torch.equal(p, q)
    counts = count_parameters(model)
    assert counts["task_skills"] == n_layers * 3 * 2 * r * (d + d)
    assert counts["router"] == n_layers * 3 * 2 * config.n_skills  # allocation logits only: W_B is fixed


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
        task_A, task_B = layer.exclusive_skills()
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
    model = add_skills(tiny_t5(), SkillConfig(method="cpoly", task_names=TASKS, alpha=3.0, **settings)).eval()
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
    model = add_skills(tiny_t5(), SkillConfig(method="moe_lora", task_names=TASKS, top_k=top_k, alpha=3.0))
    randomize_adapters(model)
    layer = next(layer for _, layer in skilled_layers(model))
    x = torch.randn(3, 5, layer.d_in)
    with torch.no_grad():
        gates = layer.gate(x)
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
