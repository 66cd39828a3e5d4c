"""`train.py` with Accelerate's FSDP2 on CPU processes: a test shim, run under torchrun (gloo).

Accelerate 1.15 turns `ACCELERATE_USE_FSDP=true` into FSDP only on accelerator devices; CPU processes
get MULTI_CPU (DDP), which `cpoly.train.launch` reports as an error. This shim builds the Accelerator as
`train.py` does, then sets its state to FSDP with the plugin read from the FSDP_* environment (as
`accelerate launch --config_file conf/accelerate/fsdp.yaml` sets it); from there Accelerate's own FSDP2
code runs unchanged: `fully_shard` over gloo, `set_requires_gradient_sync` for `no_sync`, DTensor
gradient clipping. Usage: `torchrun --nproc_per_node 2 tests/helpers/fsdp_on_cpu.py <train.py overrides>`.
With CPOLY_TEST_STOP_AFTER_CHECKPOINT=1 every process stops (exit 1) after the first evaluation's
checkpoints, as a killed job would.
"""

from __future__ import annotations

import os
import runpy
import sys
from pathlib import Path

from accelerate import PartialState
from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

import cpoly.run
from cpoly.train.loop import TrainLoop

REPO_ROOT = Path(__file__).resolve().parents[2]
make_accelerator = cpoly.run.make_accelerator


def make_fsdp_accelerator(*args, **kwargs):
    accelerator = make_accelerator(*args, **kwargs)
    # both shared states, as Accelerate leaves them on GPUs (AcceleratorState() re-reads PartialState's)
    PartialState._shared_state["distributed_type"] = accelerator.state.distributed_type = DistributedType.FSDP
    accelerator.state.fsdp_plugin = FullyShardedDataParallelPlugin()  # the FSDP_* environment
    return accelerator


def stop_after_checkpoint(evaluate_and_checkpoint):
    def run(self, step):
        evaluate_and_checkpoint(self, step)
        raise SystemExit(f"stopped after the checkpoint of step {step}")

    return run


if __name__ == "__main__":
    cpoly.run.make_accelerator = make_fsdp_accelerator
    if os.environ.get("CPOLY_TEST_STOP_AFTER_CHECKPOINT") == "1":
        TrainLoop._evaluate_and_checkpoint = stop_after_checkpoint(TrainLoop._evaluate_and_checkpoint)
    sys.argv[0] = str(REPO_ROOT / "train.py")
    runpy.run_path(str(REPO_ROOT / "train.py"), run_name="__main__")
