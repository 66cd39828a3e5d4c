"""Kill -9 soak: SIGKILL a training run at random moments, restart the same command until it finishes, and
compare the finished run with an uninterrupted one (final metrics equal, `metrics.jsonl` equal but for
times, adapter files byte-identical).

Each kill picks a phase in turn and waits for it in the run folder:
- startup: a random moment before the first training step is logged;
- train: a random moment after it;
- eval: as soon as a step that evaluates has logged its loss (evaluation then runs);
- checkpoint: as soon as a checkpoint is being written (a `.last.*.tmp` / `.best.*.tmp` folder exists).
A phase the run does not reach in time falls back to a random moment. The process group is killed, so
DataLoader workers die with the run, as on a machine that goes down.

    python scripts/kill_soak.py --kills 20                         # the closing note's soak
    python scripts/kill_soak.py --kills 3 --steps 40 --seed 1      # what the test suite runs
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PHASES = ("startup", "train", "eval", "checkpoint")


def command(out: Path, steps: int, extra: list[str], eval_every: int) -> list[str]:
    return [
        sys.executable,
        str(ROOT / "train.py"),
        "backbone=tiny_t5",
        "logger=none",
        "benchmark.n_tasks=4",
        "benchmark.n_train_per_task=40",
        "benchmark.n_eval_per_task=4",
        f"trainer.max_steps={steps}",
        f"trainer.eval_every={eval_every}",
        "trainer.save_every=3",
        "trainer.log_every=1",
        "trainer.progress_bar=false",
        "trainer.cpu_threads=1",
        f"hydra.run.dir={out}",
        *extra,
    ]


def environment() -> dict[str, str]:
    return dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", WANDB_MODE="disabled", OMP_NUM_THREADS="1")


def logged_steps(out: Path) -> list[dict]:
    rows = []
    path = out / "metrics.jsonl"
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:  # a line being written
                pass
    return rows


def in_phase(phase: str, out: Path, eval_every: int, started_rows: int) -> bool:
    if phase == "checkpoint":
        return any(out.glob(".last.*.tmp")) or any(out.glob(".best.*.tmp"))
    rows = logged_steps(out)[started_rows:]
    if phase == "eval":
        steps = [r.get("train/step") for r in rows if "train/loss" in r]
        return bool(steps) and steps[-1] % eval_every == 0 and not any("dev/avg" in str(r) for r in rows[-1:])
    return False


def run_until_killed(cmd: list[str], out: Path, phase: str, rng: random.Random, eval_every: int, startup: float):
    """Start the command and SIGKILL its process group in `phase` (module docstring); returns (the exit
    code, or None if killed; what the kill hit, or the failed run's stderr)."""
    before = len(logged_steps(out))
    process = subprocess.Popen(
        cmd, cwd=ROOT, env=environment(), start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    began = time.monotonic()
    delay = rng.uniform(0.2, 0.95 * startup) if phase == "startup" else rng.uniform(0.0, 1.5)
    first_step = None
    hit = None
    while process.poll() is None and hit is None:
        now = time.monotonic()
        if first_step is None and logged_steps(out)[before:]:
            first_step = now
        if phase == "startup" and now - began >= delay:
            hit = "startup" if first_step is None else "train"
        elif phase == "train" and first_step is not None and now - first_step >= delay:
            hit = "train"
        elif phase in ("eval", "checkpoint") and in_phase(phase, out, eval_every, before):
            hit = phase
        elif now - began > 4 * startup + 60:  # the phase never came: now
            hit = "random"
        else:
            time.sleep(0.002)
    if hit is None:  # it ended on its own
        return process.returncode, process.stderr.read().decode(errors="replace")
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    return None, hit


def compare(a: Path, b: Path) -> list[str]:
    """What differs between two finished run folders (empty: identical)."""
    problems = []
    ra, rb = (json.loads((d / "results.json").read_text()) for d in (a, b))
    for key in ("dev", "test", "selection", "steps"):
        if ra[key] != rb[key]:
            problems.append(f"results.json {key}: {ra[key]} != {rb[key]}")
    strip = lambda rows: [{k: v for k, v in r.items() if k != "time"} for r in rows]  # noqa: E731
    if strip(logged_steps(a)) != strip(logged_steps(b)):
        problems.append("metrics.jsonl differs")
    for name in ("last", "best"):
        fa, fb = a / name / "adapter_model.safetensors", b / name / "adapter_model.safetensors"
        if fa.read_bytes() != fb.read_bytes():
            problems.append(f"{name}/adapter_model.safetensors differs")
    return problems


def soak(
    kills: int, steps: int, seed: int, scratch: Path, extra: list[str] = (), eval_every: int | None = None
) -> dict:
    eval_every = eval_every or max(steps // 10, 1)
    rng = random.Random(seed)
    reference, victim = scratch / "uninterrupted", scratch / "killed"
    wall_started = time.time()
    done = subprocess.run(
        command(reference, steps, list(extra), eval_every), cwd=ROOT, env=environment(), capture_output=True, text=True
    )
    if done.returncode:
        raise RuntimeError(f"the uninterrupted run failed:\n{done.stderr[-3000:]}")
    first = next(r["time"] for r in logged_steps(reference) if "train/loss" in r)
    startup = max(first - wall_started, 1.0)  # launch -> first step: where startup kills land
    hits: list[str] = []
    restarts = 0
    while len(hits) < kills:
        phase = PHASES[len(hits) % len(PHASES)]
        code, what = run_until_killed(
            command(victim, steps, list(extra), eval_every), victim, phase, rng, eval_every, startup
        )
        restarts += 1
        if code is None:
            hits.append(what)
        elif code == 0:  # it finished before this kill came: fewer kills than asked, reported as such
            break
        else:
            raise RuntimeError(f"a restart failed (exit {code}):\n{what[-3000:]}")
    else:  # the last restart runs to the end
        finished = subprocess.run(
            command(victim, steps, list(extra), eval_every), cwd=ROOT, env=environment(), capture_output=True, text=True
        )
        restarts += 1
        if finished.returncode:
            raise RuntimeError(f"the last restart failed (exit {finished.returncode}):\n{finished.stderr[-3000:]}")
    problems = compare(reference, victim)
    return {"kills": hits, "restarts": restarts, "identical": not problems, "problems": problems}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eval-every", type=int, default=None, help="default: a tenth of the steps")
    parser.add_argument("--keep", type=Path, default=None, help="keep the two run folders here")
    parser.add_argument("overrides", nargs="*", help="extra train.py overrides (e.g. method=poly)")
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="kill_soak-"))
    try:
        report = soak(args.kills, args.steps, args.seed, scratch, args.overrides, args.eval_every)
    finally:
        if args.keep:
            shutil.copytree(scratch, args.keep, dirs_exist_ok=True, symlinks=True)
        shutil.rmtree(scratch, ignore_errors=True)
    counts = ", ".join(f"{p} {report['kills'].count(p)}" for p in sorted(set(report["kills"])))
    print(f"kills: {len(report['kills'])} ({counts}); restarts {report['restarts']}")
    print(
        "identical to the uninterrupted run" if report["identical"] else "DIFFERENT: " + "; ".join(report["problems"])
    )
    sys.exit(0 if report["identical"] else 1)


if __name__ == "__main__":
    main()
