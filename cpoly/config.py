"""Typed schemas of every config group, registered in Hydra's ConfigStore, and the cross-field checks
that run before any data or model is loaded.

Each YAML option lists its schema first in its own defaults (`defaults: [method_schema, _self_]`), so a
misspelled key or a wrongly typed value fails when Hydra composes the config, with Hydra's message.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from cpoly.backbones.config import BackboneConfig, BackboneConfigError
from cpoly.data.jsonl import JsonlConfig
from cpoly.data.superglue import SuperGLUEConfig
from cpoly.data.superni import SuperNIConfig
from cpoly.data.synthetic import SyntheticConfig
from cpoly.skills.config import SkillConfig, SkillConfigError
from cpoly.skills.methods import MATCH_FIELDS, METHODS
from cpoly.skills.settings import LAYER_FIELD_NAMES, TAGS, LayerSettings

BENCHMARK_SCHEMAS = {
    "synthetic_schema": SyntheticConfig,
    "superni_schema": SuperNIConfig,
    "superglue_schema": SuperGLUEConfig,
    "jsonl_schema": JsonlConfig,
}


@dataclass
class MethodConfig(LayerSettings):
    """A `SkillConfig` without the task list (the benchmark gives it): its layer settings are
    `LayerSettings`' fields. null fields take the method's default (its registry entry,
    cpoly/skills/methods.py); `target_modules: null` takes the backbone's."""

    name: str = MISSING  # the option's file name
    method: str = MISSING  # a registered method: cpoly/skills/methods.py
    target_modules: Any = None
    # The allocation logits' (or gate's) learning rate; optim.router_lr takes it. null: the method's
    # (its registry entry: 0.1 for poly, mhr and cpoly, mttl's two-speed optimiser; else the adapters' lr).
    router_lr: float | None = None
    # Parameter matching: size this method to the trainable adapter parameters of another method option
    # (conf/method/<match_params>.yaml, e.g. cpoly) by varying `match_by` (n_skills or rank; null: the
    # method's own knob, its registry entry's match_by). Recorded in results.json.
    match_params: str | None = None
    match_by: str | None = None

    def skill_config(
        self, task_names: list[str], target_modules: Any, modules_to_save: list[str] | None = None
    ) -> SkillConfig:
        layer = {name: getattr(self, name) for name in LAYER_FIELD_NAMES}
        return SkillConfig(
            **layer
            | dict(
                method=self.method,
                task_names=list(task_names),
                target_modules=self.target_modules if self.target_modules is not None else target_modules,
                modules_to_save=list(modules_to_save or []),
            )
        )


@dataclass
class OptimConfig:
    """AdamW with parameter groups: adapters (and task heads) at `lr`; routers (allocation logits, moe
    gate) at `router_lr` without weight decay; C-Poly's task-skill weights at `lr` without weight decay."""

    name: str = MISSING
    lr: float = 3e-3
    router_lr: float | None = None  # null: the adapters' lr; only for methods with a router
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    scheduler: str = "linear"  # linear | cosine | constant (after warmup)
    warmup_ratio: float = 0.06  # share of max_steps spent warming up linearly from 0

    def validate(self) -> OptimConfig:
        for name in ("lr", "eps", "router_lr"):  # `not > 0`: also refuses nan, which would train to a nan loss
            value = getattr(self, name)
            if value is not None and not (0 < value < math.inf):
                raise ConfigError(f"optim.{name}={value}: must be a finite number > 0")
        if not (0 <= self.weight_decay < math.inf):
            raise ConfigError(f"optim.weight_decay={self.weight_decay}: must be a finite number >= 0")
        _check_choice("optim.scheduler", self.scheduler, ("linear", "cosine", "constant"))
        if not 0 <= self.warmup_ratio < 1:
            raise ConfigError(f"optim.warmup_ratio={self.warmup_ratio}: must lie in [0, 1)")
        return self


@dataclass
class TrainerConfig:
    name: str = MISSING
    max_steps: int = 2000  # optimizer steps
    batch_size: int = 8  # examples per optimizer step on each process, before accumulation
    grad_accum: int = 1
    eval_every: int = 500  # steps; evaluation also runs at the end
    eval_batch_size: int = 32
    max_eval_per_task: int | None = None  # cap evaluated examples per task (null: all)
    log_every: int = 10
    max_grad_norm: float | None = 1.0
    precision: str = "auto"  # auto (bf16 where supported, else fp32) | no | bf16 | fp16
    task_sampling: str = "proportional"  # proportional | uniform | temperature
    sampling_temperature: float = 2.0  # for task_sampling=temperature: p ~ n^(1/T)
    group_by_length: bool = True
    # group_by_length keeps at least this share of the distinct tasks per batch random batches have
    # (0: plain length sorting, least padding, few tasks per batch on SuperNI)
    min_task_mix: float = 0.9
    overfit_batches: int = 0  # > 0: train on the first N batches over and over (debug=overfit)
    # true: CPU even where a GPU exists; null: CPU processes where no CUDA device exists (several launched
    # processes then form a gloo group); false: never ask Accelerate for CPU processes
    cpu: bool | None = None
    # torch intra-op threads on a CPU: 1 (the default) gives the same numbers on any machine, whatever its core count
    # or load, and does not stall when other processes share the cores; null: torch's default (every core)
    cpu_threads: int | None = 1
    progress_bar: bool = True
    # DataLoader worker processes building the coming steps' batches (0: on the training thread), and how
    # many steps each builds ahead
    num_workers: int | None = None  # null: 0 on a CPU (measured faster there), 2 on a GPU
    prefetch_factor: int = 2
    # checkpoints (last/, with the trainer state) besides those at each evaluation: every N steps and/or
    # every M minutes; a kill loses at most that much training. The newest `keep_checkpoints` are kept.
    save_every: int | None = None
    save_every_minutes: float | None = None
    keep_checkpoints: int = 2

    def global_batch_size(self, processes: int) -> int:
        """Examples per optimizer step: every micro-batch of every process."""
        return self.batch_size * self.grad_accum * processes

    def validate(self, evaluates_a_library: bool = False) -> TrainerConfig:
        """`evaluates_a_library`: init_from is set, so max_steps=0 (score the library as it is) is allowed."""
        if self.max_steps < 0 or (self.max_steps == 0 and not evaluates_a_library):
            raise ConfigError(
                f"trainer.max_steps={self.max_steps}: must be >= 1 "
                "(0 evaluates a library as it is: only with init_from)"
            )
        for name in ("batch_size", "grad_accum", "eval_every", "eval_batch_size", "log_every", "prefetch_factor"):
            if getattr(self, name) < 1:
                raise ConfigError(f"trainer.{name}={getattr(self, name)}: must be >= 1")
        if self.save_every is not None and self.save_every < 1:
            raise ConfigError(f"trainer.save_every={self.save_every}: must be >= 1 (steps) or null")
        if self.save_every_minutes is not None and not (0 < self.save_every_minutes < math.inf):
            raise ConfigError(f"trainer.save_every_minutes={self.save_every_minutes}: must be > 0 or null")
        if self.keep_checkpoints < 1:
            raise ConfigError(f"trainer.keep_checkpoints={self.keep_checkpoints}: must be >= 1")
        if self.num_workers is not None and self.num_workers < 0:
            raise ConfigError(
                f"trainer.num_workers={self.num_workers}: must be >= 0 (0 builds batches on the training thread)"
            )
        if not 0 <= self.min_task_mix <= 1:
            raise ConfigError(f"trainer.min_task_mix={self.min_task_mix}: must lie in [0, 1]")
        _check_choice("trainer.precision", self.precision, ("auto", "no", "bf16", "fp16"))
        _check_choice("trainer.task_sampling", self.task_sampling, ("proportional", "uniform", "temperature"))
        return self


@dataclass
class TransferConfig:
    """Starting from a trained skill library (`init_from`, docs/transfer.md): which checkpoint of a run
    folder, how new tasks are routed at first, which parts train. Read only when `init_from` is set."""

    name: str = MISSING  # the option's file name: it names the variant in the run's group (`-from_<name>`)
    checkpoint: str = "best"  # best | last: the folder read from a run folder (an adapter folder is read as is)
    new_task_routing: str = "uniform"  # uniform (zero allocation logits) | mean (the known tasks' mean row)
    # routing (allocation logits, task weights W_B, bottlenecks, token gates), task_skills, shared_skills,
    # heads; the rest is frozen and has no optimizer state
    trainable: list[str] = field(default_factory=lambda: ["routing", "task_skills", "shared_skills", "heads"])
    average_skills: bool = False  # MHR-mu: every shared skill becomes the library's mean skill before training


@dataclass
class LoggerConfig:
    """`name: none` keeps only the local logs; `name: wandb` adds a Weights & Biases run."""

    name: str = MISSING
    project: str = "cpoly"
    entity: str | None = None
    mode: str = "offline"  # offline | online | disabled (WANDB_MODE overrides)
    group: str | None = None
    job_type: str = "train"
    tags: list[str] = field(default_factory=list)
    notes: str | None = None
    init_timeout: float = 90.0  # seconds before an unreachable W&B server counts as a failure (logging goes off)
    finish_timeout: float = 120.0  # seconds W&B's finish may take before the run moves on without it


@dataclass
class PathsConfig:
    root_dir: str = MISSING
    data_dir: str = MISSING
    log_dir: str = MISSING
    cache_dir: str = MISSING
    output_dir: str = MISSING


SCHEMAS = {
    "backbone": {"backbone_schema": BackboneConfig},
    "benchmark": BENCHMARK_SCHEMAS,
    "method": {"method_schema": MethodConfig},
    "optim": {"optim_schema": OptimConfig},
    "trainer": {"trainer_schema": TrainerConfig},
    "transfer": {"transfer_schema": TransferConfig},
    "logger": {"logger_schema": LoggerConfig},
    "paths": {"paths_schema": PathsConfig},
}


def skills_tag(method: Any) -> str:
    """The key numbers of a method option (the `method` node) in a run name: its registry entry's tag and the
    rank: cpoly a3b1r2, poly k4r2, mhr k4s4r2, moe_lora e4r2, mtl_lora n3r4, hydralora h3r4, mixlora e4r2.
    A parameter-matched run shows the knob it sizes as M and names the method it matches: kMr2-match_cpoly.
    Layer settings that differ from the method's default follow, each with its field's `tag` prefix
    (cpoly/skills/settings.py), so dashboards keep them apart: wblock (W_B), ka1 (one shared A), zsoftmax
    (allocation), Ldiagonal (bottleneck), top2, aux0.01."""
    get = method.get
    spec = METHODS.get(get("method"))
    defaults = spec.settings() if spec is not None else {}
    value = {name: get(name) if get(name) is not None else defaults.get(name) for name in ("n_skills", "rank")}
    if get("match_params") is not None:
        by = get("match_by") or (spec.match_by if spec is not None else "n_skills")
        value[by] = "M"
    k, r = value["n_skills"], value["rank"]
    b, s = (get(name) if get(name) is not None else defaults.get(name) for name in ("n_task_skills", "n_splits"))
    tag = (spec.tag(k, b, s) if spec is not None else f"k{k}b{b}s{s}") + f"r{r}"
    for name, prefix in TAGS.items():
        setting, default = get(name), defaults.get(name)
        if name == "n_skills_a" and default is None:
            default = k  # None is one down-projection per skill
        if setting is not None and setting != default:
            tag += f"{prefix}{setting:g}" if isinstance(setting, float) else f"{prefix}{setting}"
    return tag if get("match_params") is None else f"{tag}-match_{get('match_params')}"


def transfer_tag(variant: str, init_from: str | None) -> str:
    """The transfer variant in a run name: `-from_routing` for a run started from a library with the
    `transfer=routing` option; nothing for a run from scratch (its name is what it always was)."""
    return "" if init_from in (None, "", "None") else f"-from_{variant}"


PROJECT_DIR = Path(__file__).resolve().parents[1]
CONF_DIR = PROJECT_DIR / "conf"
# Named experiments live at the top level (`experiments/<name>.yaml`), outside `conf/`, and are the
# options of the `experiment` group: `python train.py experiment=<name>`.
EXPERIMENTS_DIR = PROJECT_DIR / "experiments"


def register_configs() -> None:
    """Register every schema, the named experiments and the resolvers the configs use: the run name's
    `cpoly_skills_tag` and `cpoly_transfer_tag`, and `cpoly_methods` (every registered method, comma-separated,
    for a sweep's `method:` values). Idempotent."""
    store = ConfigStore.instance()
    for group, schemas in SCHEMAS.items():
        for name, node in schemas.items():
            store.store(group=group, name=name, node=node)
    register_experiments(store, EXPERIMENTS_DIR)
    if not OmegaConf.has_resolver("cpoly_skills_tag"):
        OmegaConf.register_new_resolver("cpoly_skills_tag", skills_tag)
    if not OmegaConf.has_resolver("cpoly_transfer_tag"):
        OmegaConf.register_new_resolver("cpoly_transfer_tag", transfer_tag)
    if not OmegaConf.has_resolver("cpoly_methods"):  # sweeps over every registered method: conf/sweep/
        OmegaConf.register_new_resolver("cpoly_methods", lambda: ",".join(METHODS))


def method_option(name: str) -> MethodConfig:
    """The method option `conf/method/<name>.yaml` as it is in its file (no overrides applied), on top of the
    options its defaults list names (cpoly_block extends cpoly)."""
    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(MethodConfig), _method_file(name)))


def _method_file(name: str) -> DictConfig:
    path = CONF_DIR / "method" / f"{name}.yaml"
    if not path.is_file():
        options = sorted(p.stem for p in (CONF_DIR / "method").glob("*.yaml"))
        raise ConfigError(f"method.match_params={name!r}: no method option {path}; options: {', '.join(options)}")
    raw = OmegaConf.load(path)
    bases = [d for d in raw.pop("defaults", []) if isinstance(d, str) and d not in ("method_schema", "_self_")]
    return OmegaConf.merge(*(_method_file(base) for base in bases), raw)


def register_experiments(store: ConfigStore, folder: Path) -> None:
    """Each `folder/<name>.yaml` as the option `<name>` of the `experiment` group, at the global package
    (what `# @package _global_` says in a file under conf/). Through the ConfigStore rather than a
    search path, because Hydra 1.3 lists ConfigStore groups in `--help` and expands `glob(*)` over them,
    and does neither for a search-path group (hydra#1942). The files are read, not copied."""
    if not folder.is_dir():  # a non-editable install ships no experiments
        return
    for path in sorted(folder.glob("*.yaml")):
        try:
            node = OmegaConf.load(path)
        except Exception as error:  # a YAML syntax error: name the file before Hydra's opaque message
            raise ConfigError(f"experiment file {path}: {error}") from None
        store.store(group="experiment", name=path.stem, node=node, package="_global_", provider="cpoly experiments")


class ConfigError(ValueError):
    """A cross-field check failed; the message names the keys and values in override syntax."""


def _check_choice(key: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{key}={value!r}: must be one of {', '.join(choices)}")


def to_object(node: DictConfig) -> Any:
    """The group's dataclass instance (schemas run their own checks in `__post_init__`/`validate`)."""
    return OmegaConf.to_object(node)


def fill_method_defaults(cfg: DictConfig) -> None:
    """Write the method's defaults (its registry entry) into `cfg.method` where the option leaves them null,
    so the config that is logged, hashed and compared holds the values the run uses. The knob a
    parameter-matched run sizes stays null: the matching chooses it (results.json records the value)."""
    spec = METHODS.get(cfg.method.get("method"))
    if spec is None:  # check_config names the bad value
        return
    sized = (cfg.method.match_by or spec.match_by) if cfg.method.get("match_params") is not None else None
    for name, default in spec.settings().items():
        if cfg.method.get(name) is None and name != sized:
            cfg.method[name] = default
    # the router's lr where there is a router (an allocation needs shared skills: C-Poly at A=0 has none)
    routed = spec.token_routed or (spec.learned_allocation and cfg.method.get("n_skills") != 0)
    if cfg.method.get("router_lr") is None and routed:
        cfg.method.router_lr = spec.router_lr


def prepare_config(cfg: DictConfig) -> None:
    """What a run does to its composed config before anything else: the method's defaults, then every check."""
    fill_method_defaults(cfg)
    check_config(cfg)


def check_config(cfg: DictConfig) -> None:
    """Cross-field checks that need no model or data: they fail in seconds, before anything loads."""
    to_object(cfg.benchmark)  # the benchmark's schema checks its own values (a DataError names the key)
    method: MethodConfig = to_object(cfg.method)
    optim: OptimConfig = to_object(cfg.optim)
    trainer: TrainerConfig = to_object(cfg.trainer)
    try:
        backbone = BackboneConfig.from_any(cfg.backbone).validate()
    except BackboneConfigError as e:
        raise ConfigError(str(e)) from None
    if backbone.source == "package":  # installed? (a one-line error now, not after the data loaded)
        from cpoly.backbones.packages import require_checkpoint

        require_checkpoint(backbone.model_id, backbone.name, backbone.package_dir)
    try:
        skill = method.skill_config(["_check_"], backbone.target_modules)
    except SkillConfigError as e:
        raise ConfigError(str(e).replace("SkillConfig.", "method.")) from None
    _check_matching(method, skill)
    optim.validate()
    if optim.router_lr is not None and not skill.has_router:
        raise ConfigError(
            f"optim.router_lr={optim.router_lr}: method {skill.method} has no router "
            "(no allocation logits or gate); remove it or pick poly/mhr/cpoly/mtl_lora or a token-routed method"
        )
    trainer.validate(evaluates_a_library=bool(cfg.get("init_from")))
    _check_optimized_metric(cfg.get("optimized_metric"))
    if cfg.resume not in ("auto", "never", "must"):
        raise ConfigError(f"resume={cfg.resume!r}: must be auto (continue from last/ if there), never or must")
    if cfg.logger.name == "wandb" and cfg.logger.mode not in ("offline", "online", "disabled"):
        raise ConfigError(f"logger.mode={cfg.logger.mode!r}: must be offline, online or disabled")
    _check_splits_fit_backbone(skill, backbone)
    _check_transfer(cfg, skill, backbone)


def _check_transfer(cfg: DictConfig, skill: SkillConfig, backbone: BackboneConfig) -> None:
    """transfer.* values, and with init_from, that the checkpoint fits this run (it is read, not loaded)."""
    from cpoly.skills.transfer import CHECKPOINTS, NEW_TASK_ROUTING, PARTS, TransferError, check_fits, find_library

    transfer = to_object(cfg.transfer)
    if transfer.checkpoint not in CHECKPOINTS:
        raise ConfigError(f"transfer.checkpoint={transfer.checkpoint!r}: must be one of {', '.join(CHECKPOINTS)}")
    if transfer.new_task_routing not in NEW_TASK_ROUTING:
        raise ConfigError(
            f"transfer.new_task_routing={transfer.new_task_routing!r}: must be one of {', '.join(NEW_TASK_ROUTING)}"
        )
    unknown = [p for p in transfer.trainable if p not in PARTS]
    if unknown or not transfer.trainable or len(set(transfer.trainable)) != len(transfer.trainable):
        raise ConfigError(
            f"transfer.trainable={list(transfer.trainable)}: a non-empty list without repeats of {', '.join(PARTS)}"
        )
    init_from = cfg.get("init_from")
    if not init_from:
        return
    try:
        library = find_library(init_from, transfer.checkpoint)
        check_fits(library, skill, backbone.name)
    except TransferError as e:
        raise ConfigError(str(e)) from None


def _check_optimized_metric(name: str | None) -> None:
    """Selection reads the dev split only: `best/`, early stopping and sweeps never see the test split."""
    if name is None:
        return
    prefix = "dev/avg/"
    if not isinstance(name, str) or not name.startswith(prefix) or not name.removeprefix(prefix):
        hint = (
            "the test split is scored once, at the end, and never chooses anything"
            if str(name).startswith(("test/", "val/"))
            else "the macro average over tasks of one metric on the dev split"
        )
        raise ConfigError(f"optimized_metric={name!r}: must be dev/avg/<metric> (e.g. dev/avg/rougeL); {hint}")


def _check_matching(method: MethodConfig, skill: SkillConfig) -> None:
    if method.match_params is None:
        if method.match_by is not None:
            raise ConfigError(f"method.match_by={method.match_by!r}: set method.match_params to the method to match")
        return
    if method.match_params == method.name:
        raise ConfigError(f"method.match_params={method.match_params!r}: a method cannot be matched to itself")
    reference = method_option(method.match_params)
    if reference.match_params is not None:
        raise ConfigError(f"method.match_params={method.match_params!r}: that option is itself parameter-matched")
    field_name = method.match_by or skill.spec.match_by
    if field_name not in MATCH_FIELDS:
        raise ConfigError(f"method.match_by={field_name!r}: must be one of {', '.join(MATCH_FIELDS)}")
    if field_name == "n_skills" and skill.spec.fixed_skill_count:
        raise ConfigError(f"method.match_by=n_skills: method {skill.method} has a fixed skill count; use rank")


def _architecture(backbone: BackboneConfig) -> Any | None:
    """The backbone's HF config without weights, when it is at hand without network or conversion."""
    from transformers import AutoConfig

    overrides = dict(backbone.model_overrides)
    try:
        if backbone.source == "inhouse" or (backbone.source == "random" and backbone.model_id is None):
            return AutoConfig.for_model(overrides.pop("model_type"), **overrides)
        if backbone.source in ("hub", "random"):
            config = AutoConfig.from_pretrained(backbone.model_id, revision=backbone.revision, local_files_only=True)
            for key, value in overrides.items():
                if key != "model_type":
                    setattr(config, key, value)
            return config
    except (OSError, ValueError, KeyError):  # not cached: the loader reports that with its own message
        return None
    return None


def _check_splits_fit_backbone(skill: SkillConfig, backbone: BackboneConfig) -> None:
    """n_splits must divide every adapted layer's dimensions: checked on a weightless (meta) model."""
    if skill.n_splits == 1:
        return
    hf_config = _architecture(backbone)
    if hf_config is None:
        return  # checked again when skills are added, before training starts
    import torch

    from cpoly.backbones.loading import auto_model_class
    from cpoly.skills.layer import linear_shape
    from cpoly.skills.model import find_target_modules

    with torch.device("meta"):
        model = auto_model_class(backbone.kind).from_config(hf_config)
    for name in find_target_modules(model, skill.target_modules):
        d_in, d_out = linear_shape(model.get_submodule(name))
        for dim_name, dim in (("input", d_in), ("output", d_out)):
            if dim % skill.n_splits:
                raise ConfigError(
                    f"method.n_splits={skill.n_splits}: does not divide the {dim_name} size {dim} of "
                    f"{backbone.name} layer {name}"
                )
