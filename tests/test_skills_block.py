"""C-Poly's W_B as the paper writes it (`task_weights: block`, Eq. 2): each task weighs only its own B
exclusive skills. Stored as (T, B) weights, gathered per batch with the task's skills; the formula of
DESIGN.md section 2 restricted to the block, `fixed` at B=1 and identity weights, gradients for the
batch's tasks only, save/load, export, allocation reports and routing through generate."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from helpers.factories import skill_config
from helpers.tiny_models import TASKS, randomize_adapters, t5_batch, tiny_t5

from cpoly import (
    SkillConfig,
    add_skills,
    allocation_matrix,
    count_parameters,
    export_task_lora,
    save_skills,
    use_tasks,
)
from cpoly.config import OptimConfig
from cpoly.skills import SkillConfigError, skilled_layers
from cpoly.skills.router import keyed_uniforms
from cpoly.train.optim import build_optimizer, fill_missing_grads

FIVE = [f"task_{i}" for i in range(5)]


def _block(task_names=TASKS, **overrides) -> SkillConfig:
    return SkillConfig(method="cpoly", task_names=task_names, task_weights="block", **overrides)


def _shared_weights(layer, task: int, uniforms: torch.Tensor | None) -> torch.Tensor:
    """(S, K): sigmoid(Z[t]) at evaluation; in training the relaxed-Bernoulli sample of the uniforms,
    sigmoid((log u - log(1 - u) + Z[t]) / tau); normalised within each split."""
    c = layer.config
    logits = layer.allocation.logits[task].view(c.n_splits, c.n_skills)
    if uniforms is None:
        z = torch.sigmoid(logits)
    else:
        z = torch.sigmoid((uniforms.log() - torch.log1p(-uniforms) + logits) / c.temperature)
    return z / z.sum(-1, keepdim=True)


def _reference_delta(layer, x, task: int, uniforms: torch.Tensor | None) -> torch.Tensor:
    """The delta of one example of `task` written out: A~ = sum_k w_k A_k + sum_{j<B} W_B[t, j] A_{tB+j},
    the same for B~, s * x A~ B~ (params mixing); or s * (sum_k w_k x A_k B_k + sum_j W_B[t, j] x A_j B_j)
    (outputs mixing)."""
    c = layer.config
    r, B = c.rank, c.n_task_skills
    w_shared = _shared_weights(layer, task, uniforms)  # (S, K)
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


@pytest.mark.parametrize(
    "settings",
    [dict(), dict(n_task_skills=3), dict(n_splits=2, n_task_skills=2), dict(n_task_skills=2, mixing="outputs")],
    ids=["B1", "B3", "S2-B2", "B2-outputs"],
)
@pytest.mark.parametrize("mode", ["eval", "train"])
def test_block_layer_is_the_formula(settings, mode):
    """float64, every layer: the layer's output equals the formula, given the same weights and (training)
    the same routing noise."""
    model = add_skills(tiny_t5().double(), _block(alpha=3.0, **settings))
    randomize_adapters(model)
    getattr(model, mode)()
    ids, keys = [2, 0, 2], torch.tensor([11, 12, 13])
    for _, layer in skilled_layers(model):
        assert layer.task_weights.weight.shape == (3, layer.n_task)
        x = torch.randn(3, 5, layer.d_in, dtype=torch.float64)
        with use_tasks(model, ids, noise_keys=keys), torch.no_grad():
            actual = layer(x)
            expected = []
            for i, t in enumerate(ids):
                uniforms = None
                if mode == "train":
                    n = layer.config.n_splits * layer.n_shared
                    uniforms = keyed_uniforms(keys[i : i + 1], layer.allocation.layer_index, n, torch.float64)[0]
                    uniforms = uniforms.view(layer.config.n_splits, layer.n_shared)
                expected.append(layer.base_layer(x[i]) + _reference_delta(layer, x[i], t, uniforms))
        torch.testing.assert_close(actual, torch.stack(expected), atol=1e-10, rtol=0)


@pytest.mark.parametrize("mixing", ["params", "outputs"])
def test_block_with_one_skill_and_identity_weights_is_fixed(mixing):
    """B=1 at its identity init: each example uses its own task's skill with weight 1, what `fixed` does;
    the same outputs in both modes and the same gradients for the skills."""
    base = tiny_t5()
    fixed_config = skill_config("cpoly", task_weights="fixed", mixing=mixing)
    fixed = add_skills(copy.deepcopy(base), fixed_config)
    randomize_adapters(fixed)
    block = add_skills(copy.deepcopy(base), _block(mixing=mixing))
    for (_, b), (_, f) in zip(skilled_layers(block), skilled_layers(fixed), strict=True):
        b.load_adapter_tensors(f.adapter_tensors())
        torch.testing.assert_close(b.task_weights.weight.detach(), torch.ones(3, 1), atol=0, rtol=0)
    batch, tasks = t5_batch(), ["task_c", "task_a", "task_c"]
    for mode in ("eval", "train"):
        outputs = []
        for model in (fixed, block):
            getattr(model, mode)()
            torch.manual_seed(3)
            with use_tasks(model, tasks):
                outputs.append(model(**batch))
            outputs[-1].loss.backward()
        torch.testing.assert_close(outputs[1].logits, outputs[0].logits, atol=1e-6, rtol=0)
    for (_, f), (_, b) in zip(skilled_layers(fixed), skilled_layers(block), strict=True):
        for name in ("shared_A", "shared_B", "allocation.logits", "task_A", "task_B"):
            torch.testing.assert_close(b.get_parameter(name).grad, f.get_parameter(name).grad, atol=1e-6, rtol=0)


def test_gradients_reach_only_the_batch_tasks_and_every_tensor_is_stepped():
    """A step of tasks 0 and 3 (of 5) gives non-zero gradients to their exclusive skills and block weights
    only; the other rows get zeros from the gather, so the trainer's AdamW steps every tensor (the rule of
    docs/design-decisions.md), W_B in its own group without weight decay."""
    model = add_skills(tiny_t5(), _block(FIVE, n_task_skills=2))
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


def test_block_stores_t_by_b_weights_and_reports_the_full_matrix():
    model = add_skills(tiny_t5(), _block(FIVE, n_task_skills=2))
    counts = count_parameters(model)
    n_layers = sum(1 for _ in skilled_layers(model))
    assert counts["router"] == n_layers * (5 * 3 + 5 * 2)  # allocation logits T x K, W_B T x B
    torch.testing.assert_close(allocation_matrix(model).task_weights, torch.repeat_interleave(torch.eye(5), 2, 1) / 2)
    randomize_adapters(model)
    full = allocation_matrix(model).task_weights  # (T, T*B), zeros off the blocks
    mean = torch.stack([layer.task_weights.weight.detach() for _, layer in skilled_layers(model)]).mean(0)
    assert full.shape == (5, 10)
    on_block = torch.repeat_interleave(torch.eye(5, dtype=torch.bool), 2, 1)
    torch.testing.assert_close(full[on_block].view(5, 2), mean)
    assert full[~on_block].abs().max() == 0


def test_mixed_task_generate_with_beams_equals_one_by_one():
    model = add_skills(tiny_t5(), _block(n_task_skills=2))
    randomize_adapters(model, std=1.0)
    batch = t5_batch()
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    tasks = ["task_c", "task_a", "task_b"]
    options = dict(num_beams=3, num_return_sequences=2, max_new_tokens=6, do_sample=False)
    with use_tasks(model, tasks):
        together = model.generate(**inputs, **options)
    for i, task in enumerate(tasks):
        length = int(inputs["attention_mask"][i].sum())
        with use_tasks(model, [task]):
            alone = model.generate(**{k: v[i : i + 1, :length] for k, v in inputs.items()}, **options)
        torch.testing.assert_close(together[2 * i : 2 * i + 2, : alone.shape[1]], alone)


def test_a_saved_block_adapter_holds_t_by_b_weights_and_a_dense_model_refuses_it(tmp_path):
    """(The exact round trip of every variant, block included: test_skills_io.py.)"""
    from safetensors.torch import load_file

    model = add_skills(tiny_t5(), _block(n_task_skills=2))
    randomize_adapters(model)
    save_skills(model, tmp_path / "adapter")
    meta = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert meta["skill_config"]["task_weights"] == "block"
    tensors = load_file(str(tmp_path / "adapter" / "adapter_model.safetensors"))
    assert {tuple(v.shape) for k, v in tensors.items() if k.endswith("task_weights.weight")} == {(3, 2)}
    dense = add_skills(tiny_t5(), skill_config("cpoly", n_task_skills=2))
    from cpoly.skills.io import load_skill_tensors

    with pytest.raises(ValueError, match=r"task_weights.weight has shape \(3, 2\), the model expects \(3, 6\)"):
        load_skill_tensors(dense, tmp_path / "adapter")


@pytest.mark.parametrize(
    "settings", [dict(n_task_skills=2), dict(n_task_skills=2, n_splits=2), dict(n_task_skills=2, mixing="outputs")]
)
def test_export_equals_the_layer_for_each_task(settings, tmp_path):
    peft = pytest.importorskip("peft")
    base = tiny_t5()
    model = add_skills(copy.deepcopy(base), _block(**settings))
    randomize_adapters(model)
    batch = t5_batch()
    for task in TASKS:
        export_task_lora(model, task, tmp_path / task)
        rank = json.loads((tmp_path / task / "adapter_config.json").read_text())["r"]
        assert rank == (2 if settings.get("mixing") != "outputs" else (3 + 2) * 2)  # r; or K + B skills of r
        lora = peft.PeftModel.from_pretrained(copy.deepcopy(base), tmp_path / task).eval()
        with use_tasks(model, [task] * 3):
            expected = model(**batch).logits
        torch.testing.assert_close(lora(**batch).logits, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "overrides, value",
    [
        (dict(method="cpoly", n_task_skills=0), "'block'"),
        (dict(method="poly"), "'block'"),
        (dict(method="mhr", n_splits=2), "'block'"),
        (dict(method="task_lora"), "'block'"),
        (dict(method="cpoly", task_weights="blocks"), "'blocks'"),
    ],
    ids=["cpoly-B0", "poly", "mhr", "task_lora", "misspelled"],
)
def test_bad_values_are_refused_by_name(overrides, value):
    kwargs = dict(task_names=TASKS, task_weights="block") | overrides
    with pytest.raises(SkillConfigError) as err:
        SkillConfig(**kwargs)
    assert f"SkillConfig.task_weights={value}" in str(err.value)


def test_method_option_cpoly_block(tmp_path):
    from helpers.compose import compose_train
    from omegaconf import OmegaConf

    from cpoly.config import ConfigError, MethodConfig, check_config

    cfg = compose_train(["method=cpoly_block"], output_dir=tmp_path)
    check_config(cfg)
    method = OmegaConf.to_object(cfg.method)
    assert isinstance(method, MethodConfig) and (method.name, method.task_weights) == ("cpoly_block", "block")
    cpoly = OmegaConf.to_object(compose_train(["method=cpoly"], output_dir=tmp_path).method)
    assert {k: v for k, v in vars(method).items() if k not in ("name", "task_weights")} == {
        k: v for k, v in vars(cpoly).items() if k not in ("name", "task_weights")
    }
    with pytest.raises(ConfigError, match="method.task_weights='block'"):
        check_config(compose_train(["method=poly", "method.task_weights=block"], output_dir=tmp_path))
