"""Task ids reach every adapted layer: generate with beams and returned sequences, mixed-task
batches, gradient checkpointing."""

from __future__ import annotations

import copy

import pytest
import torch
from helpers.factories import skill_config
from helpers.skill_refs import block_config
from helpers.tiny_models import randomize_adapters, t5_batch, tiny_llama, tiny_t5

from cpoly import add_skills, enable_gradient_checkpointing, use_tasks

MIXED = ["task_c", "task_a", "task_b"]


def _generate(model, inputs, tasks, **kwargs):
    with use_tasks(model, tasks):
        return model.generate(**inputs, max_new_tokens=6, do_sample=False, **kwargs)


@pytest.mark.parametrize("method", ["cpoly", "mhr", "task_lora"])
@pytest.mark.parametrize("beams, returned", [(1, 1), (3, 1), (3, 2)])
def test_seq2seq_mixed_task_generate_equals_one_by_one(method, beams, returned):
    model = add_skills(tiny_t5(), skill_config(method, n_splits=2 if method == "mhr" else None))
    randomize_adapters(model, std=1.0)
    batch = t5_batch()
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    together = _generate(model, inputs, MIXED, num_beams=beams, num_return_sequences=returned)
    for i, task in enumerate(MIXED):
        length = int(inputs["attention_mask"][i].sum())
        alone = _generate(
            model,
            {k: v[i : i + 1, :length] for k, v in inputs.items()},
            [task],
            num_beams=beams,
            num_return_sequences=returned,
        )
        rows = together[i * returned : (i + 1) * returned, : alone.shape[1]]
        torch.testing.assert_close(rows, alone)
    # routing matters: the same inputs routed to other tasks score the continuation differently
    with use_tasks(model, MIXED):
        routed = model(**inputs, decoder_input_ids=together[::returned]).logits
    with use_tasks(model, ["task_a"] * 3):
        rerouted = model(**inputs, decoder_input_ids=together[::returned]).logits
    assert (routed - rerouted)[1:].abs().max() > 1e-3


@pytest.mark.parametrize("beams", [1, 2])
def test_causal_mixed_task_generate_equals_one_by_one(beams):
    model = add_skills(tiny_llama(), skill_config("cpoly", target_modules=["q_proj", "v_proj"]))
    randomize_adapters(model, std=1.0)
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(3, 384, (n,), generator=g) for n in (5, 8, 3)]
    width = max(len(p) for p in prompts)
    ids = torch.zeros(3, width, dtype=torch.long)
    mask = torch.zeros(3, width, dtype=torch.long)
    for i, p in enumerate(prompts):  # left padding
        ids[i, width - len(p) :], mask[i, width - len(p) :] = p, 1
    together = _generate(model, {"input_ids": ids, "attention_mask": mask}, MIXED, num_beams=beams, pad_token_id=0)
    for i, (p, task) in enumerate(zip(prompts, MIXED, strict=True)):
        alone = _generate(
            model,
            {"input_ids": p[None], "attention_mask": torch.ones(1, len(p), dtype=torch.long)},
            [task],
            num_beams=beams,
            pad_token_id=0,
        )
        torch.testing.assert_close(together[i, width:], alone[0, len(p) :])


@pytest.mark.parametrize("task_weights", ["trainable", "block"])
@pytest.mark.parametrize("backward_inside_context", [True, False])
def test_gradient_checkpointing_gives_the_same_gradients(backward_inside_context, task_weights):
    base = add_skills(tiny_t5(), skill_config("cpoly", task_weights=task_weights))
    randomize_adapters(base)
    base.train()
    checkpointed = copy.deepcopy(base)
    enable_gradient_checkpointing(checkpointed)
    batch = t5_batch()
    grads = []
    for model in (base, checkpointed):
        torch.manual_seed(11)  # same relaxed-Bernoulli noise; checkpointing replays the RNG state
        with use_tasks(model, MIXED):
            loss = model(**batch).loss
            if backward_inside_context:
                loss.backward()
        if not backward_inside_context:
            loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], atol=1e-6, rtol=1e-5, msg=name)
    assert checkpointed.cpoly_skills.routing.batch is None


def test_nested_contexts_restore_the_outer_tasks():
    model = add_skills(tiny_t5(), skill_config("cpoly"))
    with use_tasks(model, ["task_a"]):
        outer = model.cpoly_skills.routing.batch
        with use_tasks(model, ["task_b", "task_c"]):
            assert model.cpoly_skills.routing.batch.ids.tolist() == [1, 2]
        assert model.cpoly_skills.routing.batch is outer
    assert model.cpoly_skills.routing.batch is None


def test_mixed_task_generate_with_beams_equals_one_by_one():
    model = add_skills(tiny_t5(), block_config(n_task_skills=2))
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
