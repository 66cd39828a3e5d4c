"""One training run from a composed config: `train(cfg)` is what `train.py` and the tests call.

Order of work: every check that needs no model or data first (seconds), then data, backbone, skills,
tokenisation, the loop, and the run folder's outputs:
  config_resolved.yaml  tasks.txt  metrics.jsonl  predictions.jsonl  results.json  allocation.png
  last/ (adapters + trainer_state.pt)  best/ (adapters)  train.log  wandb/ (logger=wandb, offline)
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import subprocess
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs, set_seed
from omegaconf import DictConfig, OmegaConf

from cpoly.atomic import atomic_write_json, atomic_write_text
from cpoly.backbones import BackboneConfig, load_backbone
from cpoly.config import ConfigError, check_config, register_configs, to_object
from cpoly.data import load_benchmark
from cpoly.data.collate import make_collator
from cpoly.data.example import BenchmarkData
from cpoly.data.synthetic import skill_recovery
from cpoly.data.tokenize import tokenize_examples
from cpoly.logging import MetricsLog, WandbLogger, allocation_entropy, plot_allocation, write_results
from cpoly.skills import add_skills, allocation_matrix, count_parameters, enable_gradient_checkpointing
from cpoly.train.checkpoint import has_checkpoint, read_trainer_state
from cpoly.train.evaluation import Evaluation, evaluate
from cpoly.train.loop import TrainLoop

log = logging.getLogger(__name__)

# Keys that do not change what a run computes: a checkpoint written under other values still resumes.
NON_SEMANTIC_KEYS = ("resume", "paths", "logger", "tags", "task_name", "trainer.progress_bar")


def resolved(cfg: DictConfig) -> dict[str, Any]:
    return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)  # type: ignore[return-value]


def semantic_config(config: dict[str, Any]) -> dict[str, Any]:
    out = json.loads(json.dumps(config, default=str))
    for key in NON_SEMANTIC_KEYS:
        *parents, leaf = key.split(".")
        node = out
        for p in parents:
            node = node.get(p, {})
        node.pop(leaf, None)
    return out


def config_hash(config: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(semantic_config(config), sort_keys=True).encode()).hexdigest()[:16]


def _differences(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in sorted(set(a) | set(b)) for d in _differences(a.get(k), b.get(k), f"{prefix}{k}.")]
    return [] if a == b else [f"{prefix.rstrip('.')}: {a!r} -> {b!r}"]


def git_sha(root: Path) -> str | None:
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root, capture_output=True, text=True, timeout=10)
        return sha.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def resume_decision(cfg: DictConfig, out: Path, config: dict[str, Any]) -> dict[str, Any] | None:
    """The trainer state to continue from, or None to start fresh; refuses what would lose work."""
    last = out / "last"
    if not has_checkpoint(last):
        if cfg.resume == "must":
            raise ConfigError(f"resume=must: no checkpoint in {last}")
        return None
    if cfg.resume == "never":
        raise ConfigError(
            f"resume=never but {last} holds a checkpoint: starting over would overwrite it. Use resume=auto "
            "to continue, another run_name or seed, or delete the folder"
        )
    state = read_trainer_state(last)
    if state.get("config_hash") != config_hash(config):
        diff = _differences(semantic_config(state.get("config", {})), semantic_config(config))
        raise ConfigError(
            f"{last} holds a run of another config, so resume=auto cannot continue it (saved -> now: "
            f"{'; '.join(diff[:8])}). Change run_name (or seed) for a new run, or delete the folder"
        )
    return state


def make_accelerator(cfg: DictConfig, kind: str) -> Accelerator:
    trainer = cfg.trainer
    cuda = torch.cuda.is_available() and not trainer.cpu
    precision = trainer.precision
    if precision == "auto":
        precision = "bf16" if cuda and torch.cuda.is_bf16_supported() else "no"
    # Encoder task heads of tasks absent from a batch get no gradient: DDP must be told.
    handlers = [DistributedDataParallelKwargs(find_unused_parameters=kind == "encoder")]
    return Accelerator(
        cpu=trainer.cpu, mixed_precision=precision, gradient_accumulation_steps=trainer.grad_accum, kwargs_handlers=handlers
    )


def _check_routing_covers_eval(data: BenchmarkData, unknown_task: str) -> None:
    unknown = sorted(set(data.eval_task_names) - set(data.task_names))
    if unknown and unknown_task == "error":
        raise ConfigError(
            f"benchmark {data.name} evaluates {len(unknown)} tasks that are not trained (e.g. {unknown[0]}): "
            "add method.unknown_task=uniform to route them uniformly over the shared skills"
        )


def _limit_eval(data: BenchmarkData, per_task: int | None) -> list:
    if per_task is None:
        return data.eval
    seen: dict[str, int] = {}
    kept = []
    for ex in data.eval:
        if seen.get(ex.task, 0) < per_task:
            seen[ex.task] = seen.get(ex.task, 0) + 1
            kept.append(ex)
    return kept


def _write_predictions(path: Path, examples, predictions: list[str]) -> None:
    lines = [
        json.dumps({"task": ex.task, "id": ex.id, "source": ex.prompt, "prediction": pred, "references": ex.references})
        for ex, pred in zip(examples, predictions, strict=True)
    ]
    atomic_write_text(path, "\n".join(lines) + "\n")


def train(cfg: DictConfig) -> dict[str, Any]:
    """Train and evaluate one setting; returns `results.json`'s content."""
    wall_start = time.perf_counter()
    register_configs()
    check_config(cfg)
    config = resolved(cfg)
    out = Path(cfg.paths.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    resume_state = resume_decision(cfg, out, config)
    if resume_state is not None and resume_state["step"] >= cfg.trainer.max_steps and (out / "results.json").is_file():
        log.info("%s already finished at step %d; nothing to do", out, resume_state["step"])
        return json.loads((out / "results.json").read_text())

    backbone_cfg = BackboneConfig.from_any(cfg.backbone).validate()
    accelerator = make_accelerator(cfg, backbone_cfg.kind)
    if accelerator.device.type == "cpu" and cfg.trainer.cpu_threads:
        torch.set_num_threads(cfg.trainer.cpu_threads)
    set_seed(cfg.seed)
    main = accelerator.is_main_process
    method = to_object(cfg.method)

    data = load_benchmark(cfg.benchmark, cfg.paths.data_dir)
    _check_routing_covers_eval(data, method.unknown_task)
    task_labels = _task_labels(data) if backbone_cfg.kind == "encoder" else None
    backbone = load_backbone(
        backbone_cfg,
        cache_dir=Path(cfg.paths.cache_dir),
        task_labels=task_labels,
        device_supports_bf16=accelerator.device.type == "cuda" and torch.cuda.is_bf16_supported(),
    )
    modules_to_save = getattr(backbone.model, "modules_to_save", []) if backbone_cfg.kind == "encoder" else []
    skill_config = method.skill_config(data.task_names, backbone_cfg.target_modules, modules_to_save)
    model = add_skills(backbone.model, skill_config).to(accelerator.device)
    if backbone_cfg.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    parameters = count_parameters(model)

    eval_examples = _limit_eval(data, cfg.trainer.max_eval_per_task)
    tokenize = dict(
        tokenizer=backbone.tokenizer, kind=backbone.kind, max_source_length=backbone_cfg.max_source_length,
        max_target_length=backbone_cfg.max_target_length, task_to_id=data.task_names,
        cache_dir=Path(cfg.paths.cache_dir) / "tokenized",
    )
    with accelerator.main_process_first():  # one process tokenises, the others read its cache
        train_split = tokenize_examples(data.train, **tokenize)
        eval_split = tokenize_examples(eval_examples, for_generation=backbone.kind != "encoder", **tokenize)

    if main:
        atomic_write_text(out / "config_resolved.yaml", OmegaConf.to_yaml(config))
        atomic_write_text(out / "tasks.txt", "\n".join(data.task_names) + "\n")
    metrics_log = MetricsLog(out / "metrics.jsonl")
    if main and resume_state is not None:
        metrics_log.truncate_after(resume_state["step"])
    run_id = resume_state.get("wandb_run_id") if resume_state else None
    wandb = WandbLogger(
        settings={**config["logger"], "dir": str(out)}, run_name=cfg.run_name, config=config,
        run_id=run_id, enabled=main and cfg.logger.name == "wandb",
    )
    try:
        results = _train_and_report(
            cfg, config, accelerator, model, backbone, data, eval_examples, train_split, eval_split,
            metrics_log, wandb, parameters, resume_state, out, wall_start,
        )
        wandb.finish()
    except BaseException:
        wandb.finish(exit_code=1)
        raise
    return results


def _task_labels(data: BenchmarkData) -> dict[str, list[str]]:
    labels: dict[str, list[str]] = {}
    for ex in data.train:
        labels.setdefault(ex.task, list(ex.choices or []))
    missing = [t for t in data.task_names if len(labels.get(t, [])) < 2]
    if missing:
        raise ConfigError(f"encoder backbones classify, but tasks {missing[:5]} of {data.name} have no choices")
    return {t: labels[t] for t in data.task_names}


def _train_and_report(cfg, config, accelerator, model, backbone, data, eval_examples, train_split, eval_split,
                      metrics_log, wandb, parameters, resume_state, out, wall_start) -> dict[str, Any]:
    main = accelerator.is_main_process
    has_allocation = model.cpoly_skills.config.has_learned_allocation
    optimized = cfg.optimized_metric or f"val/avg/{data.main_metric}"

    def run_eval(unwrapped) -> Evaluation:
        return evaluate(
            unwrapped, accelerator, metric=data.metric, examples=eval_examples, kind=backbone.kind,
            tokenizer=backbone.tokenizer, dataset=eval_split.dataset, batch_size=cfg.trainer.eval_batch_size,
            num_beams=backbone.config.num_beams, max_new_tokens=backbone.config.max_new_tokens,
        )

    def on_log(metrics: dict[str, float], step: int) -> None:
        if has_allocation:
            metrics["alloc/entropy"] = allocation_entropy(allocation_matrix(model))
        if main:
            metrics_log.log(metrics, step)
            wandb.log(metrics, step)

    def on_eval(evaluation: Evaluation, step: int, is_best: bool) -> None:
        if not main:
            return
        metrics = {f"val/{task}/{k}": v for task, scores in evaluation.scores.items() for k, v in scores.items()}
        metrics["train/step"] = step
        metrics_log.log(metrics, step)
        wandb.log(metrics, step)
        _write_predictions(out / "predictions.jsonl", eval_examples, evaluation.predictions)
        if has_allocation:
            allocation = allocation_matrix(model)
            png = plot_allocation(allocation, out / "allocation.png", title=f"{cfg.run_name} step {step}")
            wandb.log_allocation(allocation, step, png)
        log.info("step %d: %s = %.4f%s", step, optimized, evaluation.scores["avg"][optimized.removeprefix("val/avg/")],
                 " (best)" if is_best else "")

    loop = TrainLoop(
        accelerator=accelerator, model=model, kind=backbone.kind, trainer=to_object(cfg.trainer), optim=to_object(cfg.optim),
        train_dataset=train_split.dataset, collator=make_collator(backbone.tokenizer, backbone.kind), seed=cfg.seed,
        output_dir=out, optimized_metric=optimized, evaluate=run_eval, on_log=on_log, on_eval=on_eval,
        checkpoint_extra=lambda: {"config": config, "config_hash": config_hash(config)},
    )
    if resume_state is not None:
        loop.restore(out / "last")
    loop.state.wandb_run_id = wandb.run_id
    state = loop.fit()

    final = _split_avg(state.last_scores) if state.last_scores else {"per_task": {}, "avg": {}}
    results = {
        "run_name": cfg.run_name, "group": cfg.group, "seed": cfg.seed,
        "benchmark": cfg.benchmark.name, "backbone": cfg.backbone.name, "method": cfg.method.name,
        "metric": data.metric, "main_metric": data.main_metric, "optimized_metric": optimized,
        "final": {"step": state.step, **final},
        "best": {"step": state.best_step, **(state.best_scores and _split_avg(state.best_scores) or {})},
        "skill_recovery": None, "parameters": parameters, "steps": state.step,
        "train_seconds": round(state.train_seconds, 2), "wall_time_s": round(time.perf_counter() - wall_start, 2),
        "throughput": _throughput(state, accelerator),
        "git_sha": git_sha(Path(cfg.paths.root_dir)), "status": "finished",
        "n_train": len(data.train), "n_eval": len(eval_examples), "tasks": data.task_names,
        "benchmark_info": data.info,
        "tokenization": {"train": asdict(train_split.stats), "eval": asdict(eval_split.stats)},
        "world_size": accelerator.num_processes, "wandb_run_id": wandb.run_id,
        "paths": {"predictions": "predictions.jsonl", "allocation_png": "allocation.png" if has_allocation else None,
                  "best": "best", "last": "last", "metrics": "metrics.jsonl"},
    }
    if has_allocation and data.skill_structure:
        mean = allocation_matrix(model).mean
        recovery = skill_recovery(mean.reshape(mean.shape[0], -1), data.task_names, data.skill_structure)
        results["skill_recovery"] = recovery if math.isfinite(recovery) else None  # NaN: allocation still flat
    if main:
        write_results(out / "results.json", results)
        wandb.summary({f"params/{k}": v for k, v in parameters.items()}
                      | {f"final/{k}": v for k, v in results["final"]["avg"].items()}
                      | ({"skill_recovery": results["skill_recovery"]} if results["skill_recovery"] is not None else {}))
        _print_summary(results, out)
    accelerator.wait_for_everyone()
    return results


def _throughput(state, accelerator: Accelerator) -> dict[str, float | None]:
    """Training speed and memory: tokens (inputs + targets, all processes) per second of optimizer steps,
    seconds per step, and the peak memory of this process (CUDA allocator, else peak resident set)."""
    if accelerator.device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(accelerator.device) / 2**20
    else:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    seconds = state.step_seconds or float("nan")
    return {
        "tokens_per_second": round(state.tokens / seconds, 1) if state.step_seconds else None,
        "seconds_per_step": round(state.step_seconds / state.step, 4) if state.step else None,
        "peak_memory_mib": round(peak, 1),
        "device": str(accelerator.device),
        "precision": accelerator.mixed_precision,
    }


def _split_avg(scores: dict[str, dict[str, float]]) -> dict[str, Any]:
    return {"per_task": {k: v for k, v in scores.items() if k != "avg"}, "avg": scores["avg"]}


def _print_summary(results: dict[str, Any], out: Path) -> None:
    main_metric = results["main_metric"]
    lines = [f"\n{results['run_name']}: {results['steps']} steps in {results['train_seconds']:.0f}s"]
    per_task = results["final"]["per_task"]
    width = max((len(t) for t in per_task), default=4)
    metrics = list(results["final"]["avg"])
    lines.append(f"  {'task':{width}s}  " + "  ".join(f"{m:>15s}" for m in metrics))
    for task, scores in sorted(per_task.items()):
        lines.append(f"  {task:{width}s}  " + "  ".join(f"{scores.get(m, float('nan')):15.2f}" for m in metrics))
    lines.append(f"  {'average':{width}s}  " + "  ".join(f"{results['final']['avg'][m]:15.2f}" for m in metrics))
    if results["skill_recovery"] is not None:
        lines.append(f"  skill_recovery (allocation vs true skill structure): {results['skill_recovery']:.3f}")
    lines.append(f"  {main_metric} best {results['best'].get('avg', {}).get(main_metric, float('nan')):.2f} at step {results['best']['step']}")
    lines.append(f"results: {out / 'results.json'}")
    lines.append(f"predictions: {out / 'predictions.jsonl'}")
    if results["paths"]["allocation_png"]:
        lines.append(f"allocation heatmap: {out / 'allocation.png'}")
    print("\n".join(lines), flush=True)


def main(cfg: DictConfig) -> float | None:
    """Hydra entrypoint body: train, and hand the optimised metric to sweepers."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        results = train(cfg)
    except Exception:
        # In a multirun the launcher goes on with the other jobs and re-raises only the first failure
        # at the end: log every failure where it happens (console and the job's train.log).
        log.exception("run %s failed", cfg.get("run_name"))
        raise
    return results["best"].get("avg", {}).get(results["optimized_metric"].removeprefix("val/avg/"))
