"""How the trainer optimises: its parameter groups, its warmup schedule, a first step that reaches every
adapted layer of every method on the three architecture kinds, task_lora as C-Poly's A=0 ablation, and
dropout that is set by config and drawn per process."""

from __future__ import annotations

import json
import math

import pytest
import torch
from helpers.compose import compose_train
from helpers.factories import skill_config
from helpers.tiny_models import TASKS, tiny_t5
from safetensors.torch import load_file

from cpoly import SkillConfig, add_skills
from cpoly.backbones import BackboneConfig, load_backbone
from cpoly.backbones.heads import TaskHeadClassifier
from cpoly.config import OptimConfig
from cpoly.logging import read_metrics
from cpoly.run import train
from cpoly.skills import METHODS
from cpoly.train.loop import dropout_seed
from cpoly.train.optim import build_scheduler, parameter_groups

WORDS = ["abc", "hello", "tiny", "models", "skills", "route", "task", "lora", "poly", "mixtures", "ab", "zzz"]
RULES = {"long": lambda w: len(w) > 4, "has_a": lambda w: "a" in w, "has_o": lambda w: "o" in w}


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def labelled_jsonl(tmp_path_factory):
    """Three yes/no tasks as the user's own JSON lines: every backbone kind trains on them."""
    path = tmp_path_factory.mktemp("data") / "data.jsonl"
    lines = [
        {"task": task, "source": word, "target": "yes" if rule(word) else "no", "choices": ["yes", "no"]}
        for task, rule in RULES.items()
        for word in WORDS
    ]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


# -- parameter groups -------------------------------------------------------------------------------
def _groups(model, **optim):
    settings = dict(name="adamw", lr=1e-3, router_lr=0.1, weight_decay=0.01) | optim
    return {g["name"]: g for g in parameter_groups(model, OptimConfig(**settings))}


@pytest.mark.parametrize("method", METHODS)
def test_every_trainable_parameter_is_in_exactly_one_group_with_its_lr_and_decay(method):
    model = add_skills(tiny_t5(), skill_config(method))
    groups = _groups(model)
    members = {id(p): name for name, g in groups.items() for p in g["params"]}
    assert sum(len(g["params"]) for g in groups.values()) == len(members)  # no parameter twice
    trainable = {id(p): n for n, p in model.named_parameters() if p.requires_grad}
    assert set(members) == set(trainable)  # every trainable one, and nothing frozen
    for pid, name in trainable.items():
        expected = "router" if ("allocation." in name or ".gate." in name) else "adapters"
        expected = "task_weights" if ("task_weights." in name or ".bottleneck." in name) else expected
        assert members[pid] == expected, name
    assert (groups["adapters"]["lr"], groups["adapters"]["weight_decay"]) == (1e-3, 0.01)
    if "router" in groups:
        assert (groups["router"]["lr"], groups["router"]["weight_decay"]) == (0.1, 0.0)
    if "task_weights" in groups:  # W_B: the adapters' lr, no decay
        assert (groups["task_weights"]["lr"], groups["task_weights"]["weight_decay"]) == (1e-3, 0.0)
    assert ("router" in groups) == (method not in ("shared_lora", "task_lora"))  # allocation logits or a gate
    assert ("task_weights" in groups) == (method in ("cpoly", "mtl_lora"))  # W_B; MTL-LoRA's Lambda_t


def test_encoder_task_heads_train_with_the_adapters():
    from helpers.tiny_models import tiny_bert

    model = TaskHeadClassifier(tiny_bert(), {t: ["yes", "no"] for t in TASKS})
    model = add_skills(
        model,
        SkillConfig(
            method="cpoly", task_names=TASKS, target_modules=["query", "value"], modules_to_save=model.modules_to_save
        ),
    )
    heads = {id(p) for p in model.task_heads.parameters()}
    adapters = {id(p) for p in _groups(model)["adapters"]["params"]}
    assert heads and heads <= adapters


# -- the schedule -----------------------------------------------------------------------------------
@pytest.mark.parametrize("scheduler", ["linear", "cosine", "constant"])
def test_warmup_rises_linearly_from_zero_then_decays(scheduler):
    param = torch.nn.Parameter(torch.zeros(1))
    optim = OptimConfig(name="adamw", lr=0.2, warmup_ratio=0.1, scheduler=scheduler)
    optimizer = torch.optim.AdamW([param], lr=optim.lr)
    schedule = build_scheduler(optimizer, optim, max_steps=100)
    lrs = []
    for _ in range(100):
        lrs.append(optimizer.param_groups[0]["lr"])  # the lr the step trains with
        optimizer.step()
        schedule.step()
    assert lrs[:11] == pytest.approx([0.2 * s / 10 for s in range(11)])  # 0 at the first step, lr at step 10
    after = {"linear": lambda s: 0.2 * (100 - s) / 90, "constant": lambda s: 0.2}
    after["cosine"] = lambda s: 0.2 * 0.5 * (1 + math.cos(math.pi * (s - 10) / 90))
    assert lrs[10:] == pytest.approx([after[scheduler](s) for s in range(10, 100)])


def test_the_loop_logs_the_scheduled_lr_of_every_group(tmp_path, cache_dir):
    overrides = ["debug=smoke", "benchmark.n_tasks=3", "trainer.max_steps=10", "trainer.log_every=1",
                 "trainer.eval_every=10", "optim.warmup_ratio=0.5", "optim.lr=0.01"]  # fmt: skip
    train(compose_train(overrides, tmp_path, cache_dir))
    rows = [r for r in read_metrics(tmp_path / "metrics.jsonl") if "train/loss" in r]
    # logged after step s: the lr of step s + 1 (warmup over 5 steps, then linear decay to 0 at 10)
    expected = [0.01 * min(s / 5, (10 - s) / 5) for s in range(1, 11)]
    assert [r["train/lr_adapters"] for r in rows] == pytest.approx(expected)
    assert [r["train/lr_router"] for r in rows] == pytest.approx([x * 10 for x in expected])  # cpoly's 0.1
    assert [r["train/lr_task_weights"] for r in rows] == pytest.approx(expected)


# -- the first step ---------------------------------------------------------------------------------
@pytest.mark.parametrize("backbone", ["tiny_t5", "tiny_llama", "tiny_bert"])
@pytest.mark.parametrize("method", METHODS)
def test_the_first_step_updates_every_adapted_layer(method, backbone, labelled_jsonl, tmp_path, cache_dir):
    """A known silent bug of multi-LoRA trainers is a step that reaches only some layers (the last one).
    B starts at 0, so after one step (no warmup) every layer's B must have moved: it got a gradient."""
    overrides = ["debug=smoke", "benchmark=jsonl", f"benchmark.file={labelled_jsonl}", f"backbone={backbone}",
                 f"method={method}", "trainer.max_steps=1", "trainer.eval_every=1", "optim.warmup_ratio=0",
                 "trainer.batch_size=6"]  # fmt: skip
    train(compose_train(overrides, tmp_path, cache_dir))
    tensors = load_file(str(tmp_path / "last" / "adapter_model.safetensors"))
    layers = {name.rsplit(".", 1)[0] for name in tensors if name.endswith(("shared_B", "task_B"))}
    assert len(layers) >= 8  # every target module of both blocks (tiny_bert: 4 per block)
    for layer in sorted(layers):
        moved = sum(
            tensors[f"{layer}.{k}"].abs().sum().item() for k in ("shared_B", "task_B") if f"{layer}.{k}" in tensors
        )
        assert moved > 0, f"{method} on {backbone}: {layer} got no gradient in the first step"


# -- task_lora is C-Poly without shared skills -------------------------------------------------------
def test_task_lora_is_cpoly_without_shared_skills_and_with_fixed_weights(tmp_path, cache_dir):
    """The equivalence `SkillConfig` claims, through the trainer: the same adapters after 8 steps from
    the same seed, since both store and step their exclusive skills the same way."""
    common = [
        "debug=smoke",
        "benchmark.n_tasks=4",
        "trainer.max_steps=8",
        "trainer.eval_every=8",
        "optim.weight_decay=0.1",
    ]
    runs = {
        "task_lora": ["method=task_lora"],
        "cpoly": ["method=cpoly", "method.n_skills=0", "method.task_weights=fixed", "method.router_lr=null"],
    }
    for name, overrides in runs.items():
        train(compose_train([*common, *overrides], tmp_path / name, cache_dir))
    a, b = (load_file(str(tmp_path / name / "last" / "adapter_model.safetensors")) for name in runs)
    assert a.keys() == b.keys() and a
    for key in a:
        assert torch.equal(a[key], b[key]), key


# -- dropout ----------------------------------------------------------------------------------------
def test_backbone_dropout_sets_every_dropout_of_the_model(cache_dir):
    config = BackboneConfig.from_any(compose_train(["backbone=tiny_llama", "backbone.dropout=0.25"]).backbone)
    model = load_backbone(config, cache_dir=cache_dir).model
    assert model.config.attention_dropout == 0.25
    attention = [m for m in model.modules() if hasattr(m, "attention_dropout")]
    assert attention and all(m.attention_dropout == 0.25 for m in attention)
    t5 = load_backbone(BackboneConfig.from_any(compose_train(["backbone.dropout=0.25"]).backbone), cache_dir=cache_dir)
    dropouts = [m for m in t5.model.modules() if isinstance(m, torch.nn.Dropout)]
    assert dropouts and all(m.p == 0.25 for m in dropouts) and t5.model.config.dropout_rate == 0.25


def test_backbone_dropout_zero_makes_training_mode_deterministic(cache_dir):
    cfg = compose_train(["backbone.dropout=0", "backbone.model_overrides.dropout_rate=0.3"])
    model = load_backbone(BackboneConfig.from_any(cfg.backbone), cache_dir=cache_dir).model
    ids = torch.randint(3, 300, (2, 12))
    inputs = dict(input_ids=ids, attention_mask=torch.ones_like(ids), decoder_input_ids=ids[:, :5])
    with torch.no_grad():
        reference = model.eval()(**inputs).logits
        assert torch.equal(model.train()(**inputs).logits, reference)


def test_each_process_and_step_draws_its_own_dropout_masks():
    seeds = {dropout_seed(1, step, rank) for step in range(20) for rank in range(4)}
    assert len(seeds) == 80  # per (step, process)
    assert dropout_seed(1, 5, 0) == dropout_seed(1, 5, 0) != dropout_seed(2, 5, 0)
    masks = []
    for rank in (0, 1):
        torch.manual_seed(dropout_seed(1, 3, rank))
        masks.append(torch.nn.functional.dropout(torch.ones(1000), 0.5))
    assert not torch.equal(masks[0], masks[1])
