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
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from omegaconf import DictConfig, OmegaConf

from cpoly.atomic import atomic_write_text
from cpoly.backbones import BackboneConfig, load_backbone
from cpoly.config import ConfigError, MethodConfig, method_option, prepare_config, register_configs, to_object
from cpoly.data import load_benchmark
from cpoly.data.collate import make_collator
from cpoly.data.example import BenchmarkData, Example
from cpoly.data.tokenize import tokenize_examples
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
    cfg: DictConfig, library: Library, model: torch.nn.Module, skill_config: SkillConfig, backbone_cfg: BackboneConfig
) -> dict[str, Any]:
    """`init_from`: load the library's known tasks into the fresh skills, add the new ones, freeze what
    `transfer.trainable` does not name (docs/transfer.md); returns what results.json records of it."""
    settings = to_object(cfg.transfer)
    try:
        check_fits(library, skill_config, backbone_cfg.name)  # the run's sized config (match_params)
        _, _, tensors = read_adapter(library.directory)
        loaded = load_library(model, library, tensors, settings.new_task_routing, settings.average_skills)
    except TransferError as e:
        raise ConfigError(str(e)) from None
    if cfg.trainer.max_steps == 0:  # nothing steps: nothing is frozen, nothing trains
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


def train(cfg: DictConfig) -> dict[str, Any]:
    """Train and evaluate one setting; returns `results.json`'s content."""
    wall_start = time.perf_counter()
    register_configs()
    prepare_config(cfg)
    config: dict[str, Any] = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)  # type: ignore[assignment]
    backbone_cfg = BackboneConfig.from_any(cfg.backbone).validate()
    # The process group first: the folder's lock and every main-process decision read it (a launch whose
    # processes are not one group is refused here, before any work).
    # Tasks absent from a batch leave their encoder heads without gradient: DDP must be told.
    accelerator = make_accelerator(
        cfg.trainer.cpu, cfg.trainer.precision, find_unused_parameters=backbone_cfg.kind == "encoder"
    )
    out = Path(cfg.paths.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    with own_run_folder(out, is_main=accelerator.is_main_process):
        return _train(cfg, config, out, wall_start, accelerator, backbone_cfg)


def _train(
    cfg: DictConfig,
    config: dict[str, Any],
    out: Path,
    wall_start: float,
    accelerator: Accelerator,
    backbone_cfg: BackboneConfig,
) -> dict[str, Any]:
    resume_point = resume_decision(cfg.resume, out, config)
    resume_state = resume_point.state if resume_point else None
    if resume_state is not None and resume_state["step"] >= cfg.trainer.max_steps and (out / "results.json").is_file():
        log.info("%s already finished at step %d; nothing to do", out, resume_state["step"])
        return json.loads((out / "results.json").read_text())

    method = to_object(cfg.method)
    if accelerator.device.type == "cpu" and cfg.trainer.cpu_threads:
        torch.set_num_threads(cfg.trainer.cpu_threads)
    set_seed(cfg.seed)

    data = load_benchmark(cfg.benchmark, cfg.paths.data_dir)
    library = find_library(cfg.init_from, cfg.transfer.checkpoint) if cfg.get("init_from") else None
    if library is not None:  # the library's known tasks first, in its order: they compute what they did
        data.task_names = task_order(library, data.task_names)
    check_routing_covers_eval(data, method.unknown_task)
    encoder = backbone_cfg.kind == "encoder"
    backbone = load_backbone(
        backbone_cfg,
        cache_dir=Path(cfg.paths.cache_dir),
        task_labels=task_labels(data) if encoder else None,
        device_supports_bf16=accelerator.device.type == "cuda" and torch.cuda.is_bf16_supported(),
    )
    modules_to_save = backbone.model.modules_to_save if encoder else []
    skill_config, matching = sized_skill_config(method, data.task_names, backbone, modules_to_save)
    model = add_skills(backbone.model, skill_config)
    transfer = start_from_library(cfg, library, model, skill_config, backbone_cfg) if library is not None else None
    model.to(accelerator.device)
    if backbone_cfg.gradient_checkpointing:
        enable_gradient_checkpointing(model)

    # dev is scored at every evaluation (it picks best/), test once at the end
    dev_examples = first_per_task(data.dev, cfg.trainer.max_eval_per_task)
    test_examples = first_per_task(data.test, cfg.trainer.max_eval_per_task)
    tokenize = functools.partial(
        tokenize_examples,
        tokenizer=backbone.tokenizer,
        kind=backbone.kind,
        max_source_length=backbone_cfg.max_source_length,
        max_target_length=backbone_cfg.max_target_length,
        task_to_id=data.task_names,
        cache_dir=Path(cfg.paths.cache_dir) / "tokenized",
    )
    with accelerator.main_process_first():  # one process tokenises, the others read its cache
        train_split = tokenize(data.train)
        dev_split = tokenize(dev_examples, for_generation=not encoder)
        test_split = tokenize(test_examples, for_generation=not encoder)
    scorer = functools.partial(
        evaluate,
        accelerator=accelerator,
        metric=data.metric,
        kind=backbone.kind,
        tokenizer=backbone.tokenizer,
        batch_size=cfg.trainer.eval_batch_size,
        num_beams=backbone_cfg.num_beams,
        max_new_tokens=backbone_cfg.max_new_tokens,
    )

    is_main = accelerator.is_main_process
    if is_main:
        atomic_write_text(out / "config_resolved.yaml", OmegaConf.to_yaml(config))
        atomic_write_text(out / "tasks.txt", "\n".join(data.task_names) + "\n")
    wandb = WandbLogger(
        settings={**config["logger"], "dir": str(out)},
        run_name=cfg.run_name,
        config=config
        if transfer is None
        else {**config, "init_from_source": transfer["init_from"], "transfer_run": transfer},
        run_id=resume_state.get("wandb_run_id") if resume_state else None,
        skills=skill_config,
        enabled=is_main and cfg.logger.name == "wandb",
    )
    reporter = RunReporter(
        out=out,
        is_main=is_main,
        model=model,
        data=data,
        dev_examples=dev_examples,
        test_examples=test_examples,
        wandb=wandb,
        optimized_metric=cfg.optimized_metric or f"{DEV_AVERAGE}{data.main_metric}",
        run_name=cfg.run_name,
    )
    if is_main:  # lines past the resumed step, or all of a killed attempt's lines that left no checkpoint
        reporter.metrics_log.truncate_after(resume_state["step"] if resume_state is not None else -1)
    try:
        loop = TrainLoop(
            accelerator=accelerator,
            model=model,
            kind=backbone.kind,
            trainer=to_object(cfg.trainer),
            optim=to_object(cfg.optim),
            train_dataset=train_split.dataset,
            collator=make_collator(backbone.tokenizer, backbone.kind),
            seed=cfg.seed,
            output_dir=out,
            optimized_metric=reporter.optimized_metric,
            evaluate=functools.partial(scorer, examples=dev_examples, dataset=dev_split.dataset),
            on_log=reporter.on_log,
            on_eval=reporter.on_eval,
            checkpoint_extra=lambda: {"config": config, "config_hash": config_hash(config)},
        )
        if resume_point is not None:
            loop.restore(resume_point.directory)
        loop.state.wandb_run_id = wandb.run_id
        state = loop.fit()
        test = loop.score_test(functools.partial(scorer, examples=test_examples, dataset=test_split.dataset))
        reporter.on_test(test)
        run_info = {
            "run_name": cfg.run_name,
            "group": cfg.group,
            "seed": cfg.seed,
            "benchmark": cfg.benchmark.name,
            "backbone": cfg.backbone.name,
            "method": cfg.method.name,
            "metric": data.metric,
            "main_metric": data.main_metric,
            "parameters": count_parameters(model),
            "init_from": transfer["init_from"] if transfer else None,
            "transfer": {k: v for k, v in transfer.items() if k != "init_from"} if transfer else None,
            "parameter_matching": matching.to_dict() if matching else None,
            "throughput": throughput(state, accelerator),
            "git_sha": git_sha(Path(cfg.paths.root_dir)),
            "world_size": accelerator.num_processes,
            "global_batch_size": to_object(cfg.trainer).global_batch_size(accelerator.num_processes),
            "batches": state.batch_mix(),
            "tokenization": {
                "train": asdict(train_split.stats),
                "dev": asdict(dev_split.stats),
                "test": asdict(test_split.stats),
            },
        }
        results = reporter.results(state, test, run_info)
        reporter.finish(results, wall_start)
        wandb.finish()
    except BaseException:
        wandb.finish(exit_code=1)
        raise
    accelerator.wait_for_everyone()
    return results
