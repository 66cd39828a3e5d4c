"""Sharded training beyond DDP: FSDP2 (`torch.distributed.fsdp.fully_shard`, Accelerate's `fsdp_version: 2`).

Under FSDP2 every parameter is a DTensor that holds this process's shard; a forward gathers each FSDP
unit's parameters and frees them again. What reads parameters outside a forward gathers them itself:
- `gathered(t)`: the whole tensor, on every process (a collective: every process calls it, in the same
  order); checkpoints save adapters and optimizer moments so, in the layout of a single-process run;
- `sharded_like(param, value)`: a whole tensor cut as `param` is (each process keeps its own shard, no
  communication): loading a checkpoint into a sharded model;
- `full_parameters(model)`: every parameter whole inside the block (evaluation, the allocation plots).
Every function is the identity (or a no-op) on a model that is not sharded. See docs/distributed.md.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn
from torch.distributed.fsdp import FSDPModule
from torch.distributed.tensor import DTensor, distribute_tensor


def gathered(t: torch.Tensor) -> torch.Tensor:
    """`t` whole: a DTensor's shards all-gathered (every process must call this), any other tensor as is."""
    return t.full_tensor() if isinstance(t, DTensor) else t


def sharded_like(param: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """`value` (whole, on every process) as a DTensor placed like `param`; `value` itself if `param` is not one."""
    if not isinstance(param, DTensor):
        return value
    value = value.to(device=param.device, dtype=param.dtype)
    # src_data_rank=None: every process holds the whole value and keeps its shard, no communication
    return distribute_tensor(value, param.device_mesh, param.placements, src_data_rank=None)


@contextlib.contextmanager
def full_parameters(model: nn.Module, reshard_after_forward: bool | None = None) -> Iterator[None]:
    """Every parameter of an FSDP2 `model` whole inside the block; a no-op for any other model.

    Every process enters it (each FSDP unit all-gathers once). With `reshard_after_forward` (the launch's
    value; needed when the block runs forwards) the units do not reshard after forward inside, so forwards
    run without communication and processes may evaluate different numbers of batches; on exit the root
    unit gets FSDP's root default back (False) and the others `reshard_after_forward` (Accelerate's tail
    unit of embeddings and LM head, which it keeps gathered after forward, included: communication only)."""
    units = [m for m in model.modules() if isinstance(m, FSDPModule)]
    if not units:
        yield
        return
    if reshard_after_forward is not None:
        for unit in units:
            unit.set_reshard_after_forward(False, recurse=False)
    for unit in units:
        unit.unshard()
    try:
        yield
    finally:
        for unit in units:
            unit.reshard()
        if reshard_after_forward is not None:
            for unit in units:
                unit.set_reshard_after_forward(reshard_after_forward and unit is not model, recurse=False)


def share_embedding_modules(model: nn.Module) -> None:
    """Make embedding modules that share the input embeddings' weight that very module (T5's encoder and
    decoder `embed_tokens` around `shared.weight`): FSDP2 shards a parameter in one unit only, and
    Accelerate puts the input embeddings in a unit of their own. The forward is unchanged."""
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    if embeddings is None:
        return
    for name, module in list(model.named_modules()):
        if module is not embeddings and isinstance(module, nn.Embedding) and module.weight is embeddings.weight:
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, embeddings)
