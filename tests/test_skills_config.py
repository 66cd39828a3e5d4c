"""SkillConfig and the method registry: each method's defaults, every invalid value fails at construction
naming field and value, the method options, and the registry's own description."""

from __future__ import annotations

import pytest
from helpers.compose import compose_train

from cpoly import (
    SkillConfig,
)
from cpoly.skills import METHODS, SkillConfigError

TASKS = ["a", "b"]


@pytest.mark.parametrize("method", METHODS)
def test_method_defaults_are_the_paper_settings(method):
    config = SkillConfig(method=method, task_names=TASKS)
    for name, value in METHODS[method].settings().items():
        assert getattr(config, name) == value
    assert SkillConfig.from_dict(config.to_dict()) == config


def test_paper_settings():
    assert SkillConfig(method="shared_lora", task_names=TASKS).rank == 8
    c = SkillConfig(method="cpoly", task_names=TASKS)
    assert (c.n_skills, c.n_task_skills, c.rank, c.task_weights) == (3, 1, 2, "trainable")
    m = SkillConfig(method="moe_lora", task_names=TASKS)
    assert (m.n_skills, m.rank, m.mixing) == (4, 2, "outputs")


INVALID = [
    (dict(method="lora"), "method", "'lora'"),
    (dict(rank=0), "rank", "0"),
    (dict(rank=2.5), "rank", "2.5"),
    (dict(n_skills=-1), "n_skills", "-1"),
    (dict(n_task_skills=-2), "n_task_skills", "-2"),
    (dict(n_splits=0), "n_splits", "0"),
    (dict(n_skills=0, n_task_skills=0), "n_skills", "0"),
    (dict(alpha=0.0), "alpha", "0.0"),
    (dict(temperature=-1.0), "temperature", "-1.0"),
    (dict(mixing="sum"), "mixing", "'sum'"),
    (dict(task_weights="learned"), "task_weights", "'learned'"),
    (dict(unknown_task="ignore"), "unknown_task", "'ignore'"),
    (dict(task_names=["a", "a", "b"]), "task_names", "['a']"),
    (dict(task_names=[]), "task_names", "[]"),
    (dict(task_names=["a", ""]), "task_names", "''"),
    (dict(target_modules=[]), "target_modules", "[]"),
    (dict(target_modules=""), "target_modules", "''"),
    (dict(mixing="outputs", n_splits=2), "mixing", "'outputs'"),
    (dict(method="shared_lora", n_skills=2), "n_skills", "2"),
    (dict(method="shared_lora", n_task_skills=1), "n_task_skills", "1"),
    (dict(method="task_lora", n_skills=1), "n_skills", "1"),
    (dict(method="task_lora", task_weights="trainable"), "task_weights", "'trainable'"),
    (dict(method="moe_lora", mixing="params"), "mixing", "'params'"),
    (dict(method="moe_lora", top_k=5), "top_k", "5"),
    (dict(method="poly", top_k=1), "top_k", "1"),
    (dict(method="poly", n_splits=2), "n_splits", "2"),
    (dict(method="poly", n_task_skills=1), "n_task_skills", "1"),
    (dict(method="mhr", n_splits=1), "n_splits", "1"),
]


@pytest.mark.parametrize("overrides, field, value", INVALID, ids=[f"{f}={v}" for _, f, v in INVALID])
def test_invalid_values_name_field_and_value(overrides, field, value):
    kwargs = dict(task_names=TASKS) | overrides
    with pytest.raises(SkillConfigError) as err:
        SkillConfig(**kwargs)
    assert f"SkillConfig.{field}=" in str(err.value)
    assert value in str(err.value)


def test_unknown_field_in_saved_config():
    with pytest.raises(SkillConfigError, match="n_skils"):
        SkillConfig.from_dict({"method": "poly", "task_names": TASKS, "n_skils": 3})


def test_the_registry_describes_every_method_and_layer_setting():
    """`python -m cpoly.skills.methods` lists each registered method with its help text and defaults, and
    each layer setting with its base value and help (the one place both are stated)."""
    import subprocess
    import sys

    from cpoly.skills.settings import LAYER_FIELD_NAMES

    out = subprocess.run(
        [sys.executable, "-m", "cpoly.skills.methods"], capture_output=True, text=True, check=True
    ).stdout
    lines = out.splitlines()
    for name, method in METHODS.items():
        assert any(line.split()[:2] == [name, method.routing] and method.help in line for line in lines), name
    for name in LAYER_FIELD_NAMES:
        assert any(line.split()[:1] == [name] for line in lines), name


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


@pytest.mark.parametrize(
    "kwargs, field_and_value",
    [
        (dict(method="mtl_lora", n_skills=3, n_skills_a=2), "n_skills_a=2"),
        (dict(method="hydralora", n_skills=3, n_skills_a=2), "n_skills_a=2"),
        (dict(method="cpoly", bottleneck="full"), "bottleneck='full'"),
        (dict(method="cpoly", bottleneck="diagonal"), "bottleneck='diagonal'"),
        (dict(method="poly", aux_loss_coef=0.01), "aux_loss_coef=0.01"),
        (dict(method="mtl_lora", top_k=2), "top_k=2"),
    ],
)
def test_invalid_configs_name_the_field_and_value(kwargs, field_and_value):
    with pytest.raises(SkillConfigError, match=rf"SkillConfig\.{field_and_value}"):
        SkillConfig(task_names=TASKS, **kwargs)
