"""Files the run writes and reads back: atomic saves, tolerant loads, writable-folder checks.

``write_atomic``/``save_atomic`` write via a temp file renamed into place (the temp file never
outlives a failed save; a full or unwritable folder raises :class:`StorageFault`);
``load_tensors`` reads a torch file with ``weights_only=True`` and turns every way such a file can
be broken into :class:`UnreadableFile`; ``check_writable`` refuses folders a run cannot write
before it starts. Knows nothing of Optuna, so data and train can use it.
"""

from __future__ import annotations

import errno
import io
import logging
import os
import pickle
import tempfile
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from search.errors import InputError, RunFailure

log = logging.getLogger(__name__)

# What torch.load raises on a truncated, corrupt or foreign file (probed on random bytes, cut-off
# and bit-flipped checkpoints, text, empty files, pickled code): each means "unreadable".
UNREADABLE_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    EOFError,
    RuntimeError,
    ValueError,  # includes UnicodeDecodeError
    KeyError,
    IndexError,
    TypeError,
    AttributeError,
    MemoryError,  # a corrupt header can claim a huge storage
    pickle.PickleError,  # includes the weights_only unpickler's refusals
    zipfile.BadZipFile,
)
# errno values that mean "this folder cannot take the file": no point in running more trials.
STORAGE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM})


class UnreadableFile(InputError):
    """A weights, checkpoint or cache file that torch cannot load safely (names the file)."""

    def __init__(self, path: str | Path, exc: BaseException) -> None:
        self.path = Path(path)
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if isinstance(exc, pickle.PickleError):
            # torch's message suggests weights_only=False, i.e. running the file's code: never.
            detail = "not a plain tensor file (truncated, corrupt, or it carries pickled code)"
        super().__init__(f"{path} is unreadable: {detail[:200]}")


class StorageFault(RunFailure, OSError):
    """A folder the run writes to is full or not writable: more trials would fail the same way."""

    def __init__(self, path: str | Path, exc: OSError) -> None:
        self.path = Path(path)
        folder = self.path.parent
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            problem = f"no space left on the device of {folder} (writing {self.path.name})"
            fix = "free disk space there (or point the config's folder keys at a larger disk)"
        else:
            problem = f"cannot write {self.path} ({exc.strerror or exc})"
            fix = f"make {folder} writable (or point the config's folder keys elsewhere)"
        self.message = f"{problem}. Fix: {fix}, then run the same command again"
        super().__init__(exc.errno, self.message)

    def __str__(self) -> str:
        return self.message


def load_tensors(source: str | Path | bytes, path: str | Path | None = None) -> Any:
    """``torch.load(weights_only=True)`` on the CPU; UnreadableFile (naming ``path``) for any bad file.

    ``source`` is a file path or the file's bytes (then ``path`` names it in errors).
    """
    name = path if path is not None else source if not isinstance(source, bytes) else "<bytes>"
    try:
        if isinstance(source, bytes):
            return torch.load(io.BytesIO(source), weights_only=True, map_location="cpu")
        return torch.load(source, weights_only=True, map_location="cpu")
    except FileNotFoundError:
        raise
    except UNREADABLE_ERRORS as exc:
        raise UnreadableFile(name, exc) from exc


def tensor_bytes(obj: Any) -> bytes:
    """``obj`` serialised by ``torch.save`` in memory (so writing it to disk gives plain OSErrors)."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _write_file(path: Path, data: bytes) -> None:
    """The one place files of tensors reach the disk (tests inject a full disk here)."""
    with open(path, "wb") as f:
        f.write(data)


def _storage_error(path: Path, exc: OSError) -> OSError:
    return StorageFault(path, exc) if exc.errno in STORAGE_ERRNOS else exc


def write_atomic(path: str | Path, data: bytes, tmp: str | Path | None = None) -> Path:
    """Write ``data`` to ``path`` via a temp file in the same folder, then rename it into place.

    Readers never see a half-written file, and the temp file is removed whatever goes wrong
    (full disk, permissions, Ctrl-C). A full or unwritable folder raises StorageFault.
    """
    final = Path(path)
    temp = Path(tmp) if tmp is not None else final.with_name(f".{final.name}.tmp{os.getpid()}")
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        _write_file(temp, data)
        os.replace(temp, final)
    except OSError as exc:
        temp.unlink(missing_ok=True)
        raise _storage_error(final, exc) from exc
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    return final


def save_atomic(obj: Any, path: str | Path, tmp: str | Path | None = None) -> Path:
    """``torch.save(obj)`` to ``path`` atomically (see :func:`write_atomic`)."""
    return write_atomic(path, tensor_bytes(obj), tmp)


# --------------------------------------------------------------------------- writable folders


def unwritable_reason(folder: str | Path) -> str | None:
    """Why files cannot be written under ``folder`` (None when they can). Creates nothing.

    A missing folder is fine when its nearest existing parent is a writable folder (the run
    creates it). Tried with a probe file, so it is also right for root and read-only mounts.
    """
    path = Path(folder)
    probe_dir = path
    while not probe_dir.exists():
        if probe_dir.is_symlink():
            return f"{probe_dir} is a broken link"
        if probe_dir.parent == probe_dir:
            return f"none of the folders above {path} exists"
        probe_dir = probe_dir.parent
    if not probe_dir.is_dir():
        return f"{probe_dir} is a file, not a folder"
    try:
        fd, probe = tempfile.mkstemp(prefix=".write-check-", dir=probe_dir)
    except OSError as exc:
        return f"{probe_dir} is not writable ({exc.strerror or exc})"
    os.close(fd)
    os.unlink(probe)
    return None


class UnwritableFolder(InputError):
    """A folder a command must write to cannot be written: ``FIELD: problem (got PATH). Fix: HINT``."""


def check_writable(folders: Mapping[str, str | Path]) -> None:
    """UnwritableFolder for the first of ``folders`` (config field -> folder) that cannot be written.

    Run before any work (a trial trains for minutes before it saves anything), it creates nothing.
    """
    for field, folder in folders.items():
        reason = unwritable_reason(folder)
        if reason is not None:
            raise UnwritableFolder(
                f"{field}: files are written here but {reason} (got {str(folder)!r}). Fix: make it a "
                f"writable folder, or point {field} at one (e.g. --set {field}=/path/to/folder)"
            )
