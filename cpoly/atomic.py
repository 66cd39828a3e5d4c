"""Atomic writes: a reader (or a crash) never sees a half-written file or folder."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


def fsync_tree(folder: Path) -> None:
    """Flush every file under `folder`, then the folders themselves, to the disk."""
    for root, _, files in os.walk(folder):
        for name in files:
            with open(os.path.join(root, name), "rb") as f:
                os.fsync(f.fileno())
        fsync_dir(Path(root))


def fsync_dir(folder: Path) -> None:
    """Flush a folder's entries (a rename or a new file in it) to the disk."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def versions(path: str | Path) -> list[Path]:
    """The complete versions published at `path` by `versioned_directory`, oldest first."""
    path = Path(path)
    found = [(_version_no(p), p) for p in path.parent.glob(f".{path.name}.v*")]
    return [p for number, p in sorted(found, key=lambda f: f[0] or 0) if number is not None]


def _version_no(p: Path) -> int | None:
    tail = p.name.rsplit(".v", 1)[-1]
    return int(tail) if tail.isdigit() and p.is_dir() else None


@contextlib.contextmanager
def _filled_sibling(path: Path) -> Iterator[Path]:
    """A temporary folder beside `path` to fill, flushed to the disk after; removed if filling fails."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        yield tmp
        fsync_tree(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextlib.contextmanager
def atomic_directory(path: str | Path, replace: bool = True) -> Iterator[Path]:
    """Yield a temporary sibling folder to fill; on success it is flushed to the disk and replaces `path`
    (the old folder is removed only after the new one is in place); on failure `path` is left as it was.
    Between the two renames `path` is briefly absent (the old folder is then `.<name>.old-<pid>`): for
    folders a crash must never leave without a complete version, use `versioned_directory`.

    `replace=False` is for cache entries named by a hash of their content, which never change: the first
    writer wins. If `path` exists when the folder is filled (another process published it, whole, by the
    same rename), the filled folder is deleted and `path` kept as it is, never briefly absent."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _filled_sibling(path) as tmp:
        yield tmp
    if not replace:
        _publish_once(tmp, path)
        return
    old = None
    if path.exists():
        old = path.with_name(f".{path.name}.old-{os.getpid()}")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(path, old)
    os.replace(tmp, path)
    fsync_dir(path.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _publish_once(tmp: Path, path: Path) -> None:
    """Rename `tmp` to `path` unless `path` already exists (then delete `tmp`)."""
    try:
        if not path.exists():
            os.rename(tmp, path)  # fails, rather than replaces, if another writer's non-empty folder is there
            fsync_dir(path.parent)
    except OSError:
        if not path.is_dir():
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def versioned_directory(path: str | Path, keep: int = 1) -> Iterator[Path]:
    """Yield a temporary sibling folder to fill; on success it is published as `path`, on failure `path`
    is left as it was.

    Published: the folder is fsynced and renamed to the next version `.<name>.v<N>` beside `path`, and
    `path` becomes a symbolic link to it, swapped in by one atomic rename. At every instant `path` is
    either absent (nothing published yet) or a complete version: the previous one until the new one is
    on disk. The `keep` newest versions stay (older ones are deleted after the swap), so a version that
    turns out unreadable has predecessors (`versions`). A `path` that is a plain folder (written before
    versions existed) becomes version 0 first."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if keep < 1:
        raise ValueError(f"keep must be >= 1, got {keep}")
    with _filled_sibling(path) as tmp:
        yield tmp
    if path.is_dir() and not path.is_symlink():  # the old layout: a plain folder becomes version 0
        os.replace(path, path.with_name(f".{path.name}.v0"))
        os.symlink(f".{path.name}.v0", path)
    existing = versions(path)
    number = _version_no(existing[-1]) + 1 if existing else 1
    version = path.with_name(f".{path.name}.v{number}")
    os.replace(tmp, version)
    link = path.with_name(f".{path.name}.link-{os.getpid()}")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(link)
    os.symlink(version.name, link)  # relative: the run folder can move
    fsync_dir(path.parent)
    os.replace(link, path)
    fsync_dir(path.parent)
    for old in versions(path)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
