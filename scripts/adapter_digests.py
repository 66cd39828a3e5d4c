"""The same config gives the same adapters: train every method on the default (few steps) and print the
sha256 of each run's saved adapter weights (last/ and best/), one line per method.

    python scripts/adapter_digests.py [--steps 30] [--out logs/digests] [--methods cpoly,poly]

Run it on two commits and diff the output: a refactor that keeps behaviour prints the same lines.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def digest(folder: Path) -> str:
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise SystemExit(f"adapter_digests: no *.safetensors in {folder}")
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode() + f.read_bytes())
    return h.hexdigest()[:16]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--out", default="logs/digests")
    parser.add_argument("--methods", default=None, help="comma-separated; default: every registered method")
    args = parser.parse_args()
    if args.methods is None:
        sys.path.insert(0, str(ROOT))
        from cpoly.skills import METHODS

        methods = list(METHODS)
    else:
        methods = args.methods.split(",")
    out = Path(args.out).resolve()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "WANDB_MODE": "disabled"}
    for method in methods:
        run_dir = out / method
        overrides = [
            f"method={method}", "logger=none", f"trainer.max_steps={args.steps}", f"trainer.eval_every={args.steps}",
            "trainer.max_eval_per_task=2", "trainer.progress_bar=false", f"hydra.run.dir={run_dir}", "resume=never",
        ]  # fmt: skip
        subprocess.run([sys.executable, str(ROOT / "train.py"), *overrides], check=True, env=env, cwd=ROOT,
                       stdout=subprocess.DEVNULL)  # fmt: skip
        print(method, "last", digest(run_dir / "last"), "best", digest(run_dir / "best"), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
