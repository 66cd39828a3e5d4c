"""Saving and loading skills, PEFT Poly import and per-task PEFT LoRA export.

Format: `adapter_config.json` (the SkillConfig, the adapted layers and their shapes) and
`adapter_model.safetensors` (adapter tensors only, keyed `<layer>.<tensor>`), written atomically.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers.pytorch_utils import Conv1D

from cpoly.atomic import atomic_directory
from cpoly.distributed import gathered, sharded_like
from cpoly.skills.config import SkillConfig
from cpoly.skills.layer import linear_shape
from cpoly.skills.methods import peft_poly_method
from cpoly.skills.model import add_skills, find_target_modules, skill_state, skilled_layers, task_batch
from cpoly.skills.targets import matching_modules

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
FORMAT = "cpoly-skills"
FORMAT_VERSION = 1
PEFT_PREFIX = "base_model.model."


def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Adapter tensors (and `modules_to_save`), without the frozen backbone (`SkilledLinear.adapter_tensors`)."""
    tensors: dict[str, torch.Tensor] = {}
    for layer_name, layer in skilled_layers(model):
        for name, t in layer.adapter_tensors().items():
            tensors[f"{layer_name}.{name}"] = t
    tensors.update(_modules_to_save_parameters(model))
    return tensors


def _modules_to_save_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    config = skill_state(model).config
    params: dict[str, nn.Parameter] = {}
    for module_name, module in matching_modules(model, config.modules_to_save):
        for name, p in module.named_parameters():
            params[f"{module_name}.{name}"] = p
    return params


def _base_model_info(model: nn.Module) -> dict[str, Any]:
    hf_config = getattr(model, "config", None)
    return {
        "class": type(model).__name__,
        "name_or_path": getattr(hf_config, "_name_or_path", None) or getattr(hf_config, "name_or_path", None),
    }


def saved_adapter_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapter tensors as saved: whole and on the CPU. Sharded ones (FSDP2) are gathered: then every
    process must call this, and one writes them (`write_skills(..., tensors=)`)."""
    return {k: gathered(v).detach().to("cpu").contiguous().clone() for k, v in adapter_state_dict(model).items()}


def write_skills(model: nn.Module, directory: str | Path, tensors: dict[str, torch.Tensor] | None = None) -> None:
    """Write the two adapter files into an existing folder (no atomicity: see `save_skills`); `tensors`:
    `saved_adapter_tensors(model)` if already gathered."""
    state = skill_state(model)
    layers = {name: {"d_in": layer.d_in, "d_out": layer.d_out} for name, layer in skilled_layers(model)}
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "skill_config": state.config.to_dict(),
        "layers": layers,
        "base_model": _base_model_info(model),
    }
    tensors = saved_adapter_tensors(model) if tensors is None else tensors
    directory = Path(directory)
    (directory / CONFIG_NAME).write_text(json.dumps(meta, indent=2) + "\n")
    save_file(tensors, str(directory / WEIGHTS_NAME), metadata={"format": FORMAT})


def save_skills(model: nn.Module, directory: str | Path) -> Path:
    """Write `adapter_config.json` + `adapter_model.safetensors` to `directory` (replaced atomically)."""
    with atomic_directory(directory) as tmp:
        write_skills(model, tmp)
    return Path(directory)


def load_skill_tensors(model: nn.Module, directory: str | Path) -> None:
    """Copy saved tensors into a model that already has the same skills (resuming a run), sharded (FSDP2)
    or not."""
    directory = Path(directory)
    _copy_into(model, _read_weights(directory), directory)


def _cpoly_skill_config(directory: Path, meta: dict[str, Any]) -> SkillConfig:
    """The skill configuration of a cpoly adapter folder's `adapter_config.json`, its format checked."""
    if meta.get("format") != FORMAT:
        raise ValueError(
            f"{directory / CONFIG_NAME}: neither a cpoly adapter (format={meta.get('format')!r}) nor PEFT Poly"
        )
    if meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"{directory / CONFIG_NAME}: format_version {meta.get('format_version')} is not {FORMAT_VERSION}"
        )
    return SkillConfig.from_dict(meta["skill_config"])


def _read_adapter_config(directory: Path) -> dict[str, Any]:
    path = directory / CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no adapter config (expected {CONFIG_NAME} from save_skills or PEFT)")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from e


def _read_weights(directory: Path) -> dict[str, torch.Tensor]:
    path = directory / WEIGHTS_NAME
    if path.is_file():
        return load_file(str(path))
    legacy = directory / "adapter_model.bin"
    if legacy.is_file():
        return torch.load(legacy, map_location="cpu", weights_only=True)
    raise FileNotFoundError(f"{path}: no adapter weights")


def read_skill_tensors(directory: str | Path) -> dict[str, torch.Tensor]:
    """A saved folder's adapter tensors, by name (raises if they are absent or unreadable)."""
    return _read_weights(Path(directory))


def _check_layers_match(
    model: nn.Module, config: SkillConfig, expected: dict[str, dict[str, int]], source: Path
) -> None:
    """Before touching the model: the adapted layers and their shapes must be those saved."""
    try:
        found = find_target_modules(model, config.target_modules)
    except ValueError as e:
        raise ValueError(f"{source}: the adapter does not fit {type(model).__name__}: {e}") from None
    missing, extra = sorted(set(expected) - set(found)), sorted(set(found) - set(expected))
    if missing or extra:
        raise ValueError(
            f"{source}: the adapter does not fit {type(model).__name__}: layers saved but not in the model "
            f"{missing[:5]}{'...' if len(missing) > 5 else ''}; layers in the model but not saved {extra[:5]}"
            f"{'...' if len(extra) > 5 else ''}"
        )
    for name in found:
        d_in, d_out = linear_shape(model.get_submodule(name))
        want = expected[name]
        if (d_in, d_out) != (want["d_in"], want["d_out"]):
            raise ValueError(
                f"{source}: layer {name} is {d_in}->{d_out} in the model but {want['d_in']}->{want['d_out']} "
                "in the adapter (a different architecture or size)"
            )


def _copy_into(model: nn.Module, tensors: dict[str, torch.Tensor], source: Path) -> None:
    expected = adapter_state_dict(model)
    missing, unexpected = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise ValueError(f"{source}: tensors missing {missing[:5]}, unexpected {unexpected[:5]}")
    for name, want in expected.items():
        if tensors[name].shape != want.shape:
            got = tuple(tensors[name].shape)
            raise ValueError(f"{source}: tensor {name} has shape {got}, the model expects {tuple(want.shape)}")
    tensors = {name: sharded_like(want, tensors[name]) for name, want in expected.items()}
    for layer_name, layer in skilled_layers(model):
        layer.load_adapter_tensors({name: tensors[f"{layer_name}.{name}"] for name in layer.adapter_tensors()})
    with torch.no_grad():
        for name, p in _modules_to_save_parameters(model).items():
            p.copy_(tensors[name].to(p.dtype))


def load_skills(model: nn.Module, directory: str | Path, task_names: Sequence[str] | None = None) -> nn.Module:
    """Add the saved skills to a fresh backbone and load their tensors; returns the model.

    Also reads a directory saved by PEFT's Poly tuner (poly or MHR); PEFT stores no task names, so
    they are `task_names` if given, else "0", "1", ...
    """
    directory = Path(directory)
    meta = _read_adapter_config(directory)
    if str(meta.get("peft_type", "")).upper() == "POLY":
        return _load_peft_poly(model, directory, meta, task_names)
    config = _cpoly_skill_config(directory, meta)
    if task_names is not None and list(task_names) != config.task_names:
        raise ValueError(f"{directory}: saved task names {config.task_names[:5]}... differ from task_names given")
    if hasattr(model, "cpoly_skills"):
        raise ValueError(f"{type(model).__name__} already has skills: load into a fresh backbone")
    _check_layers_match(model, config, meta["layers"], directory)
    add_skills(model, config)
    _copy_into(model, _read_weights(directory), directory)
    return model


def _load_peft_poly(
    model: nn.Module, directory: Path, meta: dict[str, Any], task_names: Sequence[str] | None
) -> nn.Module:
    config, layers, tensors = _peft_poly_adapter(directory, meta, task_names)
    _check_layers_match(model, config, layers, directory)
    add_skills(model, config)
    _copy_into(model, tensors, directory)
    return model


def _peft_poly_adapter(
    directory: Path, meta: dict[str, Any], task_names: Sequence[str] | None
) -> tuple[SkillConfig, dict[str, dict[str, int]], dict[str, torch.Tensor]]:
    """A PEFT Poly adapter as cpoly's: its skill configuration, layer shapes and tensors under our names."""
    poly_type = meta.get("poly_type", "poly")
    if poly_type != "poly":
        raise ValueError(f"{directory / CONFIG_NAME}: PEFT poly_type={poly_type!r} is not supported (only 'poly')")
    weights = _read_weights(directory)
    suffixes = {"poly_lora_A": "shared_A", "poly_lora_B": "shared_B", "poly_router.module_logits": "allocation.logits"}
    tensors: dict[str, torch.Tensor] = {}
    layers: dict[str, dict[str, int]] = {}
    for key, value in weights.items():
        name = key.removeprefix(PEFT_PREFIX)
        for peft_suffix, ours in suffixes.items():
            if name.endswith("." + peft_suffix):
                layer = name[: -len(peft_suffix) - 1]
                tensors[f"{layer}.{ours}"] = value
                if ours == "shared_A":
                    S, _, d, _ = value.shape
                    layers.setdefault(layer, {})["d_in"] = S * d
                elif ours == "shared_B":
                    S, _, _, d = value.shape
                    layers.setdefault(layer, {})["d_out"] = S * d
                break
        else:
            raise ValueError(f"{directory / WEIGHTS_NAME}: unexpected PEFT Poly tensor {key}")
    n_tasks, n_splits = int(meta["n_tasks"]), int(meta.get("n_splits", 1))
    names = list(task_names) if task_names is not None else [str(i) for i in range(n_tasks)]
    if len(names) != n_tasks:
        raise ValueError(f"{directory}: the PEFT adapter has n_tasks={n_tasks} but {len(names)} task names were given")
    config = SkillConfig(
        method=peft_poly_method(n_splits),
        task_names=names,
        target_modules=sorted(layers),
        rank=int(meta["r"]),
        n_skills=int(meta["n_skills"]),
        n_splits=n_splits,
        alpha=1.0,  # PEFT Poly scales by 1 / r
    )
    return config, layers, tensors


def is_peft_poly(directory: str | Path) -> bool:
    """Whether the adapter folder holds a PEFT Poly adapter (else cpoly's own format)."""
    return str(_read_adapter_config(Path(directory)).get("peft_type", "")).upper() == "POLY"


def read_adapter(
    directory: str | Path, with_tensors: bool = True
) -> tuple[SkillConfig, dict[str, dict[str, int]], dict[str, torch.Tensor] | None]:
    """An adapter folder (cpoly's or PEFT Poly's, whose tasks are named "0", "1", ...) without a model:
    its skill configuration, its layers' shapes ({name: {d_in, d_out}}) and, `with_tensors`, its tensors
    by the names `adapter_state_dict` gives."""
    directory = Path(directory)
    meta = _read_adapter_config(directory)
    if str(meta.get("peft_type", "")).upper() == "POLY":
        config, layers, tensors = _peft_poly_adapter(directory, meta, None)
        return config, layers, tensors if with_tensors else None
    config = _cpoly_skill_config(directory, meta)
    return config, meta["layers"], _read_weights(directory) if with_tensors else None


@contextlib.contextmanager
def _deterministic_routing(model: nn.Module) -> Iterator[None]:
    """Evaluation-mode routing (sigmoid, no noise) whatever mode the model is in."""
    layers = [layer for _, layer in skilled_layers(model)]
    modes = [layer.training for layer in layers]
    try:
        for layer in layers:
            layer.eval()
        yield
    finally:
        for layer, mode in zip(layers, modes, strict=True):
            layer.train(mode)


def _peft_task_type(model: nn.Module) -> str | None:
    hf_config = getattr(model, "config", None)
    if getattr(hf_config, "is_encoder_decoder", False):
        return "SEQ_2_SEQ_LM"
    if hasattr(model, "generate") and hf_config is not None:
        return "CAUSAL_LM"
    return None


@torch.no_grad()
def task_lora_factors(model: nn.Module, task: str | int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Per layer, one task's effective LoRA (A (d_in, n), B (n, d_out)) with delta = scaling * x A B.

    Parameter mixing gives exactly rank r; output mixing concatenates the weighted skills."""
    config = skill_state(model).config
    if config.token_routed:
        raise ValueError(
            f"{config.method}'s update depends on each token (a gate on x): there is no per-task LoRA to export"
        )
    batch = task_batch(model, [task] if isinstance(task, str) else torch.tensor([task]))
    factors = {}
    with _deterministic_routing(model):
        for name, layer in skilled_layers(model):
            if config.mixing == "params":
                a, b = layer.mixed_lora(batch)
                factors[name] = (a[0], b[0])
                continue
            parts_a, parts_b = [], []
            w = layer.shared_weights(batch)[0, 0] if layer.n_shared else None  # (K,)
            if layer.n_shared and config.asymmetric:  # x A (sum_k w_k B_k): rank r
                parts_a.append(layer.shared_A[0, 0])
                parts_b.append(torch.einsum("k,kro->ro", w, layer.shared_B[0]))
            elif layer.n_shared:
                parts_a += [w[k] * layer.shared_A[0, k] for k in range(layer.n_shared)]
                parts_b += [layer.shared_B[0, k] for k in range(layer.n_shared)]
            if layer.n_task:
                task_A, task_B = layer.task_A, layer.task_B
                t = int(batch.rows[0])
                w = layer.task_weights.full()[t].to(task_A.device)
                if not batch.all_known:
                    w = torch.zeros_like(w)
                if layer.task_weights.dense:
                    skills = range(w.shape[0])
                elif layer.task_weights.block:  # the task's own block, whatever its weights (one rank per task)
                    skills = range(t * layer.n_task, (t + 1) * layer.n_task)
                else:
                    skills = torch.nonzero(w).flatten().tolist()
                parts_a += [w[j] * task_A[0, j] for j in skills]
                parts_b += [task_B[0, j] for j in skills]
            factors[name] = (torch.cat(parts_a, dim=1), torch.cat(parts_b, dim=0))
    return factors


def export_task_lora(model: nn.Module, task: str | int, directory: str | Path) -> Path:
    """Write one task's effective adapter as a standard PEFT LoRA adapter (loadable with
    `peft.PeftModel.from_pretrained(base_model, directory)`)."""
    config = skill_state(model).config
    factors = task_lora_factors(model, task)
    ranks = {a.shape[1] for a, _ in factors.values()}
    if len(ranks) != 1:
        raise ValueError(f"layers export different ranks {sorted(ranks)}; PEFT LoRA needs one")
    rank = ranks.pop()
    fan_in_fan_out = any(isinstance(layer.base_layer, Conv1D) for _, layer in skilled_layers(model))
    peft_config = {
        "peft_type": "LORA",
        "task_type": _peft_task_type(model),
        "base_model_name_or_path": _base_model_info(model)["name_or_path"],
        "r": rank,
        # PEFT scales by lora_alpha / r; keep this model's alpha / rank.
        "lora_alpha": config.scaling * rank,
        "lora_dropout": 0.0,
        "target_modules": sorted(factors),
        "bias": "none",
        "fan_in_fan_out": fan_in_fan_out,
        "inference_mode": True,
        "init_lora_weights": True,
        "modules_to_save": None,
    }
    tensors = {}
    for name, (a, b) in factors.items():
        tensors[f"{PEFT_PREFIX}{name}.lora_A.weight"] = a.T.contiguous().float().cpu()
        tensors[f"{PEFT_PREFIX}{name}.lora_B.weight"] = b.T.contiguous().float().cpu()
    with atomic_directory(directory) as tmp:
        (tmp / CONFIG_NAME).write_text(json.dumps(peft_config, indent=2) + "\n")
        save_file(tensors, str(tmp / WEIGHTS_NAME), metadata={"format": "pt"})
    return Path(directory)
