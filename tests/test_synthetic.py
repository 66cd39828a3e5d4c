"""The synthetic benchmark: determinism, shared and private structure, and the skill-recovery score."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from cpoly.data.synthetic import (
    ATOMIC_SKILLS,
    SyntheticConfig,
    apply_skills,
    load_synthetic,
    skill_recovery,
    structure_entropy,
    substitute,
)


def test_atomic_skills_do_what_their_names_say():
    alphabet = "abcdefghijklmnopqrstuvwxyz"
    assert apply_skills("hello", ["reverse"], alphabet) == "olleh"
    assert apply_skills("xyz", ["shift"], alphabet) == "yza"
    assert apply_skills("abc", ["upper"], alphabet) == "ABC"
    assert apply_skills("banana", ["drop_vowels"], alphabet) == "bnn"
    assert apply_skills("abcde", ["swap_pairs"], alphabet) == "badce"
    assert apply_skills("abcd", ["rotate"], alphabet) == "bcda"
    assert apply_skills("ab", ["double"], alphabet) == "aabb"
    assert apply_skills("dcab", ["sort"], alphabet) == "abcd"
    # Composition follows the library order whatever order the skills are listed in.
    assert apply_skills("azb", ["upper", "shift"], alphabet) == apply_skills("azb", ["shift", "upper"], alphabet)
    assert apply_skills("azb", ["shift", "upper"], alphabet) == "BAC"


def test_generation_is_deterministic_and_seeded():
    first, second = load_synthetic(SyntheticConfig()), load_synthetic(SyntheticConfig())
    assert first.train == second.train and first.test == second.test
    assert first.skill_structure == second.skill_structure
    other = load_synthetic(SyntheticConfig(data_seed=7))
    assert [ex.source for ex in other.train] != [ex.source for ex in first.train]


def test_default_benchmark_shape_and_targets():
    cfg = SyntheticConfig()
    data = load_synthetic(cfg)
    assert data.name == "synthetic" and data.metric == "synthetic" and data.main_metric == "char_similarity"
    assert len(data.task_names) == cfg.n_tasks == len(set(data.task_names))
    assert len(data.train) == cfg.n_tasks * cfg.n_train_per_task
    assert len(data.test) == cfg.n_tasks * cfg.n_eval_per_task
    assert data.test_task_names == sorted(data.task_names)
    assert len({ex.id for ex in data.train + data.test}) == len(data.train) + len(data.test)
    for ex in data.train[:50] + data.test[:50]:
        word = ex.source.removesuffix(" =")
        assert cfg.min_length <= len(word) <= cfg.max_length
        table = data.info["private_substitutions"][ex.task]
        assert ex.target == apply_skills(substitute(word, table), data.skill_structure[ex.task], cfg.alphabet) != ""
        assert ex.task not in ex.source  # task identity comes only through routing by default
    for task in data.task_names:  # eval inputs are unseen in training
        train_inputs = {ex.source for ex in data.train if ex.task == task}
        assert not train_inputs & {ex.source for ex in data.test if ex.task == task}


def test_tasks_share_atomic_skills_and_are_distinct_functions():
    cfg = SyntheticConfig()
    data = load_synthetic(cfg)
    structure = data.skill_structure
    assert set(structure) == set(data.task_names)
    for skills in structure.values():
        assert cfg.min_skills_per_task <= len(skills) <= cfg.max_skills_per_task
        assert set(skills) <= set(cfg.atomic_skills)
    usage = {s: sum(s in skills for skills in structure.values()) for s in cfg.atomic_skills}
    assert min(usage.values()) >= cfg.min_tasks_per_skill
    assert len({tuple(s) for s in structure.values()}) == cfg.n_tasks
    probes = ["abcdefg", "hello", "xyzzy", "qwerty"]
    behaviours = {tuple(apply_skills(p, s, cfg.alphabet) for p in probes) for s in structure.values()}
    assert len(behaviours) == cfg.n_tasks


def test_task_name_can_be_put_in_the_source():
    data = load_synthetic(SyntheticConfig(source_template="{task}: {input} ->", n_train_per_task=5))
    assert all(ex.source.startswith(ex.task + ": ") and ex.source.endswith(" ->") for ex in data.train)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"n_tasks": 0}, "n_tasks"),
        ({"min_length": 9}, "min_length"),
        ({"atomic_skills": ["reverse", "juggle"]}, "atomic_skills"),
        ({"max_skills_per_task": 9}, "max_skills_per_task"),
        ({"source_template": "{task}"}, "source_template"),
        ({"alphabet": "ABC"}, "alphabet"),
    ],
)
def test_bad_config_names_the_field(change, field):
    with pytest.raises(ValueError, match=field):
        SyntheticConfig(**change)


def test_too_many_tasks_for_the_skills_is_a_clear_error():
    with pytest.raises(ValueError, match="n_tasks=20"):
        load_synthetic(
            SyntheticConfig(n_tasks=20, atomic_skills=["reverse", "upper"], max_skills_per_task=2, n_train_per_task=2)
        )


def test_config_is_a_plain_hydra_schema():
    allowed = {"str", "int", "float", "bool", "list[str]"}
    assert {f.type for f in dataclasses.fields(SyntheticConfig)} <= allowed
    assert set(ATOMIC_SKILLS) >= set(SyntheticConfig().atomic_skills)


def test_loader_accepts_a_dictconfig():
    from omegaconf import OmegaConf

    cfg = OmegaConf.structured(SyntheticConfig(n_tasks=4, n_train_per_task=3, n_eval_per_task=2))
    data = load_synthetic(cfg)
    assert len(data.task_names) == 4 and len(data.train) == 12


def _indicator(data) -> np.ndarray:
    skills = sorted({s for v in data.skill_structure.values() for s in v})
    return np.array([[float(s in data.skill_structure[t]) for s in skills] for t in data.task_names])


def test_skill_recovery_perfect_allocation_scores_near_one():
    data = load_synthetic(SyntheticConfig(n_train_per_task=1, n_eval_per_task=0))
    perfect = _indicator(data)
    score = skill_recovery(perfect, data.task_names, data.skill_structure)
    assert score > 0.85
    # Learned skills are unnamed: permuting the skill columns changes nothing; a tensor works too.
    shuffled = torch.tensor(perfect[:, ::-1].copy())
    assert skill_recovery(shuffled, data.task_names, data.skill_structure) == pytest.approx(score)
    # Sigmoid-like probabilities (absent skills not exactly zero) still score high.
    soft = 0.1 + 0.8 * perfect
    assert skill_recovery(soft, data.task_names, data.skill_structure, method="pearson") > 0.6


def test_skill_recovery_random_allocation_scores_near_zero():
    data = load_synthetic(SyntheticConfig(n_train_per_task=1, n_eval_per_task=0))
    rng = np.random.default_rng(0)
    scores = [
        skill_recovery(rng.uniform(size=(len(data.task_names), 6)), data.task_names, data.skill_structure)
        for _ in range(200)
    ]
    assert abs(float(np.mean(scores))) < 0.05
    assert float(np.mean(scores)) < skill_recovery(_indicator(data), data.task_names, data.skill_structure) - 0.7


def test_skill_recovery_rejects_a_wrongly_shaped_matrix():
    data = load_synthetic(SyntheticConfig(n_train_per_task=1, n_eval_per_task=0))
    with pytest.raises(ValueError, match="n_tasks=10"):
        skill_recovery(np.ones((3, 4)), data.task_names, data.skill_structure)
    constant = np.ones((len(data.task_names), 3))
    assert np.isnan(skill_recovery(constant, data.task_names, data.skill_structure))


def test_benchmark_yaml_lists_every_field_with_its_default():
    from pathlib import Path

    from omegaconf import OmegaConf

    path = Path(__file__).resolve().parents[1] / "conf" / "benchmark" / "synthetic.yaml"
    values = OmegaConf.to_container(OmegaConf.load(path))
    assert values.pop("defaults") == ["synthetic_schema", "_self_"]
    assert values == dataclasses.asdict(SyntheticConfig())


def test_private_substitutions_zero_is_the_purely_shared_benchmark():
    """The knob's zero value gives exactly the benchmark without private structure: targets are the shared
    skills of the words alone, and the words and tasks are those a positive value draws too."""
    shared = load_synthetic(SyntheticConfig(private_substitutions=0))
    private = load_synthetic(SyntheticConfig(private_substitutions=2))
    assert shared.info["private_substitutions"] == {}
    assert shared.skill_structure == private.skill_structure
    for ex in shared.train[:100]:
        assert ex.target == apply_skills(ex.source.removesuffix(" ="), shared.skill_structure[ex.task], "abcdefgh")
    differs = sum(a.target != b.target for a, b in zip(shared.train, private.train, strict=False))
    assert differs > len(shared.train) // 3  # the substitution changes most words' answers


def test_each_task_has_a_substitution_of_its_own():
    cfg = SyntheticConfig(private_substitutions=2)
    tables = load_synthetic(cfg).info["private_substitutions"]
    assert len(tables) == cfg.n_tasks
    assert len({tuple(sorted(t.items())) for t in tables.values()}) == cfg.n_tasks
    for table in tables.values():
        assert len(table) == 2 and all(a != b and a in cfg.alphabet and b in cfg.alphabet for a, b in table.items())
    assert substitute("abba", {"a": "b", "b": "a"}) == "baab"  # simultaneous, so a swap is a swap


def test_too_many_private_substitutions_is_a_clear_error():
    with pytest.raises(ValueError, match="private_substitutions"):
        SyntheticConfig(private_substitutions=9)


def test_structure_entropy_of_the_true_allocation():
    structure = {"a": ["x"], "b": ["x", "y"], "c": ["x", "y", "z", "w"]}
    # one skill: 0; two of four: log 2 / log 4 = 0.5; four of four: 1
    assert structure_entropy(list(structure), structure) == pytest.approx((0 + 0.5 + 1) / 3)


def test_heldout_tasks_change_nothing_about_the_seen_tasks():
    """The same words, targets, ids, tasks and dev split as with n_heldout_tasks=0, with or without private
    structure; the held-out tasks only exist in `info` and their own pool."""
    for private in (0, 2):
        plain = load_synthetic(SyntheticConfig(private_substitutions=private))
        grown = load_synthetic(SyntheticConfig(private_substitutions=private, n_heldout_tasks=5))
        assert grown.task_names == plain.task_names
        assert (grown.train, grown.dev, grown.test) == (plain.train, plain.dev, plain.test)
        assert len(grown.info["heldout_tasks"]) == 5 and grown.info["seen_tasks"] == plain.task_names
        both = load_synthetic(
            SyntheticConfig(private_substitutions=private, n_heldout_tasks=5, task_pool=["seen", "heldout"])
        )
        assert both.task_names == plain.task_names + grown.info["heldout_tasks"]
        names = set(plain.task_names)
        seen_part = lambda examples, names=names: [ex for ex in examples if ex.task in names]  # noqa: E731
        assert (seen_part(both.train), seen_part(both.dev), seen_part(both.test)) == (
            plain.train,
            plain.dev,
            plain.test,
        )


def test_heldout_tasks_are_new_compositions_with_their_own_substitutions():
    cfg = SyntheticConfig(n_heldout_tasks=6, task_pool=["heldout"])
    data = load_synthetic(cfg)
    seen, heldout = data.info["seen_tasks"], data.info["heldout_tasks"]
    assert data.task_names == heldout and all(t.startswith("h") for t in heldout)
    words = ["abcdefgh", "hgfedcba", "aabbe", "fadeh", "cab", "ghead", "bebe", "hhaac"]
    behaviour = lambda t: tuple(apply_skills(w, data.skill_structure[t], cfg.alphabet) for w in words)  # noqa: E731
    seen_behaviours = {behaviour(t) for t in seen}
    assert all(behaviour(t) not in seen_behaviours for t in heldout)  # no seen task computes it
    assert len({behaviour(t) for t in heldout}) == len(heldout)
    tables = {t: tuple(sorted(v.items())) for t, v in data.info["private_substitutions"].items()}
    assert len(set(tables.values())) == len(seen) + len(heldout)  # every task's substitution is its own
    assert (
        {ex.task for ex in data.train} == set(heldout) == {ex.task for ex in data.dev} == {ex.task for ex in data.test}
    )
    for split in (data.train, data.dev, data.test):  # the targets are the held-out tasks' own functions
        for ex in split[:40]:
            word = ex.source.removesuffix(" =")
            table = data.info["private_substitutions"][ex.task]
            assert ex.target == apply_skills(substitute(word, table), data.skill_structure[ex.task], cfg.alphabet)


def test_heldout_splits_are_disjoint_and_few_shot_sizes_nest():
    """Each held-out task's dev words are its own (disjoint from train and test, as every synthetic task's);
    the test split does not depend on n_train_per_task, and k examples are the first k of any larger k."""
    sizes = {
        k: load_synthetic(SyntheticConfig(n_heldout_tasks=3, task_pool=["heldout"], n_train_per_task=k))
        for k in (4, 16, 64)
    }
    for data in sizes.values():
        for task in data.task_names:
            words = {
                name: {ex.source for ex in split if ex.task == task}
                for name, split in (("train", data.train), ("dev", data.dev), ("test", data.test))
            }
            assert not (words["train"] & words["dev"] or words["train"] & words["test"] or words["dev"] & words["test"])
            assert len(words["dev"]) == 50 and len(words["test"]) == 50
    assert sizes[4].test == sizes[16].test == sizes[64].test
    for task in sizes[4].task_names:
        small, large = ([ex for ex in sizes[k].train if ex.task == task] for k in (4, 64))
        assert len(small) == 4 and small == large[:4]


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(n_heldout_tasks=-1), "n_heldout_tasks must be >= 0"),
        (dict(task_pool=["heldout"]), "needs held-out tasks"),
        (dict(task_pool=["unseen"]), "task_pool must be"),
        (dict(task_pool=[]), "task_pool must be"),
        (dict(n_heldout_tasks=40), "only .* compositions"),
    ],
)
def test_bad_heldout_settings_name_the_field(change, message):
    with pytest.raises(ValueError, match=message):
        load_synthetic(SyntheticConfig(**change))
