"""The decoded image cache of an imagefolder: one uint8 ``.npy`` file that every reader maps.

``<cache_dir>/imagefolder-<key>.npy`` holds the images ``[N, C, H, W]``; ``imagefolder-<key>.json``
beside it their labels, class names and shape. The key hashes what the images are made from: every
file's name, size and modification time, the CSV of labels, ``image_size`` and ``resize``; changing
any of them gives a new cache. Readers map the file read-only (``mmap_mode='r'``): local workers,
``search worker`` processes, confirm and finetune on one machine share the same pages instead of
each holding a copy.

Writing is atomic and happens once: the writer holds an exclusive lock (``.lock`` file, ``flock``),
looks again (another process may just have written it), decodes into a temporary name
(``.imagefolder-<key>.<pid>.npy.tmp``), renames it into place and only then writes the ``.json``,
which is what marks the cache complete. A process killed mid-write leaves a temporary file that
no reader opens and the next writer removes; a truncated or mismatched cache is ignored (with a
warning) and rebuilt.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from search.store.files import write_atomic

log = logging.getLogger(__name__)

FORMAT = 1  # of the .json beside the .npy


@dataclass(frozen=True)
class Mapped:
    """A cache as read: the images (a read-only memory-mapped tensor), labels and class names."""

    images: torch.Tensor
    labels: torch.Tensor
    classes: tuple[str, ...]


@dataclass(frozen=True)
class CacheFiles:
    """The files of one cache: ``stem`` + ``.npy`` (images) and ``.json`` (labels)."""

    stem: Path

    @property
    def images(self) -> Path:
        return self.stem.with_name(self.stem.name + ".npy")

    @property
    def meta(self) -> Path:
        return self.stem.with_name(self.stem.name + ".json")

    def temp(self, pid: int | None = None) -> Path:
        return self.stem.with_name(f".{self.stem.name}.{pid or os.getpid()}.npy.tmp")

    def leftovers(self) -> list[Path]:
        """Temporary files of earlier writers (killed mid-write)."""
        return sorted(self.stem.parent.glob(f".{self.stem.name}.*.npy.tmp"))


def map_images(path: Path) -> torch.Tensor:
    """The ``.npy`` at ``path`` as a uint8 tensor over a read-only shared mapping (no copy)."""
    array = np.load(path, mmap_mode="r", allow_pickle=False)
    with warnings.catch_warnings():  # torch warns that it cannot write to it: it never does
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(array)


def read(files: CacheFiles) -> Mapped | None:
    """The complete cache at ``files``, or None: missing, or (with a warning) unreadable, truncated
    or not matching its ``.json``; the caller then builds it again."""
    if not files.meta.is_file():
        return None
    try:
        meta = json.loads(files.meta.read_text(encoding="utf-8"))
        images = map_images(files.images)
        labels = torch.tensor(meta["labels"], dtype=torch.int64)
        classes = tuple(str(c) for c in meta["classes"])
        ok = meta["format"] == FORMAT and list(images.shape) == list(meta["shape"])
        ok = ok and images.dtype == torch.uint8 and images.ndim == 4 and len(labels) == len(images)
    except (OSError, ValueError, KeyError, TypeError, EOFError) as exc:
        log.warning("ignoring unreadable data cache %s (%s); decoding again", files.images, exc)
        return None
    if not ok:
        log.warning(
            "ignoring data cache %s: it does not match %s; decoding again", files.images, files.meta.name
        )
        return None
    return Mapped(images, labels, classes)


@contextlib.contextmanager
def exclusive(folder: Path) -> Iterator[None]:
    """Held by the one process that writes a cache in ``folder`` (others wait, then find it
    written): a ``flock`` on the folder itself, so no lock file is left behind."""
    try:
        import fcntl
    except ImportError:  # no flock (Windows): writers may race; each still writes atomically
        yield
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


Writer = Callable[[Path], None]  # decodes the images into a new .npy at the given path


def build(files: CacheFiles, write: Writer, labels: list[int], classes: list[str]) -> Mapped:
    """The cache at ``files``, written once by ``write`` (atomically; see the module) if missing.

    When the cache folder cannot be written, the images are decoded into a temporary file that is
    mapped and removed at once (nothing is left behind; the next run decodes again).
    """
    folder = files.stem.parent
    created = [p for p in (folder, *folder.parents) if not p.exists()]  # removed again on failure
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with exclusive(folder):
            found = read(files)
            if found is not None:
                return found
            for stale in files.leftovers():  # under the lock: writers that died mid-write
                stale.unlink(missing_ok=True)
            _write(files, write, labels, classes)
    except BaseException as exc:
        for made in created:  # a failed first ingestion leaves no empty cache folder behind
            with contextlib.suppress(OSError):
                made.rmdir()
        if not isinstance(exc, OSError):
            raise
        # a read-only or full cache folder: decode anyway, cache nothing
        log.warning(
            "could not write the data cache in %s (%s); decoding again next time", files.stem.parent, exc
        )
        return _uncached(write, labels, classes)
    log.info("cached decoded images at %s", files.images)
    found = read(files)
    if found is None:
        raise OSError(f"the data cache {files.images} just written does not read back")
    return found


def _write(files: CacheFiles, write: Writer, labels: list[int], classes: list[str]) -> None:
    tmp = files.temp()
    try:
        write(tmp)
        shape = list(np.load(tmp, mmap_mode="r").shape)
        os.replace(tmp, files.images)
    except BaseException:  # a failed, interrupted or refused ingestion leaves nothing behind
        tmp.unlink(missing_ok=True)
        raise
    meta = {"format": FORMAT, "shape": shape, "classes": classes, "labels": labels}
    write_atomic(files.meta, json.dumps(meta).encode())  # last: the cache is complete from here


def _uncached(write: Writer, labels: list[int], classes: list[str]) -> Mapped:
    fd, name = tempfile.mkstemp(suffix=".npy", prefix="search-images-")
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        images = map_images(tmp)  # the mapping keeps the data once the name is gone
    finally:
        tmp.unlink(missing_ok=True)
    return Mapped(images, torch.tensor(labels, dtype=torch.int64), tuple(classes))
