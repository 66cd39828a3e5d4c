"""Starting from a trained skill library (`init_from`; docs/transfer.md).

A library is an adapter folder (cpoly's `save_skills` format or a PEFT Poly adapter) or a run folder,
whose `best/` or `last/` is read. `load_library` copies into a model whose skills were just added (for
the run's own task list) everything of the tasks the library knows:
  shared skills (shared_A, shared_B) and token gates    whole
  allocation logits, W_B, bottlenecks, task skills       the rows / slices of each known task, wherever it
                                                         sits in the new task list
  per-task heads (encoders' `task_heads.<i>`)            by task
The run lists the known tasks first, in the library's order (`task_order`), then the new ones.
New tasks keep what `add_skills` gave them (fresh exclusive skills A ~ U, B = 0, so a new task starts as
the library's routed mixture; W_B and bottleneck rows as at initialisation; fresh heads) except their
allocation row: zero logits (`uniform`) or the known tasks' mean row (`mean`). Because W_B starts
block-diagonal, a known task's row has zeros on every new task's skills, and the new tasks' skills start
at B = 0: adding tasks never changes what a known task computes.

`set_trainable` then freezes every part `transfer.trainable` does not name (requires_grad=False, so the
optimizer never holds them and keeps no state for them).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cpoly.skills.config import SkillConfig
from cpoly.skills.io import CONFIG_NAME, _modules_to_save_parameters, is_peft_poly, read_adapter
from cpoly.skills.layer import SkilledLinear
from cpoly.skills.model import skill_state, skilled_layers

PARTS = ("routing", "task_skills", "shared_skills", "heads")
NEW_TASK_ROUTING = ("uniform", "mean")
CHECKPOINTS = ("best", "last")
# The fields a library must share with the run it initialises (the task list may differ).
FITTING_FIELDS = (
    "method",
    "rank",
    "n_skills",
    "n_skills_a",
    "n_task_skills",
    "n_splits",
    "alpha",
    "mixing",
    "task_weights",
    "allocation",
    "bottleneck",
    "temperature",
    "top_k",
    "target_modules",
)
ROUTING_PREFIXES = ("allocation.", "task_weights.", "bottleneck.", "gate.")
HEAD_PATTERN = re.compile(r"^(?P<module>(?:.*\.)?task_heads)\.(?P<task>\d+)\.(?P<rest>.+)$")


class TransferError(ValueError):
    """The library cannot be found or does not fit the run; the message names the field and both values."""


@dataclass
class Library:
    """A trained skill library, read without a model."""

    path: Path  # what init_from named
    directory: Path  # the adapter folder read
    config: SkillConfig
    layers: dict[str, dict[str, int]]
    peft: bool
    run_name: str | None = None  # the source run's, when the folder is (or is inside) a run folder
    git_sha: str | None = None
    backbone: str | None = None

    def record(self) -> dict[str, Any]:
        """What results.json and W&B record of the library."""
        return {
            "path": str(self.path),
            "adapter": str(self.directory),
            "run_name": self.run_name,
            "git_sha": self.git_sha,
            "backbone": self.backbone,
            "method": self.config.method,
            "tasks": len(self.config.task_names),
            "format": "peft_poly" if self.peft else "cpoly",
        }


def _run_facts(run_dir: Path) -> dict[str, Any]:
    """run_name, git_sha and backbone of a run folder: from its results.json (a finished run), else what its
    config_resolved.yaml says (a run that has not finished: no git SHA)."""
    facts: dict[str, Any] = {"run_name": None, "git_sha": None, "backbone": None}
    try:
        results = json.loads((run_dir / "results.json").read_text())
        facts |= {k: results.get(k) for k in facts}
    except (OSError, json.JSONDecodeError):
        pass
    if facts["run_name"] is None or facts["backbone"] is None:
        try:
            from omegaconf import OmegaConf

            resolved = OmegaConf.to_container(OmegaConf.load(run_dir / "config_resolved.yaml"))
        except (OSError, ValueError):
            resolved = {}
        facts["run_name"] = facts["run_name"] or resolved.get("run_name")
        facts["backbone"] = facts["backbone"] or (resolved.get("backbone") or {}).get("name")
    return facts


def find_library(path: str | Path, checkpoint: str = "best") -> Library:
    """The adapter folder `path` names: itself if it holds `adapter_config.json`, else a run folder's
    `best/` or `last/` (`checkpoint`)."""
    path = Path(path)
    if not path.is_dir():
        raise TransferError(f"init_from={path}: no such folder")
    if (path / CONFIG_NAME).is_file():
        directory, run_dir = path, (path.parent if (path.parent / "config_resolved.yaml").is_file() else None)
    elif (path / checkpoint / CONFIG_NAME).is_file():
        directory, run_dir = path / checkpoint, path
    else:
        there = sorted(p.name for p in path.iterdir())[:10]
        raise TransferError(
            f"init_from={path}: neither an adapter folder ({CONFIG_NAME}) nor a run folder with "
            f"{checkpoint}/{CONFIG_NAME} (transfer.checkpoint={checkpoint}); it holds {there}"
        )
    try:
        config, layers, _ = read_adapter(directory, with_tensors=False)
        peft = is_peft_poly(directory)
    except (ValueError, FileNotFoundError, KeyError, TypeError) as e:
        raise TransferError(f"init_from={path}: {e}") from None
    facts = _run_facts(run_dir) if run_dir is not None else {}
    return Library(path=path, directory=directory, config=config, layers=layers, peft=peft, **facts)


def check_fits(library: Library, wanted: SkillConfig, backbone: str | None) -> None:
    """Refuse a library whose structure differs from the run's, naming every differing field."""
    saved = library.config
    differences = []
    if backbone is not None and library.backbone is not None and backbone != library.backbone:
        differences.append(f"backbone: checkpoint {library.backbone!r}, this run {backbone!r}")
    for name in FITTING_FIELDS:
        if name == "target_modules" and library.peft:  # PEFT lists layer names: the layers are matched on load
            continue
        a, b = getattr(saved, name), getattr(wanted, name)
        if (list(a) if isinstance(a, (list, tuple)) else a) != (list(b) if isinstance(b, (list, tuple)) else b):
            differences.append(f"method.{name}: checkpoint {a!r}, this run {b!r}")
    if differences:
        raise TransferError(
            f"init_from={library.path}: the checkpoint does not fit this run ({len(differences)} "
            f"difference{'s' if len(differences) > 1 else ''}): " + "; ".join(differences)
        )


def task_order(library: Library, tasks: Sequence[str]) -> list[str]:
    """The run's tasks as the model lists them: the library's known tasks first, in the library's order,
    then the new ones in the run's order. Known tasks then keep their positions, so even C-Poly's dense
    W_B (a matmul over every task's skills) computes a known task's mixture with the same operands in the
    same order, and its outputs stay bit for bit what they were (a reordered list gives the same values
    up to float rounding)."""
    wanted, known = set(tasks), set(library.config.task_names)
    return [t for t in library.config.task_names if t in wanted] + [t for t in tasks if t not in known]


def _part(name: str) -> str:
    """The transfer part an adapter tensor belongs to, by its name within its layer."""
    if name.startswith("shared_"):
        return "shared_skills"
    if name.startswith(("task_A", "task_B")):
        return "task_skills"
    if name.startswith(ROUTING_PREFIXES):
        return "routing"
    raise ValueError(f"adapter tensor {name!r} belongs to no transfer part")


@dataclass
class _TaskRows:
    """Where the library's tasks go in the run's model: the task's row in the model and in the library
    of every known task, the model's rows of the new tasks, and the task skills per task (B)."""

    known: list[tuple[int, int]]
    new: list[int]
    n_task_skills: int


@torch.no_grad()
def load_library(
    model: nn.Module,
    library: Library,
    tensors: dict[str, torch.Tensor],
    new_task_routing: str = "uniform",
    average_skills: bool = False,
) -> dict[str, Any]:
    """Copy the library's tensors of the tasks it knows into `model` (skills just added for the run's
    tasks); returns which tasks were known and which new."""
    if new_task_routing not in NEW_TASK_ROUTING:
        raise ValueError(f"new_task_routing={new_task_routing!r}: must be one of {', '.join(NEW_TASK_ROUTING)}")
    config = skill_state(model).config
    old = {t: i for i, t in enumerate(library.config.task_names)}
    rows = _TaskRows(
        known=[(i, old[t]) for i, t in enumerate(config.task_names) if t in old],  # (new row, saved row)
        new=[i for i, t in enumerate(config.task_names) if t not in old],
        n_task_skills=config.n_task_skills,
    )
    layers = dict(skilled_layers(model))
    if sorted(layers) != sorted(library.layers):
        missing = sorted(set(library.layers) - set(layers))[:5]
        extra = sorted(set(layers) - set(library.layers))[:5]
        raise TransferError(
            f"init_from={library.path}: the library's layers do not match the model's (saved, not in the model: "
            f"{missing}; in the model, not saved: {extra})"
        )
    for layer_name, layer in layers.items():
        _load_layer(layer_name, layer, library, tensors, rows, new_task_routing, average_skills)
    _load_heads(model, library, tensors, old)
    return {
        "known_tasks": [config.task_names[i] for i, _ in rows.known],
        "new_tasks": [config.task_names[i] for i in rows.new],
        "new_task_routing": new_task_routing,
        "average_skills": average_skills,
    }


def _load_layer(
    layer_name: str,
    layer: SkilledLinear,
    library: Library,
    tensors: dict[str, torch.Tensor],
    rows: _TaskRows,
    new_task_routing: str,
    average_skills: bool,
) -> None:
    """One skilled layer's adapter tensors from the library: shared ones whole, per-task ones by row."""
    want = library.layers[layer_name]
    if (layer.d_in, layer.d_out) != (want["d_in"], want["d_out"]):
        raise TransferError(
            f"init_from={library.path}: layer {layer_name} is {layer.d_in}->{layer.d_out} in the model but "
            f"{want['d_in']}->{want['d_out']} in the library (another backbone)"
        )
    B = rows.n_task_skills
    for name, param in layer.adapter_tensors().items():
        key = f"{layer_name}.{name}"
        if key not in tensors:
            raise TransferError(f"init_from={library.path}: the library has no tensor {key}")
        value = tensors[key].to(device=param.device, dtype=param.dtype)
        if name in ("shared_A", "shared_B") or name.startswith("gate."):
            if average_skills and name.startswith("shared_"):
                value = value.mean(1, keepdim=True).expand_as(value)
            param.copy_(value)
        elif name == "allocation.logits":
            for i, j in rows.known:
                param[i] = value[j]
            for i in rows.new:
                param[i] = value.mean(0) if new_task_routing == "mean" else 0.0
        elif name in ("task_A", "task_B"):
            for i, j in rows.known:
                param[:, i * B : (i + 1) * B] = value[:, j * B : (j + 1) * B]
        elif name == "task_weights.weight" and layer.task_weights.dense:  # (T, T*B): known x known blocks
            for i, j in rows.known:
                for k, m in rows.known:
                    param[i, k * B : (k + 1) * B] = value[j, m * B : (m + 1) * B]
        elif name in ("task_weights.weight", "bottleneck.weight"):  # one row per task
            for i, j in rows.known:
                param[i] = value[j]
        else:
            raise TransferError(f"init_from={library.path}: do not know how to transfer {key}")


def _load_heads(model: nn.Module, library: Library, tensors: dict[str, torch.Tensor], old: dict[str, int]) -> None:
    """The `modules_to_save` (task heads): a module shared by every task whole when the library has it,
    a known task's head from that task's saved head."""
    task_names = skill_state(model).config.task_names
    for key, param in _modules_to_save_parameters(model).items():
        match = HEAD_PATTERN.match(key)
        if match is None:  # a module shared by every task
            if key in tensors:
                param.copy_(tensors[key].to(param.dtype))
            continue
        task = task_names[int(match["task"])]
        if task in old:
            saved_key = f"{match['module']}.{old[task]}.{match['rest']}"
            value = tensors[saved_key]
            if value.shape != param.shape:
                raise TransferError(
                    f"init_from={library.path}: task {task}'s head {saved_key} is {tuple(value.shape)} in the "
                    f"library but {tuple(param.shape)} here (other labels)"
                )
            param.copy_(value.to(param.dtype))


def part_parameters(model: nn.Module) -> dict[str, list[nn.Parameter]]:
    """The model's adapter parameters (and heads) by transfer part."""
    parts: dict[str, list[nn.Parameter]] = {p: [] for p in PARTS}
    for _, layer in skilled_layers(model):
        for name, param in layer.adapter_tensors().items():
            parts[_part(name)].append(param)
    parts["heads"] = list(_modules_to_save_parameters(model).values())
    return parts


def set_trainable(model: nn.Module, trainable: Sequence[str]) -> dict[str, Any]:
    """Train only the parts named (`PARTS`); the others get requires_grad=False. Returns the parameter
    count of each part and the total that trains."""
    unknown = [p for p in trainable if p not in PARTS]
    if unknown:
        raise ValueError(f"transfer.trainable: unknown parts {unknown}; choose from {', '.join(PARTS)}")
    counts: dict[str, int] = {}
    for part, params in part_parameters(model).items():
        for p in params:
            p.requires_grad_(part in trainable)
        counts[part] = sum(p.numel() for p in params)
    return {
        "trainable": list(trainable),
        "parameters_by_part": counts,
        "trained_parameters": sum(counts[p] for p in trainable),
    }
