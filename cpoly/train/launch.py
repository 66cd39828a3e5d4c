"""The run's Accelerate backend (one process, DDP, FSDP2), checked against what the launch asked for,
and what it needs before `accelerator.prepare`. See docs/distributed.md."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs, DistributedType
from torch import nn

from cpoly.config import ConfigError
from cpoly.distributed import share_embedding_modules

log = logging.getLogger(__name__)


# Where launchers say how many processes they started: torchrun / accelerate launch, then MPI's (the
# variables Accelerate itself reads to decide on a CPU process group).
WORLD_SIZE_VARIABLES = ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")


def launched_processes(environ: Mapping[str, str] = os.environ) -> int:
    """How many processes the launcher started, by its environment (1 when no launcher says)."""
    for name in WORLD_SIZE_VARIABLES:
        if environ.get(name, "").strip():
            try:
                return int(environ[name])
            except ValueError:
                raise ConfigError(f"{name}={environ[name]!r} in the environment: not a process count") from None
    return 1


def use_cpu(trainer_cpu: bool | None, environ: Mapping[str, str] = os.environ) -> bool:
    """`trainer.cpu`: true runs on the CPU even where a GPU exists; null (the default) does too where no CUDA
    device exists and the launcher started several processes, so that they form one CPU (gloo) process group
    (Accelerate forms one only when told it runs on the CPU); false never asks for CPU processes."""
    if trainer_cpu is not None:
        return trainer_cpu
    return launched_processes(environ) > 1 and not torch.cuda.is_available()


def check_process_group(accelerator: Accelerator, environ: Mapping[str, str] = os.environ) -> None:
    """Refuse, before any work, a launch whose processes are not one process group: each would run the whole
    job alone, write the same run folder and report a world size of 1."""
    launched = launched_processes(environ)
    if launched == accelerator.num_processes:
        return
    where = ", ".join(f"{k}={environ[k]}" for k in (*WORLD_SIZE_VARIABLES, "RANK", "LOCAL_RANK") if k in environ)
    raise ConfigError(
        f"the launcher started {launched} processes ({where}) but Accelerate formed a group of "
        f"{accelerator.num_processes} ({accelerator.distributed_type.value} on {accelerator.device}): each process "
        "would run the whole job alone. On CPU processes leave trainer.cpu unset (null) or set trainer.cpu=true; "
        "on GPUs check that every process sees its device (docs/distributed.md)"
    )


def make_accelerator(
    cpu: bool | None, precision: str, find_unused_parameters: bool, environ: Mapping[str, str] = os.environ
) -> Accelerator:
    """The run's Accelerator, checked to be one process group with as many processes as were launched.
    Gradient accumulation is the loop's own (one normalisation over the whole step), not Accelerate's."""
    cpu = use_cpu(cpu, environ)
    cuda = torch.cuda.is_available() and not cpu
    if precision == "auto":
        precision = "bf16" if cuda and torch.cuda.is_bf16_supported() else "no"
    accelerator = Accelerator(
        cpu=cpu,
        mixed_precision=precision,
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=find_unused_parameters)],
    )
    check_process_group(accelerator, environ)
    return accelerator


def requested_backend() -> DistributedType | None:
    """What the launch asked Accelerate for through its environment (`accelerate launch --config_file`)."""
    for backend in (DistributedType.FSDP, DistributedType.DEEPSPEED):
        if os.environ.get(f"ACCELERATE_USE_{backend.value}", "false").lower() == "true":
            return backend
    return None


def check_backend(accelerator: Accelerator, kind: str) -> None:
    """Fail at once, naming the setting, where the launch asked for what this run cannot do."""
    asked, running = requested_backend(), accelerator.distributed_type
    if DistributedType.DEEPSPEED in (asked, running):
        raise ConfigError(
            "DeepSpeed (ACCELERATE_USE_DEEPSPEED=true) is not supported: its engine steps the optimizer inside "
            "accelerator.backward, which breaks this loop's step (one loss normalisation over all micro-batches, "
            "every tensor stepped, gathered checkpoints, exact resume); ZeRO-2 would shard only the adapters' "
            "optimizer state and gradients, a few MB. Use DDP, or FSDP2 to shard the backbone (docs/distributed.md)"
        )
    if asked == DistributedType.FSDP and running != DistributedType.FSDP:
        raise ConfigError(
            f"the launch asks for FSDP (ACCELERATE_USE_FSDP=true) but Accelerate runs {running.value}: Accelerate "
            "1.15 starts FSDP only on accelerator devices (CUDA, XPU, ...) under a distributed launcher, never on "
            "CPU processes (trainer.cpu=true or no GPU); use DDP there (torchrun, or conf/accelerate/ddp.yaml)"
        )
    if running == DistributedType.FSDP and not accelerator.is_fsdp2:
        raise ConfigError(
            "fsdp_version: 1 (FSDP_VERSION=1) is not supported: cpoly gathers adapters and optimizer state "
            "through FSDP2's DTensors; set fsdp_version: 2 (conf/accelerate/fsdp.yaml)"
        )
    if running == DistributedType.FSDP and kind == "encoder":
        raise ConfigError(
            "FSDP with an encoder backbone (backbone.kind=encoder) is not supported: the heads of tasks absent "
            "from one process's batch get no gradient there, and FSDP2 then reduces mismatched gradients "
            "(wrong adapters, no error); use DDP, which handles them (find_unused_parameters)"
        )


def prepare_backend(accelerator: Accelerator, model: nn.Module, kind: str) -> None:
    """Check the backend; under FSDP2, give every module that shares the input embeddings' weight that
    module (T5), as Accelerate's units need."""
    check_backend(accelerator, kind)
    if accelerator.is_fsdp2:
        log.info("FSDP2 over %d processes", accelerator.num_processes)
        share_embedding_modules(model)
