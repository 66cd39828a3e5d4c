"""Training batches off the training thread: a `DataLoader` over optimizer steps.

Item `step` of `StepBatches` is this process's share of that step's global batch, collated: a pure
function of (seed, step), so any worker may build any step, in any order, and a run resumed at step N
gets exactly the batches an uninterrupted run got from N. The loader iterates the steps still to train
(`range(start, max_steps)`) with `batch_size=None` (an item is already a step); workers build the next
steps (fetching rows, padding, routing-noise keys, the step's mix facts) while the model trains, and on a
GPU the batches come in pinned memory, so copies to the device do not block.
"""

from __future__ import annotations

import signal
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from cpoly.data.collate import Collator
from cpoly.data.sampling import MultiTaskBatchSampler, split_global_batch
from cpoly.skills.router import example_noise_keys
from cpoly.train.preemption import SIGNALS


@dataclass
class StepBatches(Dataset):
    """This process's micro-batches of each optimizer step's global batch (`sampler.batch_at(step)`).

    Each micro-batch is the collator's dict plus `positions` (each row's place in the global batch) and
    `noise_keys` (its routing-noise key). The item also carries the global batch's mix over every process,
    `tasks` (distinct tasks), `input_tokens` and `padded_input_tokens` (as every process pads its
    micro-batches). With `overfit_batches` > 0, step s trains on global batch s mod `overfit_batches`.
    """

    dataset: Any  # tokenised rows (datasets.Dataset): `dataset[list of indices]` gives their columns
    collator: Collator
    sampler: MultiTaskBatchSampler  # global batches (num_replicas=1): split here, not in the sampler
    seed: int
    grad_accum: int = 1
    num_processes: int = 1
    process_index: int = 0
    overfit_batches: int = 0

    def __getitem__(self, step: int) -> dict[str, Any]:
        global_batch = self.sampler.batch_at(step % self.overfit_batches if self.overfit_batches else step)
        tasks, lengths = np.asarray(self.sampler.tasks), self.sampler.lengths
        item: dict[str, Any] = {
            "tasks": len(np.unique(tasks[global_batch])),
            "input_tokens": 0,
            "padded_input_tokens": 0,
        }
        if lengths is not None:
            lengths = np.asarray(lengths)
            for r in range(self.num_processes):
                for _, rows in split_global_batch(global_batch, self.grad_accum, self.num_processes, r):
                    item["input_tokens"] += int(lengths[rows].sum())
                    item["padded_input_tokens"] += int(lengths[rows].max()) * len(rows)
        micro = []
        for positions, rows in split_global_batch(
            global_batch, self.grad_accum, self.num_processes, self.process_index
        ):
            batch = self.collator(self.dataset[rows.tolist()])
            batch["positions"] = torch.from_numpy(positions)
            batch["noise_keys"] = example_noise_keys(self.seed, step, batch["positions"])
            micro.append(batch)
        item["micro_batches"] = micro
        return item


def _ignore_preemption_signals(worker_id: int) -> None:
    """Workers leave SIGTERM/SIGUSR1 to the training process: SLURM signals every process of a job, and a
    worker that died of it would fail the step instead of letting the loop checkpoint and stop."""
    for s in SIGNALS:
        signal.signal(s, signal.SIG_IGN)


def step_loader(
    steps: StepBatches, start: int, stop: int, *, num_workers: int, prefetch_factor: int, pin_memory: bool
) -> DataLoader:
    """Steps `start` .. `stop - 1`, in order, built by `num_workers` processes (0: on the calling thread)
    `prefetch_factor` steps ahead each."""
    return DataLoader(
        steps,
        batch_size=None,  # an item is a whole step
        sampler=range(start, stop),
        num_workers=num_workers,
        prefetch_factor=prefetch_factor if num_workers else None,
        pin_memory=pin_memory,
        worker_init_fn=_ignore_preemption_signals,
    )
