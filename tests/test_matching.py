"""Parameter-matched baselines: exact adapter counts without allocation, and the size that matches."""

from __future__ import annotations

import dataclasses

import pytest
from helpers.tiny_models import tiny_t5

from cpoly.skills import SkillConfig, add_skills, count_parameters
from cpoly.skills.matching import adapted_shapes, adapter_parameters, match_parameters

TASKS = [f"t{i}" for i in range(10)]
TARGETS = ["q", "v", "wi"]


@pytest.mark.parametrize(
    "method, extra",
    [("shared_lora", {}), ("task_lora", {}), ("moe_lora", {}), ("poly", {}), ("mhr", {}), ("cpoly", {}),
     ("cpoly", {"task_weights": "fixed"})],
)  # fmt: skip
def test_meta_count_equals_the_real_model(method, extra):
    model = tiny_t5()
    config = SkillConfig(method=method, task_names=TASKS, target_modules=TARGETS, **extra)
    shapes = adapted_shapes(model, TARGETS)
    predicted = adapter_parameters(config, shapes)
    assert predicted == count_parameters(add_skills(model, config))["trainable"]


def test_poly_is_sized_to_cpoly_and_the_choice_is_the_nearest():
    model = tiny_t5()
    shapes = adapted_shapes(model, TARGETS)
    cpoly = SkillConfig(method="cpoly", task_names=TASKS, target_modules=TARGETS)
    poly = SkillConfig(method="poly", task_names=TASKS, target_modules=TARGETS)
    matched, record = match_parameters(poly, cpoly, shapes, None, "cpoly")
    assert record.field == "n_skills" and matched.n_skills == record.value
    # A + T*B = 13 skills of the same rank, and Poly's T x K logits equal C-Poly's T x A logits + T x T W_B
    assert record.value == 13 and record.parameters == record.reference_parameters == adapter_parameters(cpoly, shapes)
    for k in (record.value - 1, record.value + 1):
        other = adapter_parameters(dataclasses.replace(poly, n_skills=k), shapes)
        assert abs(other - record.reference_parameters) >= abs(record.parameters - record.reference_parameters)


def test_lora_rank_is_sized_and_an_impossible_match_is_a_clear_error():
    model = tiny_t5()
    shapes = adapted_shapes(model, TARGETS)
    cpoly = SkillConfig(method="cpoly", task_names=TASKS, target_modules=TARGETS)
    lora = SkillConfig(method="shared_lora", task_names=TASKS, target_modules=TARGETS)
    matched, record = match_parameters(lora, cpoly, shapes, "rank", "cpoly")
    assert record.field == "rank" and matched.rank == record.value > 8
    assert abs(record.parameters - record.reference_parameters) <= adapter_parameters(
        dataclasses.replace(lora, rank=1), shapes
    )  # within one rank's worth
    with pytest.raises(ValueError, match="match_by"):
        match_parameters(lora, cpoly, shapes, "n_splits", "cpoly")
