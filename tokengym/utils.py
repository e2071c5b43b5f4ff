"""Small shared utilities: seeding, atomic file writes, thread settings, and the rule that tokengym
replaces only folders it wrote itself.

Every folder tokengym creates (reward models, checkpoints, exported policies, run folders, cached
conversions) holds a small marker file, :data:`MARKER`. A command that would replace or write into an
existing folder first calls :func:`check_replaceable` (or :func:`check_run_folder`): a missing path
or an empty folder is fine, a folder with the marker is tokengym's to replace, and anything else (a
user's folder, a regular file, the current directory) is refused before any work, untouched.
Folders written before the marker existed are recognised by tokengym's own files (see
:func:`written_by_tokengym`).
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import random
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Callable, Iterator

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


# ------------------------------------------------------------------ what tokengym may replace
MARKER = ".tokengym"
# Files only tokengym writes: folders of versions before the marker are recognised by them
# (a checkpoint by its trainer state, a reward model by its normalisation file).
_OWN_FILES = ("trainer_state.json", "tokengym_reward.json")


class NotReplaceableError(FileExistsError):
    """A path exists and is not tokengym's to replace or write into; the message says how to proceed."""


def write_marker(folder: str | os.PathLike, what: str) -> None:
    """Mark ``folder`` as written by tokengym (``what`` says by which command or for what)."""
    from tokengym import __version__

    data = json.dumps({"written_by": "tokengym", "version": __version__, "what": what}) + "\n"
    with open(Path(folder) / MARKER, "w", encoding="utf-8") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _cache_root() -> Path:
    # The same rule as tokengym.models.cache_dir, repeated so that this module does not import
    # transformers (tests check that the two agree).
    env = os.environ.get("TOKENGYM_CACHE")
    return Path(env) if env else Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "tokengym"


def is_run_folder(path: str | os.PathLike) -> bool:
    """True for a training run's folder written by tokengym (marked, or by an earlier version)."""
    path = Path(path)
    if not path.is_dir():
        return False
    if (path / MARKER).is_file() or (path / "metrics.jsonl").is_file() or (path / "checkpoint" / "trainer_state.json").is_file():
        return True
    try:  # a run killed during its first evaluation has only its report
        report = json.loads((path / "report.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(report, dict) and {"config", "before"} <= report.keys()


def written_by_tokengym(path: str | os.PathLike) -> bool:
    """True if the folder ``path`` is tokengym's own output, so replacing it loses nothing of the user's.

    Recognised: the :data:`MARKER` file; for folders of earlier versions, a checkpoint's
    ``trainer_state.json``, a reward model's ``tokengym_reward.json``, the ``final_model`` of a run
    folder (:func:`is_run_folder`) holding a Hugging Face model, and anything directly inside
    tokengym's cache folders.
    """
    path = Path(os.path.abspath(path))
    if path.is_symlink() or not path.is_dir():
        return False
    if (path / MARKER).is_file() or any((path / f).is_file() for f in _OWN_FILES):
        return True
    if path.name == "final_model" and is_run_folder(path.parent):
        # An exported policy: a Hugging Face folder (not just any folder someone put there).
        return (path / "config.json").is_file() and any(path.glob("*.safetensors"))
    cache = Path(os.path.abspath(_cache_root()))
    return path.parent in (cache / "models", cache / "reward_models")


def _refuse(label: str, reason: str, hint: str) -> NotReplaceableError:
    return NotReplaceableError(f"{label} {reason}; {hint}")


def check_creatable(path: str | os.PathLike, flag: str | None = None, label: str | None = None) -> None:
    """The nearest existing ancestor of ``path`` must be a writable folder (checked before any work)."""
    label = label or (f"{flag} {path}" if flag else str(path))
    anc = Path(os.path.abspath(path)).parent
    while not anc.exists() and anc != anc.parent:
        anc = anc.parent
    if not anc.is_dir():
        raise _refuse(label, f"cannot be created: {anc} is a file", "choose another path")
    if not os.access(anc, os.W_OK | os.X_OK):
        raise _refuse(label, f"cannot be written: {anc} is not writable", "choose another path")


def check_replaceable(path: str | os.PathLike, flag: str | None = None) -> Path:
    """Refuse, before any work, to replace ``path`` unless it is missing, empty or tokengym's own.

    Returns the absolute path. Raises :class:`NotReplaceableError` (naming ``flag`` when given) for a
    regular file, a symbolic link, the current directory or one containing it, and a non-empty folder
    that :func:`written_by_tokengym` does not recognise. Nothing is changed either way.
    """
    label = f"{flag} {path}" if flag else str(path)
    p = Path(os.path.abspath(path))
    hint = "tokengym replaces only folders it wrote itself: give a new path, or move this one away yourself"
    try:
        cwd = Path.cwd()
    except OSError:  # the working directory was deleted: nothing to protect there
        cwd = None
    if cwd is not None and (p == cwd or p in cwd.parents):
        raise _refuse(label, "is the current directory or contains it", hint)
    if p.is_symlink():
        raise _refuse(label, "is a symbolic link", hint)
    old = p.with_name(f".{p.name}.old")
    if old.exists() and not written_by_tokengym(old):
        raise _refuse(label, f"cannot be replaced safely: {old} is in the way and is not tokengym's", hint)
    target = p if p.exists() else old if old.is_dir() else None  # an interrupted swap is put back first
    if target is None:
        check_creatable(p, label=label)
        return p
    if not target.is_dir():
        raise _refuse(label, "is an existing file, not a folder tokengym wrote", hint)
    if next(target.iterdir(), None) is not None and not written_by_tokengym(target):
        raise _refuse(label, f"is a folder tokengym did not write (it has no {MARKER} file)",
                      hint + f" (if it is an earlier tokengym output, create {target / MARKER} to allow it)")
    if not os.access(p.parent, os.W_OK | os.X_OK):
        raise _refuse(label, f"cannot be replaced: {p.parent} is not writable", "choose another path")
    return p


def check_run_folder(path: str | os.PathLike, flag: str | None = None) -> Path:
    """Refuse, before any work, to write a training run into ``path`` unless it is missing, empty or a run
    folder of tokengym's (:func:`is_run_folder`): a run writes fixed names (``report.json``,
    ``metrics.csv``, ...) that would overwrite a user's files of the same names."""
    label = f"{flag} {path}" if flag else str(path)
    p = Path(os.path.abspath(path))
    hint = "tokengym writes runs only into new, empty or its own run folders: give a new path"
    if p.is_symlink() and not p.is_dir():
        raise _refuse(label, "is a broken symbolic link", hint)
    if not p.exists():
        check_creatable(p, label=label)
        return p
    if not p.is_dir():
        raise _refuse(label, "is an existing file, not a folder", hint)
    if next(p.iterdir(), None) is not None and not is_run_folder(p):
        raise _refuse(label, f"is a folder tokengym did not write (it has no {MARKER} file)",
                      hint + f" (if it is an earlier tokengym run, create {p / MARKER} to allow it)")
    if not os.access(p, os.W_OK | os.X_OK):
        raise _refuse(label, "is not writable", "choose another path")
    return p


def check_file_replaceable(path: str | os.PathLike, ours: Callable[[Path], bool], what: str,
                           flag: str | None = None) -> Path:
    """Refuse, before any work, to overwrite the file ``path`` unless it is missing or ``ours(path)``
    says tokengym wrote it (``what`` names that kind of file in the message)."""
    label = f"{flag} {path}" if flag else str(path)
    p = Path(os.path.abspath(path))
    hint = f"tokengym overwrites only {what} it wrote itself: give a new file name, or move this one away yourself"
    if p.is_symlink():
        raise _refuse(label, "is a symbolic link", hint)
    if p.is_dir():
        raise _refuse(label, "is a folder, not a file", hint)
    if not p.exists():
        check_creatable(p, label=label)
        return p
    if not ours(p):
        raise _refuse(label, f"exists and is not {what} written by tokengym", hint)
    if not os.access(p.parent, os.W_OK | os.X_OK):
        raise _refuse(label, f"cannot be replaced: {p.parent} is not writable", "choose another path")
    return p


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike, what: str = "tokengym output") -> Iterator[Path]:
    """Yield a temporary sibling directory; on success it replaces ``path`` in one rename.

    ``path`` must be missing, empty or tokengym's own (:func:`check_replaceable`, checked before the
    block runs); the new folder gets the :data:`MARKER` file (``what`` is recorded in it).
    A process killed inside the block leaves only a ``.tmp`` sibling, never a half-written ``path``.
    If ``path`` already exists it is moved aside first and removed only after the new one is in place;
    a kill between those two renames leaves the previous version in ``.NAME.old``, which
    :func:`recover_directory` (called here and by the checkpoint loader) puts back.
    """
    path = Path(os.path.abspath(path))
    check_replaceable(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    recover_directory(path)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    _remove_stale_temporaries(path, keep=tmp)
    try:
        yield tmp
        if not (tmp / MARKER).exists():
            write_marker(tmp, what)
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
