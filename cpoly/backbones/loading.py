"""`load_backbone`: model + tokenizer for a `BackboneConfig`, ready for skills and training."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cpoly.backbones import hub
from cpoly.backbones.config import BYT5_TOKENIZER, BackboneConfig, BackboneConfigError
from cpoly.backbones.heads import TaskHeadClassifier
from cpoly.backbones.packages import package_checkpoint
from cpoly.backbones.random_init import random_model, random_model_config
from cpoly.backbones.strings import strings_checkpoint
from cpoly.backbones.tokenizers import load_tokenizer, prepare_tokenizer
from cpoly.skills.targets import unmatched_targets

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "float64": torch.float64}


@dataclass
class Backbone:
    model: nn.Module  # encoder kind: a TaskHeadClassifier around the AutoModel
    tokenizer: Any
    kind: str
    config: BackboneConfig


def resolve_dtype(dtype: str, device_supports_bf16: bool) -> torch.dtype:
    """`auto` is bfloat16 where the device supports it (recent GPUs) and float32 elsewhere (CPU)."""
    if dtype == "auto":
        return torch.bfloat16 if device_supports_bf16 else torch.float32
    return DTYPES[dtype]


def auto_model_class(kind: str) -> Any:
    import transformers

    return {
        "seq2seq": transformers.AutoModelForSeq2SeqLM,
        "causal": transformers.AutoModelForCausalLM,
        "encoder": transformers.AutoModel,
    }[kind]


def load_backbone(
    cfg: BackboneConfig | Mapping[str, Any],
    *,
    cache_dir: Path,
    task_labels: Mapping[str, Sequence[str]] | None = None,
    device_supports_bf16: bool = False,
) -> Backbone:
    """Load the backbone that `cfg` describes.

    `cache_dir` holds converted checkpoints (the de-quantised GGUF); hub downloads stay in the usual
    Hugging Face cache. `task_labels` (task -> label words, in task-id order) is required for encoder
    backbones, which get one classification head per task. Without network (HF_HUB_OFFLINE=1 or an
    unreachable Hub) a hub backbone that is not cached fails at once with one line saying how to fix it.

    `cfg.gradient_checkpointing` is not applied here: the training code applies it after adding skills
    (`cpoly.enable_gradient_checkpointing`), so the recomputation in backward sees the task ids.
    """
    cfg = BackboneConfig.from_any(cfg).validate()
    if cfg.kind == "encoder" and not task_labels:
        raise BackboneConfigError(
            f"backbone {cfg.name}: kind=encoder needs task_labels (task -> label words) to size its heads"
        )
    dtype = resolve_dtype(cfg.dtype, device_supports_bf16)
    model, tokenizer = _load_weights_and_tokenizer(cfg, Path(cache_dir), dtype)
    if cfg.dropout is not None:
        set_dropout(model, cfg.dropout)
    tokenizer = prepare_tokenizer(tokenizer, cfg.kind, cfg.name)
    if cfg.kind == "encoder":
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.init_seed)
            model = TaskHeadClassifier(model, task_labels, pooling=cfg.pooling, head_dropout=cfg.head_dropout)
    else:
        _configure_generation(model, tokenizer, cfg)
    _check_targets(model, cfg)
    return Backbone(model=model, tokenizer=tokenizer, kind=cfg.kind, config=cfg)


def set_dropout(model: nn.Module, p: float) -> None:
    """Every dropout of `model` to `p`: nn.Dropout modules, float attributes named *dropout* on modules
    (attention implementations read e.g. `self.attention_dropout`) and on the model's config."""
    configs = [model.config] if hasattr(model, "config") else []
    for holder in [*model.modules(), *configs]:
        if isinstance(holder, nn.modules.dropout._DropoutNd):
            holder.p = p
            continue
        for name, value in list(vars(holder).items()):
            if "dropout" in name and isinstance(value, float) and not isinstance(value, bool):
                setattr(holder, name, p)


def _load_weights_and_tokenizer(cfg: BackboneConfig, cache_dir: Path, dtype: torch.dtype) -> tuple[nn.Module, Any]:
    auto_class = auto_model_class(cfg.kind)
    if cfg.source == "inhouse":  # pre-trained once here and cached; byt5 is the recipe's tokenizer
        tokenizer = load_tokenizer(BYT5_TOKENIZER)
        location = strings_checkpoint(cfg, tokenizer, cache_dir)
        return auto_class.from_pretrained(location, dtype=dtype, local_files_only=True), tokenizer
    # Where the weights (or the starting config of a random model) come from, and whether to stay
    # off the network for them.
    if cfg.source == "package":
        location, local_only = str(package_checkpoint(cfg.model_id, cfg.name, cache_dir, cfg.package_dir)), True
    elif cfg.model_id is not None:
        location, local_only = _hub_location(cfg, cfg.model_id)
    else:  # random from model_overrides alone: nothing to fetch
        location, local_only = None, True

    if cfg.tokenizer_id is None and location is not None:
        tokenizer = _hub_call(
            cfg, location, load_tokenizer, location, revision=cfg.revision, local_files_only=local_only
        )
    elif cfg.tokenizer_id in (None, BYT5_TOKENIZER):
        tokenizer = load_tokenizer(BYT5_TOKENIZER)
    else:
        tokenizer_location, tokenizer_local_only = _hub_location(cfg, cfg.tokenizer_id)
        tokenizer = _hub_call(
            cfg, tokenizer_location, load_tokenizer, tokenizer_location, local_files_only=tokenizer_local_only
        )

    if cfg.source == "random":
        config = _hub_call(cfg, location, random_model_config, cfg, tokenizer, location, local_files_only=local_only)
        return random_model(auto_class, config, cfg.init_seed).to(dtype), tokenizer
    extra = {} if cfg.attn_implementation is None else {"attn_implementation": cfg.attn_implementation}
    # Loaded straight in `dtype` (no float32 copy of a large model first); transformers keeps the
    # modules an architecture needs in float32 (T5's `wo` under float16) that way.
    model = _hub_call(
        cfg,
        location,
        auto_class.from_pretrained,
        location,
        revision=cfg.revision,
        dtype=dtype,
        local_files_only=local_only,
        **extra,
        **cfg.model_overrides,
    )
    return model, tokenizer


def _hub_location(cfg: BackboneConfig, model_id: str) -> tuple[str, bool]:
    """(where to load from, whether to stay off the network); fails fast when neither works."""
    if hub.looks_like_path(model_id):
        path = Path(model_id).expanduser()
        if not path.is_dir():
            raise hub.BackboneUnavailableError(
                f"backbone {cfg.name}: backbone.model_id={model_id!r} looks like a path but is no directory"
            )
        return str(path), True
    if not hub.hub_offline():
        return model_id, False
    if not hub.is_cached(model_id, cfg.revision):
        raise hub.BackboneUnavailableError(hub.unavailable_message(cfg.name, model_id))
    return model_id, True


def _hub_call(cfg: BackboneConfig, model_id: str | None, fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Call a `from_pretrained`-like function; a cache miss offline becomes the one-line error."""
    try:
        return fn(*args, **kwargs)
    except OSError as error:
        if kwargs.get("local_files_only") and model_id is not None and not hub.looks_like_path(model_id):
            raise hub.BackboneUnavailableError(hub.unavailable_message(cfg.name, model_id)) from error
        raise


def _configure_generation(model: nn.Module, tokenizer: Any, cfg: BackboneConfig) -> None:
    """Greedy or beam search with the config's settings, stopping at EOS, padding with the pad token."""
    for holder in (model.config, model.generation_config):
        holder.pad_token_id = tokenizer.pad_token_id
        if getattr(holder, "eos_token_id", None) is None:
            holder.eos_token_id = tokenizer.eos_token_id
    if cfg.kind == "seq2seq" and model.generation_config.decoder_start_token_id is None:
        start = getattr(model.config, "decoder_start_token_id", None)
        model.generation_config.decoder_start_token_id = tokenizer.pad_token_id if start is None else start
    generation = model.generation_config
    generation.num_beams = cfg.num_beams
    generation.max_new_tokens = cfg.max_new_tokens
    generation.max_length = None  # max_new_tokens decides; a stale max_length (e.g. 20) would warn
    # Evaluation decodes deterministically; some hub configs ship sampling defaults.
    generation.do_sample = False
    generation.temperature = generation.top_p = generation.top_k = None


def _check_targets(model: nn.Module, cfg: BackboneConfig) -> None:
    missing = unmatched_targets(model, cfg.target_modules)
    if missing:
        raise BackboneConfigError(
            f"backbone.target_modules={cfg.target_modules!r} (backbone {cfg.name!r}): {missing} select no "
            f"nn.Linear or Conv1D layer in {type(model).__name__}"
        )
