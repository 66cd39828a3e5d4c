"""save_skills / load_skills round trips (every method and variant), PEFT Poly import, per-task PEFT LoRA
export (and its refusal for token-routed methods)."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from helpers.factories import VARIANTS, randomize_all, skill_config
from helpers.skill_refs import block_config, mtl_lora_delta
from helpers.tiny_models import (
    TASKS,
    logits_and_generation,
    randomize_adapters,
    t5_batch,
    tiny_gpt2,
    tiny_llama,
    tiny_t5,
)
from safetensors.torch import load_file

from cpoly import (
    SkillConfig,
    add_skills,
    allocation_matrix,
    export_task_lora,
    load_skills,
    save_skills,
    use_tasks,
)
from cpoly.skills import skilled_layers, task_lora_factors

MIXED = ["task_b", "task_c", "task_a"]
peft = pytest.importorskip("peft")


@pytest.mark.parametrize("variant", VARIANTS)
def test_save_load_round_trip_is_exact(variant, tmp_path):
    """Every method and variant: a saved adapter loads into a fresh backbone with the same config, the same
    tensors and identical logits and beam-search generations (inside use_tasks)."""
    model = add_skills(tiny_t5(), skill_config(variant))
    randomize_all(model)
    logits, tokens = logits_and_generation(model)
    assert (logits - tiny_t5()(**t5_batch()).logits).abs().max() > 1e-3  # the randomised adapter is in use
    save_skills(model, tmp_path / "adapter")
    files = sorted(p.name for p in (tmp_path / "adapter").iterdir())
    assert files == ["adapter_config.json", "adapter_model.safetensors"]
    loaded = load_skills(tiny_t5(), tmp_path / "adapter")
    assert loaded.cpoly_skills.config == model.cpoly_skills.config  # task names kept
    for (name, a), (_, b) in zip(skilled_layers(model), skilled_layers(loaded), strict=True):
        for key, value in a.adapter_tensors().items():
            torch.testing.assert_close(b.adapter_tensors()[key], value, atol=0, rtol=0, msg=f"{name}.{key}")
    for a, b in zip((logits, tokens), logits_and_generation(loaded), strict=True):
        torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_saved_file_holds_adapter_tensors_only(tmp_path):

    model = add_skills(tiny_t5(), skill_config("cpoly"))
    save_skills(model, tmp_path)
    keys = load_file(str(tmp_path / "adapter_model.safetensors")).keys()
    assert keys and not any("base_layer" in k or "shared.weight" in k for k in keys)
    suffixes = {k.split(".", maxsplit=k.count(".") - 1)[-1] for k in keys}
    assert {"shared_A", "shared_B", "task_A", "task_B"} <= {s.split(".")[-1] for s in suffixes}


def test_loading_into_another_architecture_is_a_clear_error(tmp_path):
    model = add_skills(tiny_t5(), skill_config("cpoly"))
    save_skills(model, tmp_path)
    with pytest.raises(ValueError, match="does not fit LlamaForCausalLM"):
        load_skills(tiny_llama(), tmp_path)
    wider = tiny_t5()
    wider_config = wider.config.to_dict() | {"d_model": 48}
    wider = type(wider)(type(wider.config).from_dict(wider_config))
    with pytest.raises(ValueError, match=r"is 48->32 in the model but 32->32"):
        load_skills(wider, tmp_path)
    with pytest.raises(FileNotFoundError, match="adapter_config.json"):
        load_skills(tiny_t5(), tmp_path / "missing")


def test_saving_over_an_existing_adapter_is_atomic(tmp_path):
    model = add_skills(tiny_t5(), skill_config("poly"))
    save_skills(model, tmp_path / "a")
    randomize_adapters(model)
    save_skills(model, tmp_path / "a")  # replaces it
    assert [p.name for p in tmp_path.iterdir()] == ["a"]
    loaded = load_skills(tiny_t5(), tmp_path / "a")
    torch.testing.assert_close(logits_and_generation(loaded)[0], logits_and_generation(model)[0])


@pytest.mark.parametrize("n_splits", [1, 4])
@pytest.mark.parametrize("mode", ["eval", "train"])
def test_peft_poly_adapter_imports_with_the_same_outputs(n_splits, mode, tmp_path):
    base = tiny_t5()
    poly = peft.get_peft_model(
        copy.deepcopy(base),
        peft.PolyConfig(
            task_type="SEQ_2_SEQ_LM", r=4, n_tasks=3, n_skills=2, n_splits=n_splits, target_modules=["q", "v"]
        ),
    )
    with torch.no_grad():
        for name, p in poly.named_parameters():
            if "poly_lora_B" in name or "module_logits" in name:
                p.normal_(std=0.5)
    poly.save_pretrained(tmp_path)
    ours = load_skills(copy.deepcopy(base), tmp_path, task_names=TASKS)
    assert ours.cpoly_skills.config.method == ("mhr" if n_splits > 1 else "poly")
    getattr(poly, mode)(), getattr(ours, mode)()
    batch, ids = t5_batch(), torch.tensor([2, 0, 1])
    torch.manual_seed(7)  # training mode: the same relaxed-Bernoulli noise, drawn layer by layer
    expected = poly(**batch, task_ids=ids).logits
    torch.manual_seed(7)
    with use_tasks(ours, ids):
        actual = ours(**batch).logits
    torch.testing.assert_close(actual, expected, atol=1e-6, rtol=0)


EXPORTABLE = [
    dict(method="shared_lora"),
    dict(method="task_lora"),
    dict(method="poly"),
    dict(method="mhr", n_splits=4),
    dict(method="cpoly"),
    dict(method="cpoly", n_task_skills=2, task_weights="fixed"),
    dict(method="cpoly", mixing="outputs"),
    dict(method="poly", mixing="outputs"),
]


@pytest.mark.parametrize("settings", EXPORTABLE, ids=lambda s: "-".join(f"{v}" for v in s.values()))
def test_exported_task_lora_matches_the_source_model(settings, tmp_path):
    base = tiny_t5()
    model = add_skills(copy.deepcopy(base), SkillConfig(task_names=TASKS, **settings))
    randomize_adapters(model)
    batch = t5_batch()
    for task in TASKS:
        export_task_lora(model, task, tmp_path / task)
        config = json.loads((tmp_path / task / "adapter_config.json").read_text())
        assert config["peft_type"] == "LORA"
        if model.cpoly_skills.config.mixing == "params":
            assert config["r"] == model.cpoly_skills.config.rank  # exactly rank r per task
        lora = peft.PeftModel.from_pretrained(copy.deepcopy(base), tmp_path / task).eval()
        with use_tasks(model, [task] * 3):
            expected = model(**batch).logits
        torch.testing.assert_close(lora(**batch).logits, expected, atol=1e-5, rtol=1e-5)


def test_export_refuses_input_dependent_updates(tmp_path):
    model = add_skills(tiny_t5(), skill_config("moe_lora"))
    with pytest.raises(ValueError, match="moe_lora.*depends on each token"):
        export_task_lora(model, "task_a", tmp_path)


def test_conv1d_layers_are_adapted_and_exported(tmp_path):
    base = tiny_gpt2()
    model = add_skills(copy.deepcopy(base), skill_config("cpoly", target_modules=["c_attn"]))
    randomize_adapters(model)
    ids = torch.randint(3, 384, (3, 7))
    export_task_lora(model, "task_b", tmp_path)
    lora = peft.PeftModel.from_pretrained(copy.deepcopy(base), tmp_path).eval()
    with use_tasks(model, ["task_b"] * 3):
        expected = model(input_ids=ids).logits
    torch.testing.assert_close(lora(input_ids=ids).logits, expected, atol=1e-5, rtol=1e-5)


def test_allocation_matrix_per_layer_and_mean():
    model = add_skills(tiny_t5(), skill_config("mhr", n_skills=3, n_splits=2))
    randomize_adapters(model, std=2.0)
    allocation = allocation_matrix(model)
    assert allocation.task_names == TASKS
    n_layers = sum(1 for _ in skilled_layers(model))
    assert len(allocation.per_layer) == n_layers
    for weights in allocation.per_layer.values():
        assert weights.shape == (3, 2, 3)
        torch.testing.assert_close(weights.sum(-1), torch.ones(3, 2))
    torch.testing.assert_close(allocation.mean, torch.stack(list(allocation.per_layer.values())).mean(0))
    assert allocation.task_weights is None
    cpoly = add_skills(tiny_t5(), skill_config("cpoly"))
    torch.testing.assert_close(allocation_matrix(cpoly).task_weights, torch.eye(3))
    with pytest.raises(ValueError, match="moe_lora has no learned"):
        allocation_matrix(add_skills(tiny_t5(), skill_config("moe_lora")))


def test_a_saved_block_adapter_holds_t_by_b_weights_and_a_dense_model_refuses_it(tmp_path):
    """(The exact round trip of every variant, block included: test_skills_io.py.)"""

    model = add_skills(tiny_t5(), block_config(n_task_skills=2))
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
    model = add_skills(copy.deepcopy(base), block_config(**settings))
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


def test_mtl_lora_task_factors_are_the_per_task_update():
    """task_lora_factors gives each layer's A_t = A Lambda_t and B_t = sum_i softmax(w_t / tau)_i B_i, so
    scaling * x A_t B_t is the layer's delta for task t (float64, exact up to rounding); rank r."""
    model = add_skills(tiny_t5().double(), skill_config("mtl_lora"))
    randomize_all(model)
    x = torch.randn(2, 3, 32, dtype=torch.float64)
    for t, task in enumerate(TASKS):
        factors = task_lora_factors(model, task)
        assert set(factors) == {name for name, _ in skilled_layers(model)}
        for name, layer in skilled_layers(model):
            a_t, b_t = factors[name]
            assert a_t.shape == (32, 4) and b_t.shape == (4, 32)
            c = layer.config
            torch.testing.assert_close(a_t, layer.shared_A[0, 0] @ layer.bottleneck.weight[t], atol=1e-12, rtol=0)
            p = torch.softmax(layer.allocation.logits[t] / c.temperature, -1)
            torch.testing.assert_close(b_t, torch.einsum("k,kro->ro", p, layer.shared_B[0]), atol=1e-12, rtol=0)
            with torch.no_grad(), use_tasks(model, [task, task]):
                delta = layer(x) - layer.base_layer(x)
            torch.testing.assert_close(delta, c.scaling * x @ a_t @ b_t, atol=1e-12, rtol=0)
            torch.testing.assert_close(delta, mtl_lora_delta(layer, x, [t, t]).detach(), atol=1e-12, rtol=0)


def test_mtl_lora_exports_a_peft_lora_per_task(tmp_path):
    peft = pytest.importorskip("peft")
    base = tiny_t5()
    model = add_skills(copy.deepcopy(base), skill_config("mtl_lora"))
    randomize_all(model)
    batch = t5_batch()
    for task in ("task_a", "task_c"):
        export_task_lora(model, task, tmp_path / task)
        config = json.loads((tmp_path / task / "adapter_config.json").read_text())
        assert config["peft_type"] == "LORA" and config["r"] == 4
        lora = peft.PeftModel.from_pretrained(copy.deepcopy(base), tmp_path / task).eval()
        with use_tasks(model, [task] * 3):
            expected = model(**batch).logits
        torch.testing.assert_close(lora(**batch).logits, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("method", ["hydralora", "mixlora"])
def test_token_routed_methods_have_no_per_task_lora(method, tmp_path):
    model = add_skills(tiny_t5(), skill_config(method))
    with pytest.raises(ValueError, match=rf"{method}\b.*token"):
        task_lora_factors(model, "task_a")
    with pytest.raises(ValueError, match=rf"{method}\b.*token"):
        export_task_lora(model, "task_a", tmp_path / "out")
    assert not (tmp_path / "out").exists()
