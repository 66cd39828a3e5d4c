"""Preemption: a SIGTERM or SIGUSR1 (what SLURM sends before it kills or requeues a job, e.g.
`--signal=USR1@120`) asks the loop to stop at the end of the current step (with several processes, at
the next log step, where the processes agree on it). The loop then writes `last/`
with the full trainer state and the process exits with `PREEMPTED_EXIT_CODE`; running the same command
again (a requeued job does) continues from that checkpoint with `resume=auto` and ends exactly as an
uninterrupted run.

Under submitit (`hydra/launcher=slurm` or `submitit_local`), its own preemption signal (USR2 unless
`SUBMITIT_PREEMPT_SIGNAL` says otherwise) is handled the same way first, and submitit's handler, which
requeues the job, runs once `last/` is written (`Preempted.requeue`): the requeued job resumes from it."""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import signal
import threading
from collections.abc import Callable, Iterator

import torch

log = logging.getLogger(__name__)

SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
PREEMPTED_EXIT_CODE = 75  # EX_TEMPFAIL: try again later


class Preempted(BaseException):
    """Raised by the loop after it checkpointed on a preemption signal (BaseException: nothing on the way
    up should treat it as an error to recover from)."""

    def __init__(self, step: int, requeue: Callable[[], None] | None = None) -> None:
        super().__init__(f"preempted at step {step}")
        self.step = step
        self.requeue = requeue  # submitit's handler of the signal, deferred until last/ is written


class StopFlag:
    def __init__(self) -> None:
        self.signal: int | None = None
        self.deferred: dict[int, Callable] = {}  # signal -> the handler it had (submitit's)

    def requeue(self) -> Callable[[], None] | None:
        """The deferred handler of the signal received, to run after the checkpoint (None: none)."""
        handler = self.deferred.get(self.signal) if self.signal is not None else None
        return None if handler is None else functools.partial(handler, self.signal, None)

    def requested(self, accelerator, sync_point: bool) -> bool:
        """Whether a process received a signal. Alone, at every step (the flag is local); with several
        processes, only at `sync_point` steps (log steps, where the loop syncs the device anyway): agreeing
        takes an all-reduce and a device sync, which every step would put on the training's hot path."""
        local = self.signal is not None
        if accelerator.num_processes == 1:
            return local
        if not sync_point:
            return False
        flag = torch.tensor(float(local), device=accelerator.device)
        return bool(accelerator.reduce(flag, reduction="sum").item() > 0)


def submitit_signal() -> int | None:
    """The signal submitit requeues on, inside a submitit job (None outside one)."""
    if "SUBMITIT_EXECUTOR" not in os.environ and "SUBMITIT_FOLDER" not in os.environ:
        return None
    name = os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2")
    return getattr(signal, f"SIG{name.removeprefix('SIG')}", None)


@contextlib.contextmanager
def stop_on_signals() -> Iterator[StopFlag]:
    """Record SIGTERM/SIGUSR1 in a flag while the block runs; the previous handlers come back after."""
    flag = StopFlag()
    if threading.current_thread() is not threading.main_thread():  # signals reach the main thread only
        yield flag
        return

    def record(signum, frame) -> None:
        if flag.signal is None:
            log.warning("received %s: stopping after this step and writing last/", signal.Signals(signum).name)
        flag.signal = signum

    previous = {s: signal.signal(s, record) for s in SIGNALS}
    submitit = submitit_signal()
    if submitit is not None and callable(signal.getsignal(submitit)):  # a handler of submitit's: deferred
        previous[submitit] = signal.signal(submitit, record)
        flag.deferred[submitit] = previous[submitit]
    try:
        yield flag
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
