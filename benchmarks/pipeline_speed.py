"""The training loop's overhead: `train.py`'s seconds per optimizer step against a bare loop on the same
model and batches, in one process.

- train.py: `cpoly.run.train` on the composed config (the real loop: DataLoader workers building batches,
  copies, routing setup, loss normalisation, logging), its `results.json` seconds per step (the wait for
  each step's batches included; evaluation and start-up excluded);
- bare: the same backbone, skills, optimizer and scheduler, and the same steps' batches collated
  beforehand and already in memory; each step is `use_tasks` + forward + summed token loss + backward +
  clipping + optimizer and scheduler steps, nothing else.

Runs alternate (train, bare, train, bare, ...) so that a noisy neighbour hits both; the ratio of the
medians is printed per setting (tiny_t5 on the synthetic benchmark and on SuperNI) and per number of
DataLoader workers.

    CPOLY_DATA_DIR=../shared/data python benchmarks/pipeline_speed.py [--steps 300] [--repeats 3] [--workers 0 1]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = {
    "synthetic": ["benchmark=synthetic", "backbone=tiny_t5"],
    "superni": [
        "benchmark=superni",
        "backbone=tiny_t5",
        "benchmark.n_tasks=20",
        "benchmark.n_train_per_task=200",
        "benchmark.n_eval_per_task=5",
        "backbone.max_source_length=256",
        "backbone.max_target_length=32",
    ],
}
COMMON = ["logger=none", "trainer.max_eval_per_task=1", "trainer.progress_bar=false", "trainer.log_every=25"]


def compose(overrides: list[str]):
    from hydra import compose, initialize_config_dir

    from cpoly.config import register_configs

    register_configs()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose("train", overrides=overrides)


def train_seconds_per_step(overrides: list[str], scratch: Path) -> float:
    from cpoly.run import train

    cfg = compose([*overrides, f"paths.output_dir={scratch}", f"paths.cache_dir={ROOT / '.cache'}"])
    results = train(cfg)
    return results["throughput"]["seconds_per_step"]


def bare_seconds_per_step(overrides: list[str], steps: int) -> float:
    """The same model, optimizer and batches as `train`, in the plainest loop (module docstring)."""
    from cpoly.backbones import BackboneConfig, load_backbone
    from cpoly.config import to_object
    from cpoly.data import load_benchmark
    from cpoly.data.collate import make_collator
    from cpoly.data.sampling import MultiTaskBatchSampler
    from cpoly.data.tokenize import tokenize_examples
    from cpoly.skills import add_skills, use_tasks
    from cpoly.skills.router import example_noise_keys
    from cpoly.train.optim import build_optimizer, build_scheduler

    cfg = compose([*overrides, "paths.output_dir=unused", f"paths.cache_dir={ROOT / '.cache'}"])
    torch.manual_seed(cfg.seed)
    backbone_cfg = BackboneConfig.from_any(cfg.backbone).validate()
    data = load_benchmark(cfg.benchmark, cfg.paths.data_dir)
    backbone = load_backbone(backbone_cfg, cache_dir=Path(cfg.paths.cache_dir))
    method = to_object(cfg.method)
    model = add_skills(backbone.model, method.skill_config(data.task_names, backbone_cfg.target_modules))
    split = tokenize_examples(
        data.train,
        backbone.tokenizer,
        kind=backbone.kind,
        max_source_length=backbone_cfg.max_source_length,
        max_target_length=backbone_cfg.max_target_length,
        task_to_id=data.task_names,
        cache_dir=Path(cfg.paths.cache_dir) / "tokenized",
    )
    trainer, optim = to_object(cfg.trainer), to_object(cfg.optim)
    dataset = split.dataset
    sampler = MultiTaskBatchSampler(
        tasks=dataset.data.column("task_id").to_numpy(),
        lengths=dataset.data.column("length").to_numpy(),
        batch_size=trainer.batch_size,
        strategy=trainer.task_sampling,
        temperature=trainer.sampling_temperature,
        seed=cfg.seed,
        group_by_length=trainer.group_by_length,
        min_task_mix=trainer.min_task_mix,
    )
    collator = make_collator(backbone.tokenizer, backbone.kind)
    batches = []
    for step in range(steps):
        rows = sampler.batch_at(step)
        batch = collator(dataset[rows.tolist()])
        batch["noise_keys"] = example_noise_keys(cfg.seed, step, torch.arange(len(rows)))
        batches.append(batch)
    optimizer = build_optimizer(model, optim)
    scheduler = build_scheduler(optimizer, optim, steps)
    model.train()
    start = time.perf_counter()
    for batch in batches:
        labels = batch["labels"]
        with use_tasks(model, batch["task_ids"], noise_keys=batch["noise_keys"]):
            logits = model(
                input_ids=batch["input_ids"],
                attention_mask=batch["attention_mask"],
                decoder_input_ids=model.prepare_decoder_input_ids_from_labels(labels=labels),
            ).logits
            loss = torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100, reduction="sum"
            )
            (loss / (labels != -100).sum()).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), trainer.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        scheduler.step()
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (trainer.cpu_threads)")
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    args = parser.parse_args()
    os.environ.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", WANDB_MODE="disabled")
    if not os.environ.get("CPOLY_DATA_DIR") and (ROOT.parent / "shared" / "data").is_dir():
        os.environ["CPOLY_DATA_DIR"] = str(ROOT.parent / "shared" / "data")
    torch.set_num_threads(args.threads)
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for name in args.settings:
            for workers in args.workers:
                overrides = [
                    *SETTINGS[name],
                    *COMMON,
                    f"trainer.max_steps={args.steps}",
                    f"trainer.eval_every={args.steps}",
                    f"trainer.cpu_threads={args.threads}",
                    f"trainer.num_workers={workers}",
                ]
                loop, bare = [], []
                for i in range(args.repeats):
                    loop.append(train_seconds_per_step(overrides, Path(scratch) / f"{name}-{workers}-{i}"))
                    bare.append(bare_seconds_per_step(overrides, args.steps))
                rows.append((name, workers, loop, bare))
                print(f"{name} workers={workers}: train.py {loop} bare {bare}", flush=True)
    print(f"\n{args.steps} steps of tiny_t5, {args.threads} torch thread(s), median of {args.repeats} alternating runs")
    print(f"{'setting':>10s} {'workers':>7s} {'train.py s/step':>15s} {'bare s/step':>11s} {'ratio':>6s}")
    for name, workers, loop, bare in rows:
        a, b = statistics.median(loop), statistics.median(bare)
        print(f"{name:>10s} {workers:7d} {a:15.4f} {b:11.4f} {a / b:6.3f}")


if __name__ == "__main__":
    main()
