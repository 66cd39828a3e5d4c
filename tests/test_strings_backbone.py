"""The in-house pretrained backbone (source=inhouse, model_id=strings): shipped or built once, cached,
checked."""

from __future__ import annotations

import fnmatch
import logging
import random
import tomllib
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForSeq2SeqLM

from cpoly.backbones import BackboneConfig, load_backbone
from cpoly.backbones import strings as strings_module
from cpoly.backbones.cache import read_provenance
from cpoly.backbones.config import BYT5_TOKENIZER, BackboneConfigError
from cpoly.backbones.random_init import random_model, random_model_config
from cpoly.backbones.strings import (
    SHIPPED_DIR,
    SKILL_CODES,
    StringPretraining,
    file_sha256,
    program_example,
    rebuild_shipped,
    recipe_key,
    strings_checkpoint,
)
from cpoly.backbones.tokenizers import load_tokenizer
from cpoly.data.synthetic import task_target
from tests.helpers.compose import REPO_ROOT, compose_train

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
    assert provenance["torch_version"] == torch.__version__
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


# -- the shipped strings_t5 ---------------------------------------------------------------------------
def composed_backbone(name: str, *overrides: str) -> BackboneConfig:
    """conf/backbone/<name>.yaml as train.py composes it (Hydra, the schema, the overrides)."""
    cfg = compose_train([f"backbone={name}", *overrides])
    return BackboneConfig.from_any(cfg.backbone).validate()


def composed_strings_t5(*overrides: str) -> BackboneConfig:
    return composed_backbone("strings_t5", *overrides)


def shipped_entry() -> Path:
    key, digest = recipe_key(composed_strings_t5())
    return SHIPPED_DIR / f"strings-{digest}"


def forbid_pretraining(monkeypatch) -> None:
    def fail(*args, **kwargs):
        raise AssertionError("pretraining ran")

    monkeypatch.setattr(strings_module, "pretrain", fail)
    monkeypatch.setattr(strings_module, "cached_checkpoint", fail)


def test_the_shipped_entry_is_the_recipe_in_the_config():
    """The shipped weights were written by the recipe conf/backbone/strings_t5.yaml holds: change the
    recipe and this fails until `python -m cpoly.backbones strings_t5 --rebuild-shipped` is run."""
    key, digest = recipe_key(composed_strings_t5())
    entry = SHIPPED_DIR / f"strings-{digest}"
    assert entry.is_dir(), f"no shipped entry for the configured recipe ({entry.name}); rebuild it"
    provenance = read_provenance(entry)
    assert provenance["digest"] == digest and provenance["backbone"] == "strings_t5"
    assert {name: provenance[name] for name in key} == key
    for name, sha in provenance["sha256"].items():
        assert file_sha256(entry / name) == sha, name
    assert provenance["pretraining_exact_match"] > 0.5 and provenance["torch_version"]
    assert sum(f.stat().st_size for f in entry.iterdir()) < 10e6
    # no stale entry beside it: the shipped entries are exactly the current recipes of the inhouse configs
    inhouse = [
        composed_backbone(path.stem)
        for path in sorted((REPO_ROOT / "conf" / "backbone").glob("*.yaml"))
        if "source: inhouse" in path.read_text()
    ]
    expected = {f"strings-{recipe_key(cfg)[1]}" for cfg in inhouse}
    assert entry.name in expected and {p.name for p in SHIPPED_DIR.iterdir()} == expected


def test_shipped_files_are_package_data():
    """A normal (non-editable) install finds them: pyproject's package-data globs cover every file."""
    globs = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["cpoly"]
    package = REPO_ROOT / "cpoly"
    for path in shipped_entry().iterdir():
        relative = path.relative_to(package).as_posix()
        assert any(fnmatch.fnmatch(relative, g) for g in globs), relative


def test_the_default_recipe_loads_the_shipped_weights_without_pretraining(tmp_path, monkeypatch):
    forbid_pretraining(monkeypatch)
    backbone = load_backbone(composed_strings_t5(), cache_dir=tmp_path)
    assert not (tmp_path / "backbones").exists()  # nothing built, nothing cached
    shipped = load_file(shipped_entry() / "model.safetensors")
    state = backbone.model.state_dict()
    assert shipped and all(torch.equal(state[name], tensor) for name, tensor in shipped.items())
    assert all(t.dtype == torch.float32 for t in shipped.values())


def test_a_changed_recipe_never_loads_the_shipped_weights(tmp_path):
    cfg = composed_strings_t5(*(f"++backbone.pretraining.{k}={v}" for k, v in TINY.items()))
    backbone = load_backbone(cfg, cache_dir=tmp_path)
    [entry] = (tmp_path / "backbones").glob("strings-*")  # built and cached, as before shipping
    assert entry.name != shipped_entry().name and read_provenance(entry)["recipe"]["steps"] == TINY["steps"]
    shipped = load_file(shipped_entry() / "model.safetensors")
    state = backbone.model.state_dict()
    assert not torch.equal(state["shared.weight"], shipped["shared.weight"])


def test_rebuild_writes_an_entry_that_loads_without_pretraining_and_a_damaged_one_is_not_used(
    tmp_path, monkeypatch, caplog
):
    cfg = strings_config()
    shipped_dir = tmp_path / "shipped"
    cached = load_backbone(cfg, cache_dir=tmp_path / "cache").model.state_dict()
    old = shipped_dir / "strings-000000000000"  # this backbone's entry for an older recipe
    old.mkdir(parents=True)
    (old / "cpoly_provenance.json").write_text('{"backbone": "strings_t5"}')
    entry = rebuild_shipped(cfg, load_tokenizer(BYT5_TOKENIZER), shipped_dir)
    assert not old.exists() and entry.name == f"strings-{recipe_key(cfg)[1]}"
    assert sorted(p.name for p in entry.iterdir()) == sorted([*strings_module.SHIPPED_FILES, "cpoly_provenance.json"])

    monkeypatch.setattr(strings_module, "SHIPPED_DIR", shipped_dir)
    with monkeypatch.context() as patch:
        forbid_pretraining(patch)
        shipped = load_backbone(cfg, cache_dir=tmp_path / "fresh").model.state_dict()
    assert all(torch.equal(cached[k], shipped[k]) for k in cached)  # the recipe's weights, seeded
    assert not (tmp_path / "fresh").exists()

    weights = entry / "model.safetensors"
    weights.write_bytes(b"version https://git-lfs.github.com/spec/v1\n")  # e.g. an LFS pointer
    with caplog.at_level(logging.WARNING, logger="cpoly.backbones.strings"):
        rebuilt = load_backbone(cfg, cache_dir=tmp_path / "fresh").model.state_dict()
    assert "is not the file recorded" in caplog.text
    assert (tmp_path / "fresh" / "backbones" / entry.name).is_dir()
    assert all(torch.equal(cached[k], rebuilt[k]) for k in cached)
