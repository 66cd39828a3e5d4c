"""The in-house pretrained backbone (source=inhouse, model_id=strings): built once, cached, checked."""

from __future__ import annotations

import random

import pytest
import torch
from transformers import AutoModelForSeq2SeqLM

from cpoly.backbones import BackboneConfig, load_backbone
from cpoly.backbones.cache import read_provenance
from cpoly.backbones.config import BackboneConfigError
from cpoly.backbones.random_init import random_model, random_model_config
from cpoly.backbones.strings import SKILL_CODES, StringPretraining, program_example, strings_checkpoint
from cpoly.data.synthetic import task_target

TINY = dict(steps=3, batch_size=4, warmup_steps=1, eval_examples=8)


def strings_config(**pretraining) -> BackboneConfig:
    cfg = BackboneConfig.from_yaml("conf/backbone/strings_t5.yaml")
    cfg.pretraining = {**TINY, **pretraining}
    cfg.model_overrides = {**cfg.model_overrides, "d_model": 32, "d_ff": 64, "num_heads": 2, "d_kv": 16}
    return cfg.validate()


def test_corpus_writes_the_program_and_its_empty_program_is_the_benchmark_source():
    recipe = StringPretraining()
    rng = random.Random(0)
    examples = [program_example(rng, recipe) for _ in range(400)]
    plain = [(s, t) for s, t in examples if " " not in s.removesuffix(" =")]
    assert plain and all(s.removesuffix(" =") == t for s, t in plain)  # no program: copy the word
    for source, target in examples:
        *program, word = source.removesuffix(" =").split(" ")
        codes = "".join(p for p in program if ">" not in p)
        table = dict(p.split(">") for p in program if ">" in p)
        skills = [name for name, code in SKILL_CODES.items() if code in codes]
        assert target == task_target(word, skills, table, recipe.alphabet) != ""


def test_built_once_then_read_from_the_cache(tmp_path):
    cfg = strings_config()
    first = load_backbone(cfg, cache_dir=tmp_path)
    [entry] = (tmp_path / "backbones").glob("strings-*")
    provenance = read_provenance(entry)
    assert provenance["recipe"]["steps"] == 3 and 0 <= provenance["pretraining_exact_match"] <= 1
    assert provenance["architecture"]["d_model"] == 32
    stamp = (entry / "model.safetensors").stat().st_mtime_ns
    second = load_backbone(cfg, cache_dir=tmp_path)
    assert (entry / "model.safetensors").stat().st_mtime_ns == stamp  # not rebuilt
    for (name, a), (_, b) in zip(first.model.state_dict().items(), second.model.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    # the pretraining moved the weights away from the seeded random init it started from
    start = random_model(
        AutoModelForSeq2SeqLM, random_model_config(cfg, first.tokenizer, None, local_files_only=True), 0
    )
    assert not torch.equal(start.state_dict()["shared.weight"], first.model.state_dict()["shared.weight"])
    assert strings_checkpoint(strings_config(seed=1), second.tokenizer, tmp_path) != entry  # recipe is in the key


def test_pretraining_is_seeded(tmp_path):
    one = load_backbone(strings_config(), cache_dir=tmp_path / "a").model.state_dict()
    two = load_backbone(strings_config(), cache_dir=tmp_path / "b").model.state_dict()
    assert all(torch.equal(one[k], two[k]) for k in one)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"pretraining": {"stepz": 3}}, "unknown keys"),
        ({"pretraining": {"steps": 0}}, "pretraining.steps=0"),
        ({"pretraining": {"lr": "fast"}}, "pretraining.lr"),
        ({"kind": "causal"}, "seq2seq"),
        ({"model_id": "nope"}, "recipe"),
        ({"tokenizer_id": "t5-small"}, "byt5"),
    ],
)
def test_bad_recipe_settings_name_the_field(change, message):
    cfg = BackboneConfig.from_yaml("conf/backbone/strings_t5.yaml")
    for key, value in change.items():
        setattr(cfg, key, value)
    with pytest.raises(BackboneConfigError, match=message):
        cfg.validate()


def test_pretraining_is_only_for_inhouse():
    cfg = BackboneConfig.from_yaml("conf/backbone/tiny_t5.yaml")
    cfg.pretraining = {"steps": 3}
    with pytest.raises(BackboneConfigError, match="only source=inhouse"):
        cfg.validate()
