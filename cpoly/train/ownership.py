"""One run folder, one writer: a second process started on a run folder in use is refused, with the
folder and the process that holds it named, instead of both writing checkpoints and logs.

The lock is an OS file lock (`filelock`), so it is released whenever its process ends, by a crash or a
`kill -9` too: a stale lock never blocks a resume. With several processes (torchrun, Accelerate) the
main process of the run's process group holds it for all of them (`is_main`: the Accelerator's word, the
same source every other main-process decision reads, never the environment's RANK).
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from filelock import FileLock, Timeout

from cpoly.config import ConfigError

LOCK_NAME = ".writer.lock"
OWNER_NAME = ".writer"  # who holds the lock: pid, host and since when, for the refusal's message


class RunFolderBusy(ConfigError):
    """The run folder is being written by another process."""


@contextlib.contextmanager
def own_run_folder(folder: Path, is_main: bool) -> Iterator[None]:
    if not is_main:  # the main process holds it for all of them
        yield
        return
    lock = FileLock(folder / LOCK_NAME, timeout=0)
    owner = folder / OWNER_NAME
    try:
        lock.acquire()
    except Timeout:
        who = owner.read_text().strip() if owner.is_file() else "another process"
        raise RunFolderBusy(
            f"run folder {folder} is in use by {who}; wait for that run to end (or stop it), or give this "
            "run another folder (hydra.run.dir=...)"
        ) from None
    try:
        owner.write_text(f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        yield
    finally:
        owner.unlink(missing_ok=True)
        lock.release()
