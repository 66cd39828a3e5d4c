"""Data pipeline speed on SuperNI (100 tasks x 1,100 instances, tiny_t5's byte tokenizer):

1. launch -> first training step, with an empty tokenisation cache (cold) and with the cache the cold run
   left (warm), each a fresh `python train.py` process; the warm/cold ratio is what the cache buys;
2. the padding fraction of training batches with and without length grouping (same sampler otherwise).

    CPOLY_DATA_DIR=../shared/data python benchmarks/data_speed.py [--repeats 2] [--batches 500]
"""

from __future__ import annotations

import argparse
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


def padding_fractions(cache_dir: Path, n_batches: int, batch_size: int) -> tuple[float, float]:
    from hydra import compose, initialize_config_dir

    from cpoly.backbones import load_backbone
    from cpoly.config import register_configs
    from cpoly.data import load_benchmark
    from cpoly.data.sampling import MultiTaskBatchSampler, padding_fraction
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
    fractions = []
    for grouped in (False, True):
        sampler = MultiTaskBatchSampler(
            tasks=tasks, lengths=lengths, batch_size=batch_size, group_by_length=grouped, seed=1
        )
        batches = [b for b, _ in zip(sampler, range(n_batches), strict=False)]
        fractions.append(padding_fraction(batches, lengths))
    return fractions[0], fractions[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2, help="cold/warm pairs")
    parser.add_argument("--batches", type=int, default=500)
    parser.add_argument("--batch-size", type=int, default=8)
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
        no_grouping, grouping = padding_fractions(Path(scratch) / "cache0", args.batches, args.batch_size)
    c, w = statistics.median(cold), statistics.median(warm)
    print("SuperNI 100 tasks x 1,100 instances, tiny_t5 (bytes, source <= 1024, target <= 128)")
    print(f"launch -> first training step, cold cache: {c:6.1f} s  (runs: {', '.join(f'{x:.1f}' for x in cold)})")
    print(f"launch -> first training step, warm cache: {w:6.1f} s  (runs: {', '.join(f'{x:.1f}' for x in warm)})")
    print(f"warm / cold = {w / c:.3f}")
    print(f"padding fraction of {args.batches} training batches of {args.batch_size}:")
    print(f"  without length grouping: {no_grouping:.3f}")
    print(f"  with length grouping:    {grouping:.3f}   (ratio {grouping / no_grouping:.3f})")


if __name__ == "__main__":
    main()
