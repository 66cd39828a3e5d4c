"""One training run from a composed config: `train(cfg)` is what `train.py` and the tests call.

Order of work: every check that needs no model or data first (seconds), then data, backbone, skills,
tokenisation, the loop, and the run folder's outputs:
  config_resolved.yaml  tasks.txt  metrics.jsonl  predictions.jsonl  results.json  allocation.png
  last/ (adapters + trainer_state.pt)  best/ (adapters)  train.log  wandb/ (logger=wandb, offline)
"""

from __future__ import annotations

import functools
import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from omegaconf import DictConfig, OmegaConf

from cpoly.atomic import atomic_write_text
from cpoly.backbones import BackboneConfig, load_backbone
from cpoly.backbones.loading import Backbone
from cpoly.config import (
    ConfigError,
    MethodConfig,
    OptimConfig,
    TrainerConfig,
    TransferConfig,
    method_option,
    prepare_config,
    register_configs,
    to_object,
)
from cpoly.data import load_benchmark
from cpoly.data.collate import make_collator
from cpoly.data.example import BenchmarkData, Example
from cpoly.data.tokenize import TokenizedSplit, tokenize_examples
from cpoly.logging import WandbLogger
from cpoly.skills import SkillConfig, add_skills, count_parameters, enable_gradient_checkpointing
from cpoly.skills.io import read_adapter
from cpoly.skills.matching import Matching, adapted_shapes, match_parameters
from cpoly.skills.transfer import (
    PARTS,
    Library,
    TransferError,
    check_fits,
    find_library,
    load_library,
    set_trainable,
    task_order,
)
from cpoly.train.evaluation import DEV_AVERAGE, evaluate
from cpoly.train.launch import make_accelerator
from cpoly.train.loop import LoopState, TrainLoop
from cpoly.train.ownership import own_run_folder
from cpoly.train.reporting import RunReporter, git_sha
from cpoly.train.resume import config_hash, resume_decision

log = logging.getLogger(__name__)


def check_routing_covers_eval(data: BenchmarkData, unknown_task: str) -> None:
    unknown = sorted({ex.task for ex in data.test + (data.dev or [])} - set(data.task_names))
    if unknown and unknown_task == "error":
        raise ConfigError(
            f"benchmark {data.name} evaluates {len(unknown)} tasks that are not trained (e.g. {unknown[0]}): "
            "add method.unknown_task=uniform to route them uniformly over the shared skills"
        )


def task_labels(data: BenchmarkData) -> dict[str, list[str]]:
    """Encoder backbones: each task's label words, in task-id order (one classification head each)."""
    labels: dict[str, list[str]] = {}
    for ex in data.train:
        labels.setdefault(ex.task, list(ex.choices or []))
    missing = [t for t in data.task_names if len(labels.get(t, [])) < 2]
    if missing:
        raise ConfigError(f"encoder backbones classify, but tasks {missing[:5]} of {data.name} have no choices")
    return {t: labels[t] for t in data.task_names}


def first_per_task(examples: list[Example], per_task: int | None) -> list[Example]:
    if per_task is None:
        return examples
    seen: dict[str, int] = {}
    kept = []
    for ex in examples:
        if seen.get(ex.task, 0) < per_task:
            seen[ex.task] = seen.get(ex.task, 0) + 1
            kept.append(ex)
    return kept


def sized_skill_config(
    method: MethodConfig, task_names: list[str], backbone: Any, modules_to_save: list[str]
) -> tuple[SkillConfig, Matching | None]:
    """The run's skill configuration; with `method.match_params`, sized to that method's adapter count."""
    skill_config = method.skill_config(task_names, backbone.config.target_modules, modules_to_save)
    if method.match_params is None:
        return skill_config, None
    reference = method_option(method.match_params).skill_config(task_names, backbone.config.target_modules)
    shapes = adapted_shapes(backbone.model, skill_config.target_modules)
    skill_config, matching = match_parameters(skill_config, reference, shapes, method.match_by, method.match_params)
    log.info(
        "parameter matching: %s=%d gives %d adapter parameters against %d of %s",
        matching.field, matching.value, matching.parameters, matching.reference_parameters, matching.reference,
    )  # fmt: skip
    return skill_config, matching


def start_from_library(
    run: RunSettings, library: Library, model: torch.nn.Module, skill_config: SkillConfig
) -> dict[str, Any]:
    """`init_from`: load the library's known tasks into the fresh skills, add the new ones, freeze what
    `transfer.trainable` does not name (docs/transfer.md); returns what results.json records of it."""
    settings = run.transfer
    try:
        check_fits(library, skill_config, run.backbone.name)  # the run's sized config (match_params)
        _, _, tensors = read_adapter(library.directory)
        loaded = load_library(model, library, tensors, settings.new_task_routing, settings.average_skills)
    except TransferError as e:
        raise ConfigError(str(e)) from None
    if run.trainer.max_steps == 0:  # nothing steps: nothing is frozen, nothing trains
        trained = {"trainable": [], "parameters_by_part": set_trainable(model, PARTS)["parameters_by_part"]}
        trained["trained_parameters"] = 0
    else:
        trained = set_trainable(model, settings.trainable)
        if trained["trained_parameters"] == 0:
            raise ConfigError(
                f"transfer.trainable={list(settings.trainable)}: method {skill_config.method} has no such "
                "parameters, so nothing would train (trainer.max_steps=0 scores the library as it is)"
            )
    log.info(
        "init_from %s (%s): %d known tasks, %d new; training %s (%d parameters)",
        library.directory, library.run_name, len(loaded["known_tasks"]), len(loaded["new_tasks"]),
        trained["trainable"], trained["trained_parameters"],
    )  # fmt: skip
    return {
        "init_from": library.record(),
        "checkpoint": settings.checkpoint,
        "variant": settings.name,
        **loaded,
        **trained,
    }


def throughput(state: LoopState, accelerator: Accelerator) -> dict[str, Any]:
    """Tokens (inputs + targets, all processes) per second of optimizer steps, seconds per step, and the
    peak memory of this process (the CUDA allocator's, else the peak resident set)."""
    if accelerator.device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(accelerator.device) / 2**20
    else:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    return {
        "tokens_per_second": round(state.tokens / state.step_seconds, 1) if state.step_seconds else None,
        "seconds_per_step": round(state.step_seconds / state.step, 4) if state.step else None,
        # the share of step time outside forward, backward and optimizer: waiting for batches, copying them
        # to the device, routing setup (host time; on a GPU the host runs ahead, so this is what it costs)
        "outside_share": round((state.data_seconds + state.routing_seconds) / state.step_seconds, 4)
        if state.step_seconds
        else None,
        "data_share": round(state.data_seconds / state.step_seconds, 4) if state.step_seconds else None,
        "peak_memory_mib": round(peak, 1),
        "device": str(accelerator.device),
        "precision": accelerator.mixed_precision,
    }


@dataclass(frozen=True)
class RunSettings:
    """The run's config groups as typed objects, built once from the composed config."""

    cfg: DictConfig  # the top-level keys (seed, run_name, group, init_from, resume, optimized_metric)
    config: dict[str, Any]  # the resolved config: logged, written, hashed for resuming
    backbone: BackboneConfig
    method: MethodConfig
    optim: OptimConfig
    trainer: TrainerConfig
    transfer: TransferConfig
    out: Path  # the run folder

    @classmethod
    def from_cfg(cls, cfg: DictConfig) -> RunSettings:
        config = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
        backbone = BackboneConfig.from_any(cfg.backbone).validate()
        groups = {name: to_object(cfg[name]) for name in ("method", "optim", "trainer", "transfer")}
        return cls(cfg=cfg, config=config, backbone=backbone, out=Path(cfg.paths.output_dir), **groups)  # type: ignore[arg-type]

    @property
    def encoder(self) -> bool:
        return self.backbone.kind == "encoder"


@dataclass
class Model:
    """The backbone with its skills, and what results.json records of how they were made."""

    backbone: Backbone
    model: torch.nn.Module
    skill_config: SkillConfig
    matching: Matching | None
    transfer: dict[str, Any] | None


@dataclass
class Splits:
    """The examples scored (dev at every evaluation, test once at the end) and the tokenised splits."""

    dev_examples: list[Example]
    test_examples: list[Example]
    train: TokenizedSplit
    dev: TokenizedSplit
    test: TokenizedSplit


def train(cfg: DictConfig) -> dict[str, Any]:
    """Train and evaluate one setting; returns `results.json`'s content."""
    wall_start = time.perf_counter()
    register_configs()
    prepare_config(cfg)
    settings = RunSettings.from_cfg(cfg)
    # The process group first: the folder's lock and every main-process decision read it (a launch whose
    # processes are not one group is refused here, before any work).
    # Tasks absent from a batch leave their encoder heads without gradient: DDP must be told.
    accelerator = make_accelerator(
        settings.trainer.cpu, settings.trainer.precision, find_unused_parameters=settings.encoder
    )
    settings.out.mkdir(parents=True, exist_ok=True)
    with own_run_folder(settings.out, is_main=accelerator.is_main_process):
        return _train(settings, accelerator, wall_start)


def _train(settings: RunSettings, accelerator: Accelerator, wall_start: float) -> dict[str, Any]:
    """The run as a page: resume point, process setup, data, model, tokenised splits, logging, loop, report."""
    resume_point = resume_decision(settings.cfg.resume, settings.out, settings.config)
    resume_state = resume_point.state if resume_point else None
    if finished(settings, resume_state):
        return json.loads((settings.out / "results.json").read_text())
    set_up_process(settings, accelerator)
    data, library = build_data(settings)
    built = build_model(settings, data, library, accelerator)
    splits = tokenize_splits(settings, data, built.backbone, accelerator)
    scorer = make_scorer(data, built.backbone, settings, accelerator)
    write_run_files(settings, data, accelerator)
    wandb = make_wandb(settings, built, resume_state, accelerator)
    reporter = make_reporter(settings, data, built, splits, wandb, accelerator, resume_state)
    try:
        loop = make_loop(settings, built, splits, scorer, reporter, accelerator)
        if resume_point is not None:
            loop.restore(resume_point.directory)
        loop.state.wandb_run_id = wandb.run_id
        state = loop.fit()
        test = loop.score_test(functools.partial(scorer, examples=splits.test_examples, dataset=splits.test.dataset))
        reporter.on_test(test)
        results = reporter.results(state, test, run_info(settings, data, built, splits, state, accelerator))
        reporter.finish(results, wall_start)
        wandb.finish()
    except BaseException:
        wandb.finish(exit_code=1)
        raise
    accelerator.wait_for_everyone()
    return results


def finished(settings: RunSettings, resume_state: dict[str, Any] | None) -> bool:
    """The folder holds this config's finished run: nothing to do."""
    if resume_state is None or resume_state["step"] < settings.trainer.max_steps:
        return False
    if not (settings.out / "results.json").is_file():
        return False
    log.info("%s already finished at step %d; nothing to do", settings.out, resume_state["step"])
    return True


def set_up_process(settings: RunSettings, accelerator: Accelerator) -> None:
    if accelerator.device.type == "cpu" and settings.trainer.cpu_threads:
        torch.set_num_threads(settings.trainer.cpu_threads)
    set_seed(settings.cfg.seed)


def build_data(settings: RunSettings) -> tuple[BenchmarkData, Library | None]:
    """The benchmark's splits, and with `init_from` the library (its known tasks first, in its order)."""
    cfg = settings.cfg
    data = load_benchmark(cfg.benchmark, cfg.paths.data_dir)
    library = find_library(cfg.init_from, settings.transfer.checkpoint) if cfg.get("init_from") else None
    if library is not None:  # the library's known tasks first, in its order: they compute what they did
        data.task_names = task_order(library, data.task_names)
    check_routing_covers_eval(data, settings.method.unknown_task)
    return data, library


def build_model(settings: RunSettings, data: BenchmarkData, library: Library | None, accelerator: Accelerator) -> Model:
    """The backbone (one head per task for encoders), its skills (sized by matching), the library loaded."""
    backbone = load_backbone(
        settings.backbone,
        cache_dir=Path(settings.cfg.paths.cache_dir),
        task_labels=task_labels(data) if settings.encoder else None,
        device_supports_bf16=accelerator.device.type == "cuda" and torch.cuda.is_bf16_supported(),
    )
    modules_to_save = backbone.model.modules_to_save if settings.encoder else []
    skill_config, matching = sized_skill_config(settings.method, data.task_names, backbone, modules_to_save)
    model = add_skills(backbone.model, skill_config)
    transfer = None
    if library is not None:
        transfer = start_from_library(settings, library, model, skill_config)
    model.to(accelerator.device)
    if settings.backbone.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    return Model(backbone, model, skill_config, matching, transfer)


def tokenize_splits(settings: RunSettings, data: BenchmarkData, backbone: Backbone, accelerator: Accelerator) -> Splits:
    """Tokenise train, dev and test (cached; one process writes the cache, the others read it)."""
    per_task = settings.trainer.max_eval_per_task
    dev_examples, test_examples = first_per_task(data.dev, per_task), first_per_task(data.test, per_task)
    tokenize = functools.partial(
        tokenize_examples,
        tokenizer=backbone.tokenizer,
        kind=backbone.kind,
        max_source_length=settings.backbone.max_source_length,
        max_target_length=settings.backbone.max_target_length,
        task_to_id=data.task_names,
        cache_dir=Path(settings.cfg.paths.cache_dir) / "tokenized",
    )
    with accelerator.main_process_first():
        train_split = tokenize(data.train)
        dev_split = tokenize(dev_examples, for_generation=not settings.encoder)
        test_split = tokenize(test_examples, for_generation=not settings.encoder)
    return Splits(dev_examples, test_examples, train_split, dev_split, test_split)


def make_scorer(
    data: BenchmarkData, backbone: Backbone, settings: RunSettings, accelerator: Accelerator
) -> Callable[..., Any]:
    """`evaluate` with everything but the examples and their tokenised dataset bound."""
    return functools.partial(
        evaluate,
        accelerator=accelerator,
        metric=data.metric,
        kind=backbone.kind,
        tokenizer=backbone.tokenizer,
        batch_size=settings.trainer.eval_batch_size,
        num_beams=settings.backbone.num_beams,
        max_new_tokens=settings.backbone.max_new_tokens,
    )


def write_run_files(settings: RunSettings, data: BenchmarkData, accelerator: Accelerator) -> None:
    if accelerator.is_main_process:
        atomic_write_text(settings.out / "config_resolved.yaml", OmegaConf.to_yaml(settings.config))
        atomic_write_text(settings.out / "tasks.txt", "\n".join(data.task_names) + "\n")


def make_wandb(
    settings: RunSettings, built: Model, resume_state: dict[str, Any] | None, accelerator: Accelerator
) -> WandbLogger:
    """The W&B run (main process, logger=wandb); a resumed run continues its W&B run."""
    config, transfer = settings.config, built.transfer
    return WandbLogger(
        settings={**config["logger"], "dir": str(settings.out)},
        run_name=settings.cfg.run_name,
        config=config
        if transfer is None
        else {**config, "init_from_source": transfer["init_from"], "transfer_run": transfer},
        run_id=resume_state.get("wandb_run_id") if resume_state else None,
        skills=built.skill_config,
        enabled=accelerator.is_main_process and settings.cfg.logger.name == "wandb",
    )


def make_reporter(
    settings: RunSettings,
    data: BenchmarkData,
    built: Model,
    splits: Splits,
    wandb: WandbLogger,
    accelerator: Accelerator,
    resume_state: dict[str, Any] | None,
) -> RunReporter:
    """metrics.jsonl, predictions, the console table and results.json; lines past a resumed step are cut."""
    reporter = RunReporter(
        out=settings.out,
        is_main=accelerator.is_main_process,
        model=built.model,
        data=data,
        dev_examples=splits.dev_examples,
        test_examples=splits.test_examples,
        wandb=wandb,
        optimized_metric=settings.cfg.optimized_metric or f"{DEV_AVERAGE}{data.main_metric}",
        run_name=settings.cfg.run_name,
    )
    if accelerator.is_main_process:  # lines past the resumed step, or all of a killed attempt's lines
        reporter.metrics_log.truncate_after(resume_state["step"] if resume_state is not None else -1)
    return reporter


def make_loop(
    settings: RunSettings,
    built: Model,
    splits: Splits,
    scorer: Callable[..., Any],
    reporter: RunReporter,
    accelerator: Accelerator,
) -> TrainLoop:
    config = settings.config
    return TrainLoop(
        accelerator=accelerator,
        model=built.model,
        kind=built.backbone.kind,
        trainer=settings.trainer,
        optim=settings.optim,
        train_dataset=splits.train.dataset,
        collator=make_collator(built.backbone.tokenizer, built.backbone.kind),
        seed=settings.cfg.seed,
        output_dir=settings.out,
        optimized_metric=reporter.optimized_metric,
        evaluate=functools.partial(scorer, examples=splits.dev_examples, dataset=splits.dev.dataset),
        on_log=reporter.on_log,
        on_eval=reporter.on_eval,
        checkpoint_extra=lambda: {"config": config, "config_hash": config_hash(config)},
    )


def run_info(
    settings: RunSettings, data: BenchmarkData, built: Model, splits: Splits, state: LoopState, accelerator: Accelerator
) -> dict[str, Any]:
    """What results.json records about the run besides its scores."""
    cfg, transfer = settings.cfg, built.transfer
    return {
        "run_name": cfg.run_name,
        "group": cfg.group,
        "seed": cfg.seed,
        "benchmark": cfg.benchmark.name,
        "backbone": cfg.backbone.name,
        "method": cfg.method.name,
        "metric": data.metric,
        "main_metric": data.main_metric,
        "parameters": count_parameters(built.model),
        "init_from": transfer["init_from"] if transfer else None,
        "transfer": {k: v for k, v in transfer.items() if k != "init_from"} if transfer else None,
        "parameter_matching": built.matching.to_dict() if built.matching else None,
        "throughput": throughput(state, accelerator),
        "git_sha": git_sha(Path(cfg.paths.root_dir)),
        "world_size": accelerator.num_processes,
        "global_batch_size": settings.trainer.global_batch_size(accelerator.num_processes),
        "batches": state.batch_mix(),
        "tokenization": {name: asdict(getattr(splits, name).stats) for name in ("train", "dev", "test")},
    }
