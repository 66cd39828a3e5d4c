"""Data pipeline speed on SuperNI (100 tasks x 1,100 instances, tiny_t5's byte tokenizer):

1. launch -> first training step, with an empty tokenisation cache (cold) and with the cache the cold run
   left (warm), each a fresh `python train.py` process; the warm/cold ratio is what the cache buys;
2. the training batches with and without length grouping (same sampler otherwise), at batch sizes 8
   and 32: the mean number of distinct tasks per batch (against the exact expectation for random
   batches) and the padding fraction of the inputs.

    CPOLY_DATA_DIR=../shared/data python benchmarks/data_speed.py [--repeats 2] [--batches 500]
    CPOLY_DATA_DIR=../shared/data python benchmarks/data_speed.py --repeats 0   # the batches only
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SETTING = [
    "benchmark=superni",
    "backbone=tiny_t5",
    "benchmark.n_tasks=100",
    "benchmark.n_train_per_task=1000",
    "benchmark.n_eval_per_task=100",
    "backbone.max_source_length=1024",
    "backbone.max_target_length=128",
]


def launch_to_first_step(cache_dir: Path, output_dir: Path) -> float:
    """Seconds from starting `python train.py` to the first logged training step."""
    env = dict(
        os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", WANDB_MODE="disabled", CPOLY_CACHE_DIR=str(cache_dir)
    )
    command = [
        sys.executable,
        str(ROOT / "train.py"),
        *SETTING,
        "logger=none",
        "trainer.max_steps=1",
        "trainer.log_every=1",
        "trainer.max_eval_per_task=1",
        "trainer.progress_bar=false",
        f"hydra.run.dir={output_dir}",
    ]
    start = time.time()
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"train.py failed:\n{done.stderr[-3000:]}")
    rows = [json.loads(line) for line in (output_dir / "metrics.jsonl").read_text().splitlines()]
    first_step = next(r["time"] for r in rows if "train/loss" in r)
    return first_step - start


def batch_mix(cache_dir: Path, n_batches: int, batch_sizes: list[int]) -> dict[tuple[int, bool], tuple[float, float]]:
    """(distinct tasks per batch, padding fraction) for each batch size, without and with grouping."""
    from hydra import compose, initialize_config_dir

    from cpoly.backbones import load_backbone
    from cpoly.config import register_configs
    from cpoly.data import load_benchmark
    from cpoly.data.sampling import MultiTaskBatchSampler, distinct_tasks, padding_fraction
    from cpoly.data.tokenize import tokenize_examples

    register_configs()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=[*SETTING, "paths.output_dir=unused"])
    data = load_benchmark(cfg.benchmark, cfg.paths.data_dir)
    backbone = load_backbone(cfg.backbone, cache_dir=cache_dir)
    split = tokenize_examples(
        data.train,
        backbone.tokenizer,
        kind=backbone.kind,
        max_source_length=cfg.backbone.max_source_length,
        max_target_length=cfg.backbone.max_target_length,
        task_to_id=data.task_names,
        cache_dir=cache_dir / "tokenized",
    )
    tasks, lengths = split.dataset["task_id"], split.dataset["length"]
    results = {}
    for batch_size in batch_sizes:
        for grouped in (False, True):
            sampler = MultiTaskBatchSampler(
                tasks=tasks,
                lengths=lengths,
                batch_size=batch_size,
                group_by_length=grouped,
                min_task_mix=cfg.trainer.min_task_mix,
                seed=1,
            )
            batches = list(itertools.islice(sampler.global_batches(), n_batches))
            results[batch_size, grouped] = (distinct_tasks(batches, tasks), padding_fraction(batches, lengths))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2, help="cold/warm pairs (0: only the batches)")
    parser.add_argument("--batches", type=int, default=500)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[8, 32])
    args = parser.parse_args()
    if not os.environ.get("CPOLY_DATA_DIR"):
        shared = ROOT.parent / "shared" / "data"
        if shared.is_dir():
            os.environ["CPOLY_DATA_DIR"] = str(shared)
    cold, warm = [], []
    with tempfile.TemporaryDirectory() as scratch:
        for i in range(args.repeats):
            cache = Path(scratch) / f"cache{i}"
            cold.append(launch_to_first_step(cache, Path(scratch) / f"cold{i}"))
            warm.append(launch_to_first_step(cache, Path(scratch) / f"warm{i}"))
        mix = batch_mix(Path(scratch) / "cache0", args.batches, args.batch_sizes)
    print("SuperNI 100 tasks x 1,100 instances, tiny_t5 (bytes, source <= 1024, target <= 128)")
    if args.repeats:
        c, w = statistics.median(cold), statistics.median(warm)
        print(f"launch -> first training step, cold cache: {c:6.1f} s  (runs: {', '.join(f'{x:.1f}' for x in cold)})")
        print(f"launch -> first training step, warm cache: {w:6.1f} s  (runs: {', '.join(f'{x:.1f}' for x in warm)})")
        print(f"warm / cold = {w / c:.3f}")
    print(f"{args.batches} training batches per row (trainer.min_task_mix as configured):")
    print(f"  {'batch':>5s} {'grouping':>8s} {'tasks/batch':>11s} {'x random':>8s} {'padding':>8s} {'x random':>8s}")
    for batch_size in args.batch_sizes:
        random_tasks, random_padding = mix[batch_size, False]
        for grouped in (False, True):
            tasks, padding = mix[batch_size, grouped]
            print(
                f"  {batch_size:5d} {'on' if grouped else 'off':>8s} {tasks:11.2f} {tasks / random_tasks:8.3f} "
                f"{padding:8.3f} {padding / random_padding:8.3f}"
            )


if __name__ == "__main__":
    main()
