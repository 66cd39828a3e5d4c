"""A result does not depend on how its global batch is split: for every method, `1 process x batch 8`,
`grad_accum 4 x batch 2` and `torchrun 2 processes x batch 4` end with the same adapters and log the
same losses after 20 steps.

That needs (and so tests) the loss normalised once over the whole step's target tokens, routing noise
keyed by each example's position in the global batch rather than drawn by whichever process or
micro-batch holds it, and the same examples in every split. The runs are in float64 with backbone
dropout off: in float32, rounding differences between the splits (different summation orders and
padded shapes), amplified by AdamW at the router lr of 0.1, reach ~1e-5 on the allocation logits
within 20 steps; in float64 any real difference shows (measured: <= 1e-13).

`python tests/test_batch_splits.py [--dtype float32]` prints the table of the closing note.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers.compose import compose_train
from helpers.entrypoint import TORCHRUN, train_py
from safetensors.torch import load_file

from cpoly.logging import read_metrics
from cpoly.run import train
from cpoly.skills import METHODS

STEPS = 20
COMMON = [
    "debug=smoke",
    "benchmark.n_tasks=4",
    "benchmark.n_train_per_task=40",
    "benchmark.n_eval_per_task=2",
    f"trainer.max_steps={STEPS}",
    "trainer.log_every=1",
    f"trainer.eval_every={STEPS}",
    "backbone.dropout=0",
    # mixlora's load-balancing loss balances each micro-batch's (each process's) own tokens, as Mixtral's and
    # MixLoRA's do: with a coefficient it depends on the split by design (docs/methods.md); without, token
    # routing must not
    "method.aux_loss_coef=0",
]
SPLITS = {"1x8": ["trainer.batch_size=8"], "4x2": ["trainer.batch_size=2", "trainer.grad_accum=4"]}


def two_process_runs(out: Path, cache: Path, dtype: str) -> Path:
    """All nine methods as one Hydra multirun under torchrun (2 gloo processes of batch 4)."""
    done = train_py(
        "-m",
        f"method={','.join(METHODS)}",
        *COMMON,
        f"backbone.dtype={dtype}",
        "trainer.batch_size=4",
        f"hydra.sweep.dir={out}",
        "hydra.sweep.subdir=${method.name}",
        launcher=[*TORCHRUN, "--master_port", "29541"],
        cache_dir=cache,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return out


def one_process_run(method: str, split: str, out: Path, cache: Path, dtype: str) -> Path:
    train(compose_train([*COMMON, f"backbone.dtype={dtype}", f"method={method}", *SPLITS[split]], out, cache))
    return out


def compare(a: Path, b: Path) -> tuple[float, float]:
    """(max abs difference of the final adapters, max relative difference of the logged losses)."""
    ta, tb = (load_file(str(d / "last" / "adapter_model.safetensors")) for d in (a, b))
    assert ta.keys() == tb.keys()
    la, lb = ([r["train/loss"] for r in read_metrics(d / "metrics.jsonl") if "train/loss" in r] for d in (a, b))
    assert len(la) == len(lb) == STEPS
    adapters = max((ta[k].double() - tb[k].double()).abs().max().item() for k in ta)
    losses = max(abs(x - y) / abs(x) for x, y in zip(la, lb, strict=True))
    return adapters, losses


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory, cache) -> Path:
    return two_process_runs(tmp_path_factory.mktemp("ddp"), cache, "float64")


@pytest.mark.slow
@pytest.mark.parametrize("method", METHODS)
def test_the_global_batch_split_does_not_change_the_result(method, two_processes, tmp_path, cache):
    runs = {split: one_process_run(method, split, tmp_path / split, cache, "float64") for split in SPLITS}
    runs["2x4"] = two_processes / method
    results = {split: json.loads((d / "results.json").read_text()) for split, d in runs.items()}
    assert [results[s]["world_size"] for s in ("1x8", "4x2", "2x4")] == [1, 1, 2]
    assert {r["global_batch_size"] for r in results.values()} == {8}
    assert len({r["batches"]["tasks_per_batch"] for r in results.values()}) == 1  # the same global batches
    for split in ("4x2", "2x4"):
        adapters, losses = compare(runs["1x8"], runs[split])
        assert adapters <= 1e-10, (split, adapters)
        assert losses <= 1e-10, (split, losses)


def main() -> None:
    """The closing note's table: max adapter and loss differences against 1 x 8, for every method."""
    import argparse
    import tempfile

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    args = parser.parse_args()
    rows = {}
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        ddp = two_process_runs(root / "ddp", root / "cache", args.dtype)
        for method in METHODS:
            one = one_process_run(method, "1x8", root / method / "1x8", root / "cache", args.dtype)
            accumulated = one_process_run(method, "4x2", root / method / "4x2", root / "cache", args.dtype)
            rows[method] = [*compare(one, accumulated), *compare(one, ddp / method)]
    print(f"\n{STEPS} steps, global batch 8, {args.dtype}, dropout off: differences against 1 process x batch 8")
    print(f"{'method':12s} {'4x2 adapters':>13s} {'4x2 loss':>10s} {'2x4 adapters':>13s} {'2x4 loss':>10s}")
    for method, row in rows.items():
        print(f"{method:12s} {row[0]:13.2e} {row[1]:10.2e} {row[2]:13.2e} {row[3]:10.2e}")


if __name__ == "__main__":
    main()
