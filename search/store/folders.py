"""Folders a command writes: whether files can be written under one, checked before any work.

Imports only the standard library (``search validate`` runs the same check ``run`` does).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from pathlib import Path

from search.errors import InputError


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
