"""The run's Accelerate backend (one process, DDP, FSDP2), checked against what the launch asked for,
and what it needs before `accelerator.prepare`. See docs/distributed.md."""

from __future__ import annotations

import logging
import os

from accelerate import Accelerator
from accelerate.utils import DistributedType
from torch import nn

from cpoly.config import ConfigError
from cpoly.distributed import share_embedding_modules

log = logging.getLogger(__name__)


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
