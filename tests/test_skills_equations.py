"""Each method computes its formula: the written-out equations of DESIGN.md section 2 and docs/methods.md,
and parity with reference implementations (AdapterHub `adapters` through a committed fixture, the `mixlora`
package live, transformers' Mixtral load-balancing loss). The sources are named in tests/helpers/skill_refs.py
and docs/methods.md."""

from __future__ import annotations

import copy

import pytest
import torch
from helpers.factories import randomize_all, skill_config
from helpers.skill_refs import (
    ABSENT,
    FIVE,
    FIXTURE,
    OneLinear,
    backward_loss,
    block_config,
    block_reference_delta,
    fixed_and_identity_trainable,
    mixlora_reference_block,
    mtl_lora_delta,
    reference_delta,
    switch_loss_written_out,
)
from helpers.tiny_models import TASKS, randomize_adapters, t5_batch, tiny_t5
from safetensors import safe_open
from safetensors.torch import load_file

from cpoly import (
    SkillConfig,
    add_skills,
    allocation_matrix,
    count_parameters,
    use_tasks,
)
from cpoly.skills import pop_aux_loss, skilled_layers
from cpoly.skills.router import keyed_uniforms


@pytest.mark.parametrize(
    "settings",
    [dict(), dict(n_task_skills=3), dict(n_splits=2, n_task_skills=2), dict(n_task_skills=2, mixing="outputs")],
    ids=["B1", "B3", "S2-B2", "B2-outputs"],
)
@pytest.mark.parametrize("mode", ["eval", "train"])
def test_block_layer_is_the_formula(settings, mode):
    """float64, every layer: the layer's output equals the formula, given the same weights and (training)
    the same routing noise."""
    model = add_skills(tiny_t5().double(), block_config(alpha=3.0, **settings))
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
                expected.append(layer.base_layer(x[i]) + block_reference_delta(layer, x[i], t, uniforms))
        torch.testing.assert_close(actual, torch.stack(expected), atol=1e-10, rtol=0)


@pytest.mark.parametrize("mixing", ["params", "outputs"])
def test_block_with_one_skill_and_identity_weights_is_fixed(mixing):
    """B=1 at its identity init: each example uses its own task's skill with weight 1, what `fixed` does;
    the same outputs in both modes and the same gradients for the skills."""
    base = tiny_t5()
    fixed_config = skill_config("cpoly", task_weights="fixed", mixing=mixing)
    fixed = add_skills(copy.deepcopy(base), fixed_config)
    randomize_adapters(fixed)
    block = add_skills(copy.deepcopy(base), block_config(mixing=mixing))
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


def test_block_stores_t_by_b_weights_and_reports_the_full_matrix():
    model = add_skills(tiny_t5(), block_config(FIVE, n_task_skills=2))
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


@pytest.mark.parametrize("n_task_skills", [1, 2])
def test_fixed_task_weights_compute_what_identity_weights_do(n_task_skills):
    """Gathering each example's own task's skills equals mixing all of them with W_B = identity: the same
    outputs (train and eval mode, same noise) and the same gradients, zeros for the absent task."""
    fixed, trainable = fixed_and_identity_trainable(n_task_skills)
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
        backward_loss(model, ABSENT, batch)
    absent = slice(n_task_skills, 2 * n_task_skills)  # task_b's columns
    for (_, f), (_, t) in zip(skilled_layers(fixed), skilled_layers(trainable), strict=True):
        for name in ("shared_A", "shared_B", "allocation.logits", "task_A", "task_B"):
            torch.testing.assert_close(f.get_parameter(name).grad, t.get_parameter(name).grad, atol=1e-6, rtol=0)
        assert f.task_A.grad[:, absent].abs().max() == 0 and f.task_B.grad[:, absent].abs().max() == 0


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
            [layer.base_layer(x[i]) + reference_delta(layer, x[i], t) for i, t in enumerate([2, 0, 1])]
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


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(method="poly", n_skills_a=1),
        dict(method="poly", n_skills_a=1, mixing="outputs"),
        dict(method="mhr", n_skills_a=1, n_splits=2),
        dict(method="cpoly", n_skills_a=1),
        dict(method="poly", n_skills_a=1, allocation="softmax", bottleneck="diagonal", temperature=0.7),
    ],
    ids=["poly", "poly-outputs", "mhr-S2", "cpoly", "poly-softmax-diagonal"],
)
def test_one_shared_down_projection_is_the_formula(kwargs):
    """n_skills_a=1 under the task-routed methods, in float64 against loops: for example i, the rank-r code
    h_i = sum_q x_i[q-th input block] A_q (PEFT Poly's MHR: the splits' A's stack along the input), and the
    q-th output block is scaling * h_i (sum_k w_iqk B_qk) (plus C-Poly's exclusive skills; a diagonal
    Lambda_t scales the code where set). Evaluation mode: the allocation's weights are deterministic."""
    torch.manual_seed(0)
    model = OneLinear(8, 6, dtype=torch.float64)
    add_skills(model, SkillConfig(task_names=TASKS, target_modules=["lin"], **kwargs))
    layer, c = model.lin, model.lin.config
    assert layer.shared_A.shape[1] == 1 and layer.shared_B.shape[1] == c.n_skills and c.asymmetric
    randomize_all(model)
    model.eval()
    x = torch.randn(3, 4, 8, dtype=torch.float64)
    ids = [2, 0, 1]
    with torch.no_grad(), use_tasks(model, ids):
        got = model(x)
        w = layer.shared_weights(layer.routing.batch)  # (b, S, K)
        expected = layer.base_layer(x).clone()
        S, d_in, d_out = c.n_splits, 8 // c.n_splits, 6 // c.n_splits
        for i, t in enumerate(ids):
            tw = layer.task_weights.weight[t] if c.n_task_skills else None  # C-Poly: trainable W_B's row
            code = 0
            for q in range(S):
                a = layer.shared_A[q, 0]
                if tw is not None:
                    a = a + sum(tw[j] * layer.task_A[q, j] for j in range(tw.shape[0]))
                code = code + x[i, :, q * d_in : (q + 1) * d_in] @ a
            if c.bottleneck == "diagonal":
                code = code * layer.bottleneck.weight[t]
            for q in range(S):
                b = sum(w[i, q, k] * layer.shared_B[q, k] for k in range(c.n_skills))
                if tw is not None:
                    b = b + sum(tw[j] * layer.task_B[q, j] for j in range(tw.shape[0]))
                expected[i, :, q * d_out : (q + 1) * d_out] += c.scaling * code @ b
    torch.testing.assert_close(got, expected, atol=1e-10, rtol=0)


def test_mtl_lora_matches_adapters_fixture():
    """cpoly's mtl_lora with a diagonal bottleneck against adapters 1.3.0's MTL-LoRA: the same weights give
    the same outputs in training and evaluation mode (fp32, 1e-6). adapters stores A (r, d_in), B_i (d_out, r)
    (ours: A (d_in, r), B_i (r, d_out)), diag(Lambda_t) as `task_specific.values` and the mixing logits w_t as
    `weights`, mixed by exp(w_t / tau) / sum: our softmax(logits_t / temperature). Regenerate the fixture with
    tests/parity/make_mtl_lora_reference.py (adapters pins transformers ~=4.57.6, so not in this venv)."""
    ref = load_file(str(FIXTURE))
    with safe_open(str(FIXTURE), "pt") as f:
        meta = f.metadata()
    assert meta["adapters"] == "1.3.0" and meta["dropout"] == "0.0"
    tasks = meta["tasks"].split(",")
    d_in, d_out, r, n = (int(meta[k]) for k in ("d_in", "d_out", "r", "n_up_projection"))
    model = OneLinear(d_in, d_out)
    with torch.no_grad():
        model.lin.weight.copy_(ref["base.weight"])
        model.lin.bias.copy_(ref["base.bias"])
    config = SkillConfig(
        method="mtl_lora",
        task_names=tasks,
        target_modules=["lin"],
        rank=r,
        n_skills=n,
        alpha=float(meta["alpha"]),
        temperature=float(meta["weights_sharpness"]),
        bottleneck="diagonal",
    )
    add_skills(model, config)
    layer = model.lin
    with torch.no_grad():
        layer.shared_A[0, 0].copy_(ref["lora_A"].T)
        for i in range(n):
            layer.shared_B[0, i].copy_(ref["lora_B"][i].T)
        for t in range(len(tasks)):
            layer.allocation.logits[t].copy_(ref[f"task{t}.weights"])
            layer.bottleneck.weight[t].copy_(ref[f"task{t}.values"])
    assert layer.shared_A.shape == (1, 1, d_in, r) and layer.shared_B.shape == (1, n, r, d_out)
    for mode in ("train", "eval"):
        model.train(mode == "train")
        with use_tasks(model, ref["task_ids"]):
            got = model(ref["x"])
        torch.testing.assert_close(got, ref[f"y_{mode}"], atol=1e-6, rtol=0)


@pytest.mark.parametrize("bottleneck", ["full", "diagonal"])
def test_mtl_lora_unknown_task_mixes_uniformly_through_the_identity(bottleneck):
    """unknown_task=uniform: an unseen task gets uniform weights over the B's and Lambda = identity,
    beside known tasks in the same batch (float64)."""
    torch.manual_seed(0)
    model = OneLinear(10, 6, dtype=torch.float64)
    config = SkillConfig(
        method="mtl_lora", task_names=TASKS, target_modules=["lin"], unknown_task="uniform", bottleneck=bottleneck
    )
    add_skills(model, config)
    layer = model.lin
    randomize_all(model)
    x = torch.randn(2, 5, 10, dtype=torch.float64)
    with torch.no_grad(), use_tasks(model, ["task_b", "never_seen"]):
        got = model(x)
    mixed_b = layer.shared_B[0].mean(0)  # uniform over the n up-projections
    unseen = layer.config.scaling * (x[1] @ layer.shared_A[0, 0] @ mixed_b)
    known = mtl_lora_delta(layer, x[:1], [1])[0]
    with torch.no_grad():
        torch.testing.assert_close(got[0], layer.base_layer(x[0]) + known, atol=1e-10, rtol=0)
        torch.testing.assert_close(got[1], layer.base_layer(x[1]) + unseen, atol=1e-10, rtol=0)


def test_mtl_lora_full_bottleneck_is_the_formula():
    """The default mtl_lora (full r x r Lambda_t, identity init; n=3 up-projections; tau=0.1) in float64."""
    torch.manual_seed(0)
    model = OneLinear(10, 6, dtype=torch.float64)
    add_skills(model, skill_config("mtl_lora", target_modules=["lin"]))
    layer = model.lin
    c = layer.config
    assert (c.rank, c.n_skills, c.n_skills_a, c.temperature, c.bottleneck) == (4, 3, 1, 0.1, "full")
    assert layer.bottleneck.weight.shape == (3, 4, 4) and layer.allocation.logits.shape == (3, 3)
    torch.testing.assert_close(layer.bottleneck.weight.detach(), torch.eye(4, dtype=torch.float64).expand(3, 4, 4))
    randomize_all(model)
    x = torch.randn(4, 5, 10, dtype=torch.float64)
    ids = [2, 0, 1, 2]
    with torch.no_grad():
        expected = model.lin.base_layer(x) + mtl_lora_delta(layer, x, ids)
        for mode in ("train", "eval"):  # softmax allocation: no noise in training
            model.train(mode == "train")
            with use_tasks(model, ids):
                torch.testing.assert_close(model(x), expected, atol=1e-10, rtol=0)


@pytest.mark.parametrize("temperature", [None, 0.5])
def test_hydralora_is_the_formula(temperature):
    """(alpha / r) sum_i softmax(W_g x / tau)_i x A B_i on every token, dense, float64, no task ids needed."""
    torch.manual_seed(0)
    model = OneLinear(10, 6, dtype=torch.float64)
    config = SkillConfig(
        method="hydralora", task_names=TASKS, target_modules=["lin"], alpha=2.0, temperature=temperature
    )
    add_skills(model, config)
    layer = model.lin
    assert layer.shared_A.shape == (1, 1, 10, 4) and layer.shared_B.shape == (1, 3, 4, 6)
    assert layer.gate.proj.weight.shape == (3, 10) and config.top_k is None
    randomize_all(model, std=1.0)
    tau = config.temperature
    A, Bs, Wg = layer.shared_A[0, 0], layer.shared_B[0], layer.gate.proj.weight
    for x in (torch.randn(3, 5, 10, dtype=torch.float64), torch.randn(7, 10, dtype=torch.float64)):
        with torch.no_grad():
            logits = x @ Wg.T / tau
            g = torch.exp(logits - logits.amax(-1, keepdim=True))
            g = g / g.sum(-1, keepdim=True)
            delta = sum(g[..., i : i + 1] * (x @ A @ Bs[i]) for i in range(3))
            expected = x @ layer.base_layer.weight.T + layer.base_layer.bias + (2.0 / 4) * delta
            for mode in ("train", "eval"):
                model.train(mode == "train")
                torch.testing.assert_close(model(x), expected, atol=1e-10, rtol=0)


def test_mixlora_matches_the_mixlora_package():
    """Top-2 of 4 LoRA experts (r=2, alpha=4) under a softmax router, renormalised: the same outputs as
    mixlora 0.2.3 in fp32 (1e-6), our layer in training and evaluation mode (neither has noise)."""
    D, E, K, R, alpha = 8, 4, 2, 2, 4.0
    moe, block, w = mixlora_reference_block(D, E, K, R, alpha)
    x = torch.randn(3, 5, D, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = moe(x.clone())  # it scales its input in place when jitter_noise > 0
    model = OneLinear(D, D)
    model.lin.load_state_dict(block.fc1.state_dict())
    config = SkillConfig(
        method="mixlora", task_names=TASKS, target_modules=["lin"], rank=R, n_skills=E, top_k=K, alpha=alpha
    )
    add_skills(model, config)
    layer = model.lin
    with torch.no_grad():
        layer.gate.proj.weight.copy_(w["gate"])
        for e in range(E):
            layer.shared_A[0, e].copy_(w[f"A{e}"].T)
            layer.shared_B[0, e].copy_(w[f"B{e}"].T)
    # the routing is not degenerate: the top-2 choices differ between tokens
    chosen = torch.softmax(x.reshape(-1, D) @ w["gate"].T, -1).topk(K, -1).indices.sort(-1).values
    assert len({tuple(c) for c in chosen.tolist()}) > 1
    for mode in ("train", "eval"):
        model.train(mode == "train")
        with torch.no_grad():
            got = model(x)
        torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)


def test_mixlora_aux_loss_is_the_switch_mixtral_loss():
    """One layer: pop_aux_loss equals the written-out loss and transformers' Mixtral load_balancing_loss_func
    on the layer's router logits; it carries a gradient to the router; none in eval mode or without grad."""
    torch.manual_seed(0)
    model = OneLinear(8, 8)
    add_skills(model, skill_config("mixlora", target_modules=["lin"]))
    layer = model.lin
    assert (layer.config.n_skills, layer.config.top_k, layer.config.aux_loss_coef) == (4, 2, 0.001)
    with torch.no_grad():
        layer.gate.proj.weight.normal_(std=1.0)  # an unbalanced router
    x = torch.randn(4, 6, 8)
    model.train()
    model(x)
    aux = pop_aux_loss(model)
    assert pop_aux_loss(model) is None  # popped
    logits = (x @ layer.gate.proj.weight.T).detach()
    expected = switch_loss_written_out(logits, 2)
    torch.testing.assert_close(aux.double(), expected, atol=1e-6, rtol=0)
    assert abs(aux.item() - 2.0) > 1e-3  # not the balanced value (k)
    mixtral = pytest.importorskip("transformers.models.mixtral.modeling_mixtral")
    hf = mixtral.load_balancing_loss_func((logits.reshape(-1, 4),), num_experts=4, top_k=2)
    torch.testing.assert_close(aux, hf, atol=1e-6, rtol=0)
    aux.backward()
    assert layer.gate.proj.weight.grad.abs().sum() > 0
    with torch.no_grad():
        model(x)
    model.eval()
    model(x)
    assert pop_aux_loss(model) is None


def test_aux_loss_pools_the_layers_as_mixtral_does():
    """On a model: one loss over every adapted layer's tokens pooled, as transformers' Mixtral function
    computes it given every layer's router logits (not the mean of per-layer losses)."""
    mixtral = pytest.importorskip("transformers.models.mixtral.modeling_mixtral")
    model = add_skills(tiny_t5(), skill_config("mixlora"))
    randomize_all(model, std=1.0)
    logits = {}
    for name, layer in skilled_layers(model):
        layer.register_forward_hook(
            lambda mod, args, out, name=name: logits.__setitem__(name, (args[0] @ mod.gate.proj.weight.T).detach())
        )
    model.train()
    batch = t5_batch()
    model(**batch)
    aux = pop_aux_loss(model)
    n_layers = sum(1 for _ in skilled_layers(model))
    assert len(logits) == n_layers == 12  # q and v of 2 encoder, 2 decoder self- and 2 cross-attention blocks
    pooled = mixtral.load_balancing_loss_func(tuple(z.reshape(-1, 4) for z in logits.values()), num_experts=4, top_k=2)
    torch.testing.assert_close(aux, pooled, atol=1e-6, rtol=0)
    per_layer = [mixtral.load_balancing_loss_func((z.reshape(-1, 4),), num_experts=4, top_k=2) for z in logits.values()]
    assert abs(aux - torch.stack(per_layer).mean()) > 1e-4  # the test tells pooling from a mean of layers
