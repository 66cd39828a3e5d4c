"""Starting from a trained skill library (`init_from`, docs/transfer.md): known tasks keep what they
compute, new tasks start as the routed library, only `transfer.trainable` trains, mismatched libraries
are refused before any work, and `trainer.max_steps=0` scores a library as it is."""

from __future__ import annotations

import json

import pytest
import torch
from helpers.compose import compose_train
from helpers.tiny_models import TASKS, logits_and_generation, randomize_adapters, tiny_t5

from cpoly import SkillConfig, add_skills, save_skills
from cpoly.config import ConfigError, check_config, register_configs
from cpoly.config import OptimConfig as _OptimConfig
from cpoly.run import train
from cpoly.skills.io import read_adapter, read_skill_tensors
from cpoly.skills.transfer import find_library, load_library, part_parameters, set_trainable, task_order
from cpoly.train.optim import build_optimizer

STRINGS = ["method=cpoly", "backbone=strings_t5"]
SMALL_DATA = ["benchmark.n_tasks=4", "benchmark.n_train_per_task=40", "benchmark.n_eval_per_task=6"]
# The run's tasks: known ones reordered, new ones between them
GROWN = ["new_x", "task_c", "task_a", "new_y", "task_b"]
LAYER_SETTINGS = {
    "cpoly": dict(method="cpoly"),
    "cpoly_block": dict(method="cpoly", task_weights="block", n_task_skills=2),
    "poly": dict(method="poly"),
    "mhr": dict(method="mhr"),
    "mtl_lora": dict(method="mtl_lora"),
    "task_lora": dict(method="task_lora"),
    "shared_lora": dict(method="shared_lora"),
    "hydralora": dict(method="hydralora"),
}


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


def run(overrides, out, cache_dir):
    cfg = compose_train(["debug=smoke", *SMALL_DATA, *overrides], output_dir=out, cache_dir=cache_dir)
    return train(cfg)


@pytest.fixture(scope="module")
def library(tmp_path_factory, cache_dir):
    """A C-Poly library trained for 4 steps on the 4 synthetic tasks."""
    out = tmp_path_factory.mktemp("library")
    results = run(["method=cpoly", "trainer.max_steps=8", "trainer.eval_every=4"], out, cache_dir)
    return out, results


def saved_library(tmp_path, settings):
    model = add_skills(tiny_t5(), SkillConfig(task_names=TASKS, **settings))
    randomize_adapters(model)
    save_skills(model, tmp_path / "lib")
    return model, find_library(tmp_path / "lib")


def grown_model(library, tasks=GROWN, new_task_routing="uniform", average_skills=False):
    config = SkillConfig(**(library.config.to_dict() | {"task_names": list(tasks)}))
    model = add_skills(tiny_t5(), config)  # the same backbone; fresh skills drawn from torch's generator now
    _, _, tensors = read_adapter(library.directory)
    info = load_library(model, library, tensors, new_task_routing, average_skills)
    return model, info


@pytest.mark.parametrize("setting", list(LAYER_SETTINGS))
def test_a_known_task_computes_exactly_what_it_did_after_tasks_are_added(setting, tmp_path):
    original, library = saved_library(tmp_path, LAYER_SETTINGS[setting])
    ordered = task_order(library, GROWN)  # what a run does: known tasks first, in the library's order
    assert ordered == ["task_a", "task_b", "task_c", "new_x", "new_y"]
    grown, info = grown_model(library, tasks=ordered)
    assert info["known_tasks"] == TASKS and info["new_tasks"] == ["new_x", "new_y"]
    for before, after in zip(logits_and_generation(original), logits_and_generation(grown), strict=True):
        torch.testing.assert_close(after, before, atol=0, rtol=0)  # the same logits and generations, bit for bit
    # any order of the tasks: the same values (bit for bit, but for the dense W_B's matmul rounding)
    shuffled, info = grown_model(library, tasks=GROWN)
    assert info["known_tasks"] == ["task_c", "task_a", "task_b"]
    exact = not SkillConfig(task_names=TASKS, **LAYER_SETTINGS[setting]).has_trainable_task_weights or (
        setting == "cpoly_block"
    )
    tolerance = dict(atol=0, rtol=0) if exact else dict(atol=1e-5, rtol=1e-5)
    before, after = logits_and_generation(original)[0], logits_and_generation(shuffled)[0]
    torch.testing.assert_close(after, before, **tolerance)


def test_a_new_task_starts_as_the_librarys_routed_mixture(tmp_path):
    """C-Poly: a new task's exclusive skill starts at B = 0, so its adapter is the shared mixture alone."""
    _, library = saved_library(tmp_path, dict(method="cpoly"))
    grown, _ = grown_model(library)
    for _, layer in grown.named_modules():
        if hasattr(layer, "task_B"):
            for task in ("new_x", "new_y"):
                i = GROWN.index(task)
                assert torch.count_nonzero(layer.task_B[:, i]) == 0 and torch.count_nonzero(layer.task_A[:, i]) > 0
                row = layer.task_weights.weight[i]
                assert row[i] == 1.0 and torch.count_nonzero(row) == 1  # W_B's row as at initialisation
            for task in ("task_a", "task_b", "task_c"):  # known rows are zero on the new tasks' skills
                row = layer.task_weights.weight[GROWN.index(task)]
                assert row[GROWN.index("new_x")] == 0 and row[GROWN.index("new_y")] == 0


def test_new_task_routing_uniform_is_zero_logits_and_mean_the_known_tasks_mean_row(tmp_path):
    _, library = saved_library(tmp_path, dict(method="mhr"))
    saved = read_skill_tensors(library.directory)
    uniform, _ = grown_model(library, new_task_routing="uniform")
    mean, _ = grown_model(library, new_task_routing="mean")
    checked = 0
    for (name, a), (_, b) in zip(uniform.named_modules(), mean.named_modules(), strict=True):
        if not hasattr(a, "allocation"):
            continue
        rows = saved[f"{name}.allocation.logits"]
        for task in ("new_x", "new_y"):
            i = GROWN.index(task)
            assert torch.equal(a.allocation.logits[i], torch.zeros_like(rows[0]))
            assert torch.equal(b.allocation.logits[i], rows.mean(0))
        for task in TASKS:  # known tasks: their own rows in both
            assert torch.equal(a.allocation.logits[GROWN.index(task)], rows[TASKS.index(task)])
            assert torch.equal(b.allocation.logits[GROWN.index(task)], rows[TASKS.index(task)])
        checked += 1
    assert checked > 0


def test_average_skills_collapses_the_shared_skills_into_their_mean(tmp_path):
    _, library = saved_library(tmp_path, dict(method="mhr"))
    saved = read_skill_tensors(library.directory)
    model, _ = grown_model(library, average_skills=True)
    for name, layer in model.named_modules():
        if hasattr(layer, "shared_B"):
            for tensor in ("shared_A", "shared_B"):
                want = saved[f"{name}.{tensor}"].mean(1, keepdim=True).expand_as(getattr(layer, tensor))
                assert torch.equal(getattr(layer, tensor), want)


def test_frozen_parts_are_not_trainable_and_have_no_optimizer_state(tmp_path):
    _, library = saved_library(tmp_path, dict(method="cpoly"))
    model, _ = grown_model(library)
    trained = set_trainable(model, ["routing"])
    parts = part_parameters(model)
    assert trained["trained_parameters"] == sum(p.numel() for p in parts["routing"]) > 0
    assert all(not p.requires_grad for part in ("task_skills", "shared_skills") for p in parts[part])
    optimizer = build_optimizer(model, _OptimConfig(name="adamw"))
    in_optimizer = {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert in_optimizer == {id(p) for p in parts["routing"]}
    for p in optimizer.param_groups[0]["params"]:
        p.grad = torch.ones_like(p)
    optimizer.step()
    assert {id(p) for p in optimizer.state} <= {id(p) for p in parts["routing"]}


def test_routing_only_transfer_leaves_every_shared_skill_bit_identical(library, tmp_path, cache_dir):
    lib_dir, _ = library
    results = run(
        ["method=cpoly", f"init_from={lib_dir}", "transfer=routing", "trainer.max_steps=4"], tmp_path, cache_dir
    )
    before = read_skill_tensors(lib_dir / "best")
    after = read_skill_tensors(tmp_path / "last")
    assert set(before) == set(after)
    shared = [k for k in before if ".shared_" in k]
    skills = [k for k in before if ".task_A" in k or ".task_B" in k]
    routing = [k for k in before if ".allocation." in k or ".task_weights." in k]
    assert shared and skills and routing
    for key in shared + skills:  # every skill, bit for bit
        assert torch.equal(before[key], after[key]), key
    assert any(not torch.equal(before[k], after[k]) for k in routing)  # routing did train
    # the optimizer state saved in last/ holds the routing tensors only
    state = torch.load(tmp_path / "last" / "trainer_state.pt", weights_only=False)
    held = sum(s["exp_avg"].numel() for s in state["optimizer"]["state"].values())
    assert held == results["transfer"]["trained_parameters"] == results["transfer"]["parameters_by_part"]["routing"]
    assert results["transfer"]["trainable"] == ["routing"] and results["transfer"]["variant"] == "routing"
    record = results["init_from"]
    assert record["path"] == str(lib_dir) and record["adapter"] == str(lib_dir / "best")
    assert record["run_name"] == library[1]["run_name"] and record["git_sha"] == library[1]["git_sha"]
    assert results["group"].endswith("-from_routing")
    assert json.loads((tmp_path / "results.json").read_text())["init_from"] == record


def test_max_steps_0_scores_the_library_as_it_is(library, tmp_path, cache_dir):
    lib_dir, lib_results = library
    results = run(["method=cpoly", f"init_from={lib_dir}", "trainer.max_steps=0"], tmp_path, cache_dir)
    assert results["steps"] == 0 and results["selection"]["step"] == 0
    assert results["transfer"]["trained_parameters"] == 0
    # the same tasks and examples: the library's own best/ scores, exactly
    assert results["test"]["best"]["avg"] == lib_results["test"]["best"]["avg"]
    assert results["dev"]["best"]["avg"] == lib_results["dev"]["best"]["avg"]
    assert (tmp_path / "best").is_dir() and (tmp_path / "last").is_dir()


def test_max_steps_0_needs_init_from(tmp_path):
    register_configs()
    cfg = compose_train(["trainer.max_steps=0"], output_dir=tmp_path)
    with pytest.raises(ConfigError, match=r"trainer.max_steps=0: .*only with init_from"):
        check_config(cfg)


def test_a_library_that_does_not_fit_is_refused_naming_each_field(library, tmp_path):
    lib_dir, _ = library
    cfg = compose_train(
        ["method=cpoly", "method.rank=4", "method.n_skills=2", "backbone=tiny_llama", f"init_from={lib_dir}"],
        output_dir=tmp_path,
    )
    with pytest.raises(ConfigError) as error:
        check_config(cfg)
    message = str(error.value)
    assert message.startswith(f"init_from={lib_dir}: the checkpoint does not fit this run (4 differences)")
    assert "backbone: checkpoint 'tiny_t5', this run 'tiny_llama'" in message
    assert "method.rank: checkpoint 2, this run 4" in message
    assert "method.n_skills: checkpoint 3, this run 2" in message
    assert "method.target_modules: checkpoint" in message
    cfg = compose_train(["method=poly", f"init_from={lib_dir}"], output_dir=tmp_path)
    with pytest.raises(ConfigError, match=r"method.method: checkpoint 'cpoly', this run 'poly'"):
        check_config(cfg)
    assert not (tmp_path / "results.json").exists()


def test_init_from_names_a_folder_that_holds_a_library(tmp_path):
    cfg = compose_train([f"init_from={tmp_path}"], output_dir=tmp_path / "out")
    with pytest.raises(ConfigError, match="neither an adapter folder"):
        check_config(cfg)
    cfg = compose_train(["transfer.trainable=[routing,skills]"], output_dir=tmp_path / "out")
    with pytest.raises(ConfigError, match=r"transfer.trainable=\['routing', 'skills'\]"):
        check_config(cfg)


def test_a_peft_poly_adapter_is_a_library(tmp_path):
    """PEFT names no tasks: its tasks are "0", "1", ...; every task of the run is new."""
    peft = pytest.importorskip("peft")
    base = tiny_t5()
    peft_config = peft.PolyConfig(
        task_type="SEQ_2_SEQ_LM", r=2, n_tasks=3, n_skills=4, n_splits=1, target_modules=["q", "v"]
    )
    peft_model = peft.get_peft_model(base, peft_config)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "poly_lora_B" in name or "module_logits" in name:
                p.add_(torch.randn_like(p) * 0.3)
    peft_model.save_pretrained(tmp_path / "peft")
    library = find_library(tmp_path / "peft")
    assert library.peft and library.config.task_names == ["0", "1", "2"]
    model, info = grown_model(library, tasks=["0", "new"], new_task_routing="mean")
    assert info["known_tasks"] == ["0"] and info["new_tasks"] == ["new"]
    saved = read_skill_tensors(library.directory)
    layer_name, layer = next((n, m) for n, m in model.named_modules() if hasattr(m, "allocation"))
    peft_key = next(k for k in saved if k.endswith(f"{layer_name}.poly_router.module_logits"))
    assert torch.equal(layer.allocation.logits[1], saved[peft_key].mean(0))


@pytest.fixture(scope="module")
def seen_library(tmp_path_factory, cache_dir):
    """A C-Poly library trained on the seen tasks of a benchmark with 2 held-out tasks (on the pre-trained
    strings_t5, whose predictions are words rather than tiny_t5's empty strings)."""
    out = tmp_path_factory.mktemp("seen_library")
    return out, run([*STRINGS, "benchmark.n_heldout_tasks=2"], out, cache_dir)


def test_transfer_to_heldout_tasks_trains_their_routing_and_exclusive_skills(seen_library, tmp_path, cache_dir):
    lib_dir, lib_results = seen_library
    overrides = [
        *STRINGS,
        f"init_from={lib_dir}",
        "transfer=routing_task_skills",
        "benchmark.n_heldout_tasks=2",
        "benchmark.task_pool=[heldout]",
        "benchmark.n_train_per_task=4",
    ]
    results = run(overrides, tmp_path, cache_dir)
    heldout = results["benchmark_info"]["heldout_tasks"]
    assert results["tasks"] == heldout and len(heldout) == 2
    assert results["transfer"]["known_tasks"] == [] and results["transfer"]["new_tasks"] == heldout
    assert results["n_train"] == 8 and set(results["test"]["final"]["per_task"]) == set(heldout)
    parts = results["transfer"]["parameters_by_part"]
    assert results["transfer"]["trained_parameters"] == parts["routing"] + parts["task_skills"]
    before, after = read_skill_tensors(lib_dir / "best"), read_skill_tensors(tmp_path / "last")
    for key in (k for k in before if ".shared_" in k):
        assert torch.equal(before[key], after[key]), key
    assert all(after[k].shape[1] == 2 for k in after if k.endswith(".task_B"))  # one exclusive skill per new task


def test_scoring_the_library_with_heldout_tasks_added_keeps_the_seen_tasks_scores(seen_library, tmp_path, cache_dir):
    lib_dir, lib_results = seen_library
    overrides = [
        *STRINGS,
        f"init_from={lib_dir}",
        "trainer.max_steps=0",
        "transfer.new_task_routing=mean",
        "benchmark.n_heldout_tasks=2",
        "benchmark.task_pool=[seen,heldout]",
    ]
    results = run(overrides, tmp_path, cache_dir)
    seen = results["benchmark_info"]["seen_tasks"]
    assert results["transfer"]["known_tasks"] == seen and results["tasks"][: len(seen)] == seen
    for task in seen:
        assert results["test"]["best"]["per_task"][task] == lib_results["test"]["best"]["per_task"][task]
    # every prediction of a seen task is the library's own, word for word
    predictions = [json.loads(line) for line in (tmp_path / "predictions.jsonl").read_text().splitlines()]
    library_predictions = (lib_dir / "predictions_best.jsonl").read_text().splitlines()
    assert [p for p in predictions if p["task"] in seen] == [json.loads(line) for line in library_predictions]
    assert any(p["prediction"] for p in predictions)  # words, not empty strings


def test_the_wandb_config_records_the_library_and_what_trained(library, tmp_path, cache_dir, monkeypatch):
    from cpoly import run as run_module

    seen = {}
    real = run_module.WandbLogger

    def recording(*args, **kwargs):
        seen.update(kwargs["config"])
        return real(*args, **kwargs)

    monkeypatch.setattr(run_module, "WandbLogger", recording)
    lib_dir, lib_results = library
    results = run(["method=cpoly", f"init_from={lib_dir}", "transfer=routing"], tmp_path, cache_dir)
    assert seen["init_from"] == str(lib_dir)
    assert seen["init_from_source"] == results["init_from"]
    assert seen["init_from_source"]["run_name"] == lib_results["run_name"]
    assert seen["init_from_source"]["git_sha"] == lib_results["git_sha"]
    assert seen["transfer_run"]["trained_parameters"] == results["transfer"]["trained_parameters"]


def test_an_encoders_known_task_heads_load_and_new_tasks_get_fresh_ones(tmp_path):
    """Encoders' per-task heads (`task_heads.<i>`) are loaded by task: a known task's logits are the
    library's, bit for bit; a new task (with other labels) gets a head as at initialisation."""
    from helpers.tiny_models import tiny_bert

    from cpoly import use_tasks
    from cpoly.backbones.heads import TaskHeadClassifier

    def encoder(labels):
        model = TaskHeadClassifier(tiny_bert(), labels)
        settings = dict(method="cpoly", target_modules=["query", "value"], modules_to_save=model.modules_to_save)
        return add_skills(model, SkillConfig(task_names=list(labels), **settings))

    original = encoder({t: ["yes", "no"] for t in TASKS})
    randomize_adapters(original)
    with torch.no_grad():
        for p in original.task_heads.parameters():
            p.add_(torch.randn_like(p))
    save_skills(original, tmp_path / "lib")
    library = find_library(tmp_path / "lib")
    grown = encoder({**{t: ["yes", "no"] for t in TASKS}, "new_x": ["a", "b", "c"]})
    fresh_head = [p.clone() for p in grown.task_heads[3].parameters()]
    _, _, tensors = read_adapter(library.directory)
    load_library(grown, library, tensors)
    set_trainable(grown, ["heads"])
    assert all(p.requires_grad for p in grown.task_heads.parameters())
    assert all(torch.equal(a, b) for a, b in zip(fresh_head, grown.task_heads[3].parameters(), strict=True))
    ids = torch.randint(5, 90, (3, 7), generator=torch.Generator().manual_seed(0))
    batch = dict(input_ids=ids, attention_mask=torch.ones_like(ids), task_ids=torch.tensor([2, 0, 1]))
    original.eval(), grown.eval()
    with use_tasks(original, [2, 0, 1]), use_tasks(grown, [2, 0, 1]):
        before, after = original(**batch).logits, grown(**batch).logits
    torch.testing.assert_close(after[:, :2], before, atol=0, rtol=0)
