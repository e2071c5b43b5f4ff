"""Small shared utilities: seeding, atomic file writes, thread settings."""

from __future__ import annotations

import contextlib
import glob
import os
import random
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Iterator

import numpy as np
import torch


def seed_everything(seed: int) -> np.random.Generator:
    """Seed Python, NumPy and torch from one integer; returns a NumPy generator for the caller."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return np.random.default_rng(seed)


def set_cpu_threads(n: int | None = None) -> None:
    """Use every core for intra-op parallelism (torch defaults can under-use small machines).

    Under ``torchrun`` the default is the node's cores divided by its processes (``LOCAL_WORLD_SIZE``),
    so N processes do not each spin N-fold oversubscribed thread pools."""
    n = n or max(1, (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", 1)))
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):  # some filesystems refuse O_RDONLY on dirs; data is still renamed
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` so that a crash leaves either the old file or the new one, never half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def recover_directory(path: str | os.PathLike) -> bool:
    """Undo a replacement by :func:`atomic_directory` that a crash cut between its two renames.

    Replacing an existing ``path`` takes two renames (``path`` -> ``.NAME.old``, then the new
    directory -> ``path``); a process killed in between leaves no ``path`` but a complete previous
    version in ``.NAME.old``. This renames it back and returns True; otherwise it does nothing.
    """
    path = Path(path)
    old = path.with_name(f".{path.name}.old")
    if path.exists() or not old.is_dir():
        return False
    try:
        os.replace(old, path)
    except OSError:
        if path.exists():  # another process (e.g. another rank loading the checkpoint) recovered it first
            return False
        raise
    _fsync_dir(path.parent)
    return True


def _remove_stale_temporaries(path: Path, keep: Path) -> None:
    """Delete ``.NAME.*.tmp`` siblings that writes killed inside :func:`atomic_directory` left behind
    (each can be a whole checkpoint). Only the writer of ``path`` calls this, so none is in use; a
    reader (e.g. an evaluation of the checkpoint during training) never deletes anything."""
    for stale in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        if stale != keep and stale.is_dir():
            try:
                shutil.rmtree(stale)
            except OSError as e:  # garbage that cannot be removed must not fail the save itself
                warnings.warn(f"could not remove the stale temporary {stale}: {e}", RuntimeWarning, stacklevel=3)


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling directory; on success it replaces ``path`` in one rename.

    A process killed inside the block leaves only a ``.tmp`` sibling, never a half-written ``path``.
    If ``path`` already exists it is moved aside first and removed only after the new one is in place;
    a kill between those two renames leaves the previous version in ``.NAME.old``, which
    :func:`recover_directory` (called here and by the checkpoint loader) puts back.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    recover_directory(path)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    _remove_stale_temporaries(path, keep=tmp)
    try:
        yield tmp
        for f in tmp.rglob("*"):
            if f.is_file():
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
        old = None
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            if old.exists():
                shutil.rmtree(old)
            os.replace(path, old)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
