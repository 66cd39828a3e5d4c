"""The real-weights comparison: methods on SuperGLUE's short tasks with MiniLM, each method's learning rate
chosen on the dev split from one grid, then more seeds at the chosen rate; test scores with 95% CIs and
paired tests against the baseline (cpoly), printed as the report's tables and saved as CSV.

    python benchmarks/superglue_compare.py                    # GPU (CUDA): the full size; tiny without CUDA
    python benchmarks/superglue_compare.py --size cpu         # the CPU comparison of docs/real_weights.md
    MODE=superglue bash benchmarks/gpu_check.sh               # on the GPU machine, from the bundle

Procedure (the same at every size; docs/real_weights.md):
1. the lr grid: every method at every `--lrs` value, first seed, one `train.py -m` process
   (experiments/superglue_short-minilm.yaml plus the size's overrides); each run picks best/ on
   dev/avg/score, scored every `eval_every` steps;
2. selection: each method's lr is the one with the highest best dev/avg/score (ties: the first in the
   grid's order); the test split is never read;
3. the other seeds at each method's chosen lr, one `train.py -m` process per method;
4. `python -m cpoly.report` on the chosen runs (first seed from the grid): test scores at best/ (chosen on
   dev), mean, 95% CI, paired t-tests against the baseline method; `comparison.csv` (the report's CSV),
   `lr_selection.csv` (the grid's dev scores), `comparison.md` in the output folder, and in $OUT when that
   folder exists (the device machine's return folder).

Runs already finished in the output folder are reused (an interrupted comparison continues); their
steps and batch size must match. Sizes (`--size`): gpu (1,500 steps of 32, dev every 250), cpu (the experiment's
400 steps of 8, dev every 100, one thread) and tiny (MiniLM cut to one layer, 16 training / 4 dev / 8
test examples per task, 4 steps of 4, prompts of 32 tokens: the same path in about a minute on a CPU).
`--bundle DIR` takes MiniLM and SuperGLUE from the GPU bundle (benchmarks/gpu_bundle.py); extra train.py
overrides follow `--`.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import math
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # cpoly from this checkout, installed or not
    sys.path.insert(0, str(ROOT))
EXPERIMENT = "superglue_short-minilm"
METHODS = ("shared_lora", "task_lora", "poly", "mhr", "cpoly", "mtl_lora")
LRS = (1e-3, 3e-3, 1e-2)
SELECTION_METRIC = "dev/avg/score"


@dataclass
class Size:
    steps: int
    batch: int
    eval_every: int
    overrides: list[str] = field(default_factory=list)


SIZES = {
    "gpu": Size(1500, 32, 250),
    "cpu": Size(400, 8, 100, ["trainer.cpu_threads=1"]),
    "tiny": Size(4, 4, 2, [
        "+backbone.model_overrides.num_hidden_layers=1",  # a key minilm.yaml does not have
        "benchmark.n_train_per_task=20",  # 4 of them are the dev split
        "benchmark.n_dev_per_task=4",
        "benchmark.n_eval_per_task=8",
        "backbone.max_source_length=32",
        "trainer.eval_batch_size=16",
        "trainer.cpu_threads=1",
    ]),
}  # fmt: skip


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=sorted(SIZES), help="default: gpu with CUDA, tiny without")
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated (default: %(default)s)")
    parser.add_argument("--lrs", default=",".join(f"{lr:g}" for lr in LRS), help="the grid (default: %(default)s)")
    parser.add_argument("--seeds", default="1,2,3", help="the first picks the lr (default: %(default)s)")
    parser.add_argument("--baseline", default="cpoly", help="the method the others are tested against")
    parser.add_argument("--steps", type=int, help="the size's unless given")
    parser.add_argument("--batch", type=int, help="the size's unless given")
    parser.add_argument("--eval-every", type=int, help="the size's unless given")
    parser.add_argument("--bundle", type=Path, help="take MiniLM (minilm/) and SuperGLUE (data/) from this bundle")
    parser.add_argument("--out", type=Path, help="default: logs/superglue_compare/<size>-<time>")
    parser.add_argument("extra", nargs="*", help="train.py overrides for every run (after --)")
    args = parser.parse_args(argv)
    try:
        args.methods = [m for m in args.methods.split(",") if m]
        args.lrs = [float(v) for v in args.lrs.split(",") if v]
        args.seeds = [int(v) for v in args.seeds.split(",") if v]
    except ValueError as error:
        parser.error(f"--lrs/--seeds: {error}")
    if not args.methods or not args.lrs or not args.seeds or len(set(args.seeds)) != len(args.seeds):
        parser.error("--methods, --lrs and --seeds need at least one value each (distinct seeds)")
    known = {p.stem for p in (ROOT / "conf" / "method").glob("*.yaml")}
    unknown = [m for m in args.methods if m not in known]
    if unknown:
        parser.error(f"--methods: unknown {unknown}; known: {', '.join(sorted(known))}")
    return args


def base_overrides(args: argparse.Namespace, size: Size) -> list[str]:
    out = [
        f"experiment={EXPERIMENT}",
        f"trainer.max_steps={args.steps or size.steps}",
        f"trainer.batch_size={args.batch or size.batch}",
        f"trainer.eval_every={args.eval_every or size.eval_every}",
        "trainer.progress_bar=false",
        "logger=none",
        "task_name=superglue_compare",
        *size.overrides,
    ]
    if args.bundle is not None:
        bundle = args.bundle.resolve()
        out += [f"backbone.package_dir={bundle / 'minilm'}", f"paths.data_dir={bundle / 'data'}"]
    return out + list(args.extra)


def check_bundle(bundle: Path) -> None:
    needed = [bundle / "minilm" / "config.json", bundle / "minilm" / "model.safetensors"]
    needed += [bundle / "data" / "superglue" / task for task in ("CB", "COPA", "RTE", "WiC", "WSC")]
    missing = [str(p) for p in needed if not p.exists()]
    if missing:
        raise SystemExit(f"superglue_compare: the bundle lacks {', '.join(missing)}: rebuild it with `make gpu-bundle`")


def run_multirun(overrides: list[str], sweep_dir: Path, log_path: Path) -> None:
    """One `train.py -m` process (Hydra runs its jobs one after the other); a failure shows the log's end."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", WANDB_MODE="disabled",
               TRANSFORMERS_NO_ADVISORY_WARNINGS="1", TOKENIZERS_PARALLELISM="false")  # fmt: skip
    command = [sys.executable, str(ROOT / "train.py"), "-m", *overrides, f"hydra.sweep.dir={sweep_dir}"]
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("a") as log:
        log.write(shlex.join(command) + "\n")
        log.flush()
        code = subprocess.run(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT).returncode
    if code != 0:
        tail = "\n".join(log_path.read_text().splitlines()[-25:])
        raise SystemExit(f"{tail}\nsuperglue_compare: train.py exited with {code}; its output: {log_path}")


@dataclass
class Run:
    path: Path
    method: str
    lr: float
    seed: int
    steps: int
    dev: float  # the best dev/avg/score (what picked best/)
    results: dict


def finished_runs(folder: Path) -> list[Run]:
    """Every finished run below `folder`, with its method, lr and seed from config_resolved.yaml."""
    import yaml

    runs = []
    for results_path in sorted(folder.rglob("results.json")):
        results = json.loads(results_path.read_text())
        config_path = results_path.parent / "config_resolved.yaml"
        if results.get("status") != "finished" or not config_path.is_file():
            continue
        config = yaml.safe_load(config_path.read_text())
        selection = results.get("selection") or {}
        if selection.get("metric") != SELECTION_METRIC:
            raise SystemExit(f"{results_path}: best/ was chosen on {selection.get('metric')!r}, not {SELECTION_METRIC}")
        runs.append(Run(results_path.parent, config["method"]["name"], float(config["optim"]["lr"]),
                        int(config["seed"]), int(results["steps"]), float(selection["value"]), results))  # fmt: skip
    return runs


def find(runs: list[Run], method: str, lr: float, seed: int, steps: int, batch: int) -> Run | None:
    hits = [r for r in runs if r.method == method and math.isclose(r.lr, lr) and r.seed == seed]
    for r in hits:
        if (r.steps, r.results["global_batch_size"]) != (steps, batch):
            raise SystemExit(f"{r.path}: {r.steps} steps of {r.results['global_batch_size']}, not this comparison's "
                             f"{steps} of {batch}: use another --out")  # fmt: skip
    return hits[-1] if hits else None


def choose_lrs(runs: list[Run], methods: list[str], lrs: list[float], seed: int, steps: int, batch: int) -> dict:
    chosen = {}
    for method in methods:
        scores = [(find(runs, method, lr, seed, steps, batch).dev, -i, lr) for i, lr in enumerate(lrs)]
        chosen[method] = max(scores)[2]
    return chosen


def selection_table(runs, methods, lrs, seed, steps, batch, chosen) -> tuple[str, list[dict]]:
    head = ["method", *(f"lr={lr:g}" for lr in lrs), "chosen lr"]
    lines = ["| " + " | ".join(head) + " |", "|:---|" + "---:|" * (len(head) - 1)]
    rows = []
    for method in methods:
        cells = []
        for lr in lrs:
            run = find(runs, method, lr, seed, steps, batch)
            mark = " *" if math.isclose(lr, chosen[method]) else ""
            cells.append(f"{run.dev:.2f}{mark}")
            rows.append({"method": method, "lr": lr, "seed": seed, "steps": steps, SELECTION_METRIC: run.dev,
                         "best_step": run.results["selection"]["step"], "chosen": math.isclose(lr, chosen[method]),
                         "test_majority_class_score": run.results["majority_baseline"]["avg"]["score"],
                         "wall_time_s": run.results.get("wall_time_s"),
                         "git_sha": run.results.get("git_sha")})  # fmt: skip
        lines.append("| " + " | ".join([method, *cells, f"{chosen[method]:g}"]) + " |")
    return "\n".join(lines), rows


def report(paths: list[Path], *argv: str) -> str:
    """`python -m cpoly.report` in this process; its stdout (a failure raises with its stderr)."""
    from cpoly.report import main as report_main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = report_main([*map(str, paths), *argv])
    if code != 0:
        raise SystemExit(f"cpoly.report exited with {code}: {err.getvalue().strip()}")
    return out.getvalue()


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    import torch

    cuda = torch.cuda.is_available()
    size_name = args.size or ("gpu" if cuda else "tiny")
    size = SIZES[size_name]
    steps, batch = args.steps or size.steps, args.batch or size.batch
    if args.bundle is not None:
        check_bundle(args.bundle.resolve())
    out = (args.out or ROOT / "logs" / "superglue_compare" / f"{size_name}-{time.strftime('%Y%m%d-%H%M%S')}").resolve()
    base = base_overrides(args, size)
    device = torch.cuda.get_device_name() if cuda else "CPU"
    print(f"superglue_compare on {device}, size {size_name}: {', '.join(args.methods)}; lr grid "
          f"{', '.join(f'{lr:g}' for lr in args.lrs)} at seed {args.seeds[0]}, then seeds {args.seeds[1:]}; "
          f"{steps} steps of {batch}; runs in {out}", flush=True)  # fmt: skip
    start = time.perf_counter()

    # 1. the lr grid, first seed (finished runs are reused)
    first = args.seeds[0]
    runs = finished_runs(out)
    missing = [(m, lr) for m in args.methods for lr in args.lrs if find(runs, m, lr, first, steps, batch) is None]
    if missing:
        methods = sorted({m for m, _ in missing}, key=args.methods.index)
        lrs = sorted({lr for _, lr in missing}, key=args.lrs.index)
        t0 = time.perf_counter()
        grid = [f"method={','.join(methods)}", f"optim.lr={','.join(f'{v:g}' for v in lrs)}", f"seed={first}"]
        run_multirun([*base, *grid], out / "grid" / f"part-{time.strftime('%H%M%S')}", out / "logs" / "grid.log")
        print(f"lr grid: {len(methods) * len(lrs)} runs in {time.perf_counter() - t0:.0f} s", flush=True)
        runs = finished_runs(out)
    chosen = choose_lrs(runs, args.methods, args.lrs, first, steps, batch)
    table, rows = selection_table(runs, args.methods, args.lrs, first, steps, batch, chosen)
    print(f"\nbest {SELECTION_METRIC} at seed {first} (* chosen):\n{table}\n", flush=True)

    # 2. the other seeds at each method's chosen lr
    for method in args.methods:
        todo = [s for s in args.seeds[1:] if find(runs, method, chosen[method], s, steps, batch) is None]
        if todo:
            t0 = time.perf_counter()
            arm = [f"method={method}", f"optim.lr={chosen[method]:g}", f"seed={','.join(map(str, todo))}"]
            sweep = out / "seeds" / f"{method}-{time.strftime('%H%M%S')}"
            run_multirun([*base, *arm], sweep, out / "logs" / f"{method}.log")
            print(f"{method} at lr {chosen[method]:g}: seeds {todo} in {time.perf_counter() - t0:.0f} s", flush=True)
            runs = finished_runs(out)

    # 3. the report on the chosen runs
    final = [find(runs, m, chosen[m], s, steps, batch) for m in args.methods for s in args.seeds]
    paths = [r.path for r in final]
    baseline = [r.results["group"] for r in final if r.method == args.baseline]
    compare = ["--baseline", baseline[0]] if baseline else []
    text = report(paths, "--which", "best", *compare)
    majority = final[0].results["majority_baseline"]["avg"]["score"]
    seconds = time.perf_counter() - start
    train_s = sum(r.results.get("wall_time_s") or 0 for r in runs)
    footer = (f"test split at best/ (chosen on {SELECTION_METRIC}); majority class {majority:.2f}; {steps} steps of "
              f"{batch}; {len(runs)} runs, their wall time {train_s:.0f} s; this command {seconds:.0f} s")  # fmt: skip
    print(text + "\n" + footer, flush=True)

    csv_text = report(paths, "--which", "best", "--format", "csv", *compare)
    (out / "comparison.csv").write_text(csv_text)
    with (out / "lr_selection.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    markdown = f"best {SELECTION_METRIC} at seed {first} (* chosen):\n\n{table}\n\n{text}\n{footer}\n"
    (out / "comparison.md").write_text(markdown)
    print(f"saved: {out / 'comparison.csv'}, {out / 'lr_selection.csv'}, {out / 'comparison.md'}")
    target = os.environ.get("OUT")  # the device machine's return folder, when there is one
    if target and Path(target).is_dir():
        for name in ("comparison.csv", "lr_selection.csv", "comparison.md"):
            (Path(target) / name).write_text((out / name).read_text())


if __name__ == "__main__":
    main()
