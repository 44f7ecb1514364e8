"""Files the run writes and reads back: atomic saves, tolerant loads, writable-folder checks.

``write_atomic``/``save_atomic`` write via a temp file renamed into place (the temp file never
outlives a failed save; a full or unwritable folder raises :class:`StorageFault`);
``load_tensors`` reads a torch file with ``weights_only=True`` and turns every way such a file can
be broken into :class:`UnreadableFile`; ``check_writable`` refuses folders a run cannot write
before it starts (it lives in :mod:`search.store.folders`, torch-free, re-exported here). Knows
nothing of Optuna, so data and train can use it.
"""

from __future__ import annotations

import errno
import io
import logging
import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from search.errors import InputError, RunFailure
from search.store.folders import UnwritableFolder, check_writable, unwritable_reason

log = logging.getLogger(__name__)

__all__ = ["UnwritableFolder", "check_writable", "unwritable_reason"]  # from folders, re-exported

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
