"""The skilled-LoRA layer on the architecture kinds: identity at init (every method and variant), training,
equivalences."""

from __future__ import annotations

import copy

import pytest
import torch
from helpers.factories import VARIANTS, skill_config
from helpers.tiny_models import (
    causal_batch,
    randomize_adapters,
    t5_batch,
    tiny_bert,
    tiny_gpt2,
    tiny_llama,
    tiny_t5,
)

from cpoly import add_skills, count_parameters, use_tasks
from cpoly.skills import METHODS, SkilledLinear, skilled_layers

ARCHS = {
    "t5": (tiny_t5, ["q", "v"], t5_batch),
    "llama": (tiny_llama, ["q_proj", "v_proj"], causal_batch),
    "bert": (tiny_bert, ["query", "value"], causal_batch),
    "gpt2": (tiny_gpt2, ["c_attn"], causal_batch),
}
BATCH_TASKS = ["task_a", "task_c", "task_b"]


def forward(model, batch, tasks=BATCH_TASKS):
    inputs = batch if not isinstance(model, type(tiny_bert())) else {k: v for k, v in batch.items() if k != "labels"}
    if hasattr(model, "cpoly_skills"):
        with use_tasks(model, tasks):
            out = model(**inputs)
    else:
        out = model(**inputs)
    return out.logits if hasattr(out, "logits") else out.last_hidden_state


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("variant", VARIANTS)
def test_fresh_adapter_leaves_outputs_unchanged(arch, variant):
    """Every method and variant starts as the identity on every architecture kind (B = 0, W_B = I, ...)."""
    make, targets, make_batch = ARCHS[arch]
    base = make().requires_grad_(False)  # frozen reference: grad mode changes CPU kernels by ~1e-6
    model = add_skills(copy.deepcopy(base), skill_config(variant, target_modules=targets))
    batch = make_batch()
    torch.testing.assert_close(forward(model, batch), forward(base, batch), atol=1e-6, rtol=0)
    n_layers = sum(1 for _ in skilled_layers(model))
    assert n_layers > 0 and all(isinstance(m, SkilledLinear) for _, m in skilled_layers(model))


@pytest.mark.parametrize("method", METHODS)
def test_each_method_trains(method):
    model = add_skills(tiny_t5(), skill_config(method, target_modules=["q", "k", "v", "o"]))
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert trainable and all(not p.requires_grad for n, p in model.named_parameters() if "base_layer" in n)
    optimizer = torch.optim.AdamW(trainable, lr=5e-2)
    batch = t5_batch()
    losses = []
    for _ in range(20):
        with use_tasks(model, BATCH_TASKS):
            loss = model(**batch).loss
            loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert sum(losses[-3:]) / 3 < 0.7 * losses[0], losses


def test_cpoly_without_task_skills_is_poly():
    base = tiny_t5()
    poly = add_skills(copy.deepcopy(base), skill_config("poly", n_skills=3, n_splits=1))
    cpoly = add_skills(copy.deepcopy(base), skill_config("cpoly", n_skills=3, n_task_skills=0))
    randomize_adapters(poly)
    cpoly.load_state_dict(poly.state_dict())
    batch = t5_batch()
    for mode in ("eval", "train"):
        getattr(poly, mode)(), getattr(cpoly, mode)()
        torch.manual_seed(3)
        a = forward(poly, batch)
        torch.manual_seed(3)
        b = forward(cpoly, batch)
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)


def test_shared_lora_equals_peft_lora():
    peft = pytest.importorskip("peft")
    base = tiny_t5()
    ours = add_skills(copy.deepcopy(base), skill_config("shared_lora", rank=4, alpha=8.0))
    randomize_adapters(ours)
    lora = peft.get_peft_model(
        copy.deepcopy(base), peft.LoraConfig(r=4, lora_alpha=8.0, target_modules=["q", "v"], lora_dropout=0.0)
    )
    with torch.no_grad():
        for name, layer in skilled_layers(ours):
            peft_layer = lora.base_model.model.get_submodule(name)
            peft_layer.lora_A["default"].weight.copy_(layer.shared_A[0, 0].T)
            peft_layer.lora_B["default"].weight.copy_(layer.shared_B[0, 0].T)
    batch = t5_batch()
    # fp32 rounding: the delta is added into the base output in one fused matmul, PEFT adds it after
    torch.testing.assert_close(forward(ours, batch), lora(**batch).logits, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("mixing", ["params", "outputs"])
def test_fixed_task_weights_isolate_tasks(mixing):
    """With fixed task weights an example of task t ignores other tasks' exclusive skills, and only its
    own exclusive skill receives a non-zero gradient (the others' is zero: every skill is stepped)."""
    config = skill_config("cpoly", task_weights="fixed", mixing=mixing)
    model = add_skills(tiny_t5(), config)
    randomize_adapters(model)
    batch = {k: v[:1] for k, v in t5_batch().items()}
    before = forward(model, batch, ["task_b"])
    other_before = forward(model, batch, ["task_a"])
    with torch.no_grad():
        for _, layer in skilled_layers(model):
            for skills in (layer.task_A, layer.task_B):
                skills[:, [0, 2]] += torch.randn_like(skills[:, [0, 2]])
    torch.testing.assert_close(forward(model, batch, ["task_b"]), before, atol=0, rtol=0)
    assert (forward(model, batch, ["task_a"]) - other_before).abs().max() > 1e-3  # the edit was real
    model.train()
    with use_tasks(model, ["task_b"]):
        model(**batch).loss.backward()
    for _, layer in skilled_layers(model):
        for skills in (layer.task_A, layer.task_B):
            assert skills.grad[:, [0, 2]].abs().max() == 0
        assert layer.task_B.grad[:, 1].abs().max() > 0


def test_trainable_task_weights_start_as_identity_and_learn_off_diagonal():
    model = add_skills(tiny_t5(), skill_config("cpoly", n_task_skills=2))
    layer = next(layer for _, layer in skilled_layers(model))
    expected = torch.repeat_interleave(torch.eye(3), 2, dim=1) / 2
    torch.testing.assert_close(layer.task_weights.weight.detach(), expected)
    randomize_adapters(model)
    model.train()
    with use_tasks(model, ["task_a"] * 3):
        model(**t5_batch()).loss.backward()
    grad = layer.task_weights.weight.grad
    assert grad[0, 2:].abs().max() > 0  # other tasks' skills can be taken up
    assert grad[1:].abs().max() == 0  # rows of tasks not in the batch get nothing


def test_unknown_tasks():
    strict = add_skills(tiny_t5(), skill_config("cpoly"))
    with pytest.raises(ValueError, match="unknown task 'task_z'"):
        with use_tasks(strict, ["task_a", "task_z"]):
            pass
    lenient = add_skills(tiny_t5(), skill_config("cpoly", unknown_task="uniform"))
    randomize_adapters(lenient)
    batch = t5_batch()
    mixed = forward(lenient, batch, ["task_a", "task_z", "task_b"])
    known = forward(lenient, batch, ["task_a", "task_c", "task_b"])
    torch.testing.assert_close(mixed[[0, 2]], known[[0, 2]], atol=1e-6, rtol=0)
    # the unknown example: uniform shared weights, no exclusive skill
    uniform = copy.deepcopy(lenient)
    with torch.no_grad():
        for _, layer in skilled_layers(uniform):
            layer.allocation.logits.zero_()
            layer.task_A.zero_()
            layer.task_B.zero_()
    torch.testing.assert_close(mixed[1], forward(uniform, batch, ["task_a"] * 3)[1], atol=1e-6, rtol=0)


def test_task_ids_are_required_and_removed_after_the_context():
    model = add_skills(tiny_t5(), skill_config("poly"))
    with pytest.raises(RuntimeError, match="use_tasks"):
        model(**t5_batch())
    with pytest.raises(KeyError):
        with use_tasks(model, BATCH_TASKS):
            raise KeyError("boom")
    assert model.cpoly_skills.routing.batch is None
    with pytest.raises(ValueError, match="a batch of 3 inputs was routed with 2 task ids"):
        with use_tasks(model, ["task_a", "task_b"]):
            model(**t5_batch())
    with pytest.raises(ValueError, match="out of range"):
        with use_tasks(model, torch.tensor([0, 7, 1])):
            pass
    # task-agnostic methods need no task ids
    shared = add_skills(tiny_t5(), skill_config("shared_lora"))
    shared(**t5_batch())


def test_half_as_many_task_ids_as_examples_is_an_error_outside_generate():
    """b/2 task ids for b examples used to route pairs of examples to one task in silence; only
    generate() expands a batch (beams, returned sequences) to a multiple of its task ids."""
    model = add_skills(tiny_t5(), skill_config("cpoly"))
    batch = {k: torch.cat([v, v[:1]]) for k, v in t5_batch().items()}  # 4 examples
    with pytest.raises(ValueError, match="a batch of 4 inputs was routed with 2 task ids"):
        with use_tasks(model, ["task_a", "task_b"]):
            model(**batch)
    inputs = {"input_ids": batch["input_ids"][:2], "attention_mask": batch["attention_mask"][:2]}
    with use_tasks(model, ["task_a", "task_b"]):
        out = model.generate(**inputs, num_beams=2, num_return_sequences=2, max_new_tokens=3)
    assert out.shape[0] == 4 and not model.cpoly_skills.routing.generating
    copied = copy.deepcopy(model)  # the generate() hook follows the copy
    with use_tasks(copied, ["task_a", "task_b"]):
        copied.generate(**inputs, num_beams=2, max_new_tokens=3)


def test_target_modules_by_regex_and_no_match_error():
    model = add_skills(tiny_t5(), skill_config("poly", target_modules=r"encoder\..*\.(q|v)"))
    names = [n for n, _ in skilled_layers(model)]
    assert names and all(n.startswith("encoder.") and n.rsplit(".", 1)[-1] in ("q", "v") for n in names)
    with pytest.raises(ValueError) as err:
        add_skills(tiny_t5(), skill_config("poly", target_modules=["q_proj"]))
    assert "q_proj" in str(err.value) and "SelfAttention.q" in str(err.value) and "wo" in str(err.value)


def test_splits_must_divide_layer_dimensions():
    with pytest.raises(ValueError, match="n_splits=3"):
        add_skills(tiny_t5(), skill_config("mhr", n_splits=3))


def test_parameter_counts_by_component():
    config = skill_config("cpoly", target_modules=["q", "v"])
    model = add_skills(tiny_t5(), config)
    n_layers = sum(1 for _ in skilled_layers(model))  # 12: 4 encoder + 8 decoder (self + cross)
    d, r, K, T = 32, 2, 3, 3
    counts = count_parameters(model)
    assert counts["shared_skills"] == n_layers * K * r * (d + d)
    assert counts["task_skills"] == n_layers * T * r * (d + d)
    assert counts["router"] == n_layers * (T * K + T * T)
    assert counts["trainable"] == counts["shared_skills"] + counts["task_skills"] + counts["router"]
    assert counts["total"] == sum(p.numel() for p in tiny_t5().parameters()) + counts["trainable"]


def test_backbone_dtype_is_kept_and_adapters_train_in_fp32():
    model = tiny_llama().to(torch.bfloat16)
    add_skills(model, skill_config("cpoly", target_modules=["q_proj", "v_proj"]))
    layer = next(layer for _, layer in skilled_layers(model))
    assert layer.base_layer.weight.dtype == torch.bfloat16 and layer.shared_A.dtype == torch.float32
    with use_tasks(model, BATCH_TASKS):
        out = model(**causal_batch()).logits
    assert out.dtype == torch.bfloat16


def test_relaxed_bernoulli_sample_is_torchs_bit_for_bit():
    from torch.distributions import RelaxedBernoulli

    from cpoly.skills.router import relaxed_bernoulli_sample

    logits = torch.randn(16, 2, 5, requires_grad=True)
    for temperature in (1.0, 0.5):
        torch.manual_seed(4)
        expected = RelaxedBernoulli(temperature, logits=logits).rsample()
        torch.manual_seed(4)
        actual = relaxed_bernoulli_sample(logits, temperature)
        assert torch.equal(actual, expected)
        (g_expected,) = torch.autograd.grad(expected.sum(), logits)
        (g_actual,) = torch.autograd.grad(actual.sum(), logits)
        assert torch.equal(g_actual, g_expected)
