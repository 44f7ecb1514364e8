"""Where a trial's images live while it trains: resident on the device, or streamed from the cache.

:func:`place` keeps the training and validation images resident on the training device (one
tensor there, batches are index slices: the fast path) when they fit the budget,
``data.device_budget`` times the device's free memory (CUDA) or the available RAM (CPU). A larger
set stays in the memory-mapped cache on the host: each batch is gathered from it into pinned host
memory and copied to the device asynchronously (:func:`gather`), while the device still runs the
previous step; augmentation stays batched on the device. On the CPU a resident set is the mapped
cache itself (no copy), and a streamed one gathers each batch from it the same way. The choice is
logged. Both paths see the same images in the same order, so they train the same weights.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from search.engine.data import ImageSet

log = logging.getLogger(__name__)

MEMINFO = "/proc/meminfo"
COPY_CHUNK = 4096  # images per host-to-device copy when a split is made resident


def free_bytes(device: torch.device) -> int:
    """The device's free memory: CUDA's free memory, or the host's available RAM."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open(MEMINFO, encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 2**63 - 1  # unknown: assume it fits, as before streaming existed


def budget_bytes(device: torch.device, fraction: float) -> int:
    """The bytes of images that may stay resident on ``device``: ``fraction`` of its free memory."""
    return int(free_bytes(device) * fraction)


def place(train: ImageSet, val: ImageSet, device: torch.device, fraction: float) -> tuple[ImageSet, ImageSet]:
    """``train`` and ``val`` for training on ``device``: resident when both fit the budget, else
    streamed from the host (logged either way)."""
    need = train.nbytes + val.nbytes
    budget = budget_bytes(device, fraction)
    mib = 1024 * 1024
    if need <= budget:
        log.info(
            "data: %d MiB of images resident on %s (budget %d MiB)", need // mib, device.type, budget // mib
        )
        return train.to(device), val.to(device)
    log.info(
        "data: %d MiB of images exceed the %s budget (%d MiB, data.device_budget of its free memory): "
        "streaming batches from the memory-mapped cache",
        need // mib,
        device.type,
        budget // mib,
    )
    return streamed(train, device), streamed(val, device)


def streamed(data: ImageSet, device: torch.device) -> ImageSet:
    """``data`` left on the host, its batches copied to ``device`` as they are gathered."""
    from search.engine.data import ImageSet

    index = data.index.cpu() if data.index is not None else None
    return ImageSet(data.base.cpu(), data.labels.to(device), index, stream_to=torch.device(device))


def resident(data: ImageSet, device: torch.device) -> ImageSet:
    """``data`` copied to ``device`` as one tensor, a chunk at a time (never a whole host copy)."""
    from search.engine.data import ImageSet

    n = len(data)
    out = torch.empty((n, *data.image_shape), dtype=data.base.dtype, device=device)
    for start in range(0, n, COPY_CHUNK):
        pos = torch.arange(start, min(start + COPY_CHUNK, n), device=data.base.device)
        out[start : start + len(pos)] = data.base[data.rows(pos)].to(device)
    return ImageSet(out, data.labels.to(device))


class _Stager:
    """Two pinned host buffers used in turn: a batch is gathered into one while the copy of the
    previous one, from the other, may still be running (an event says when a buffer is free)."""

    def __init__(self, base: torch.Tensor, device: torch.device) -> None:
        self.base, self.device = base, device
        self.buffers: list[torch.Tensor] = []
        self.events: list[torch.cuda.Event | None] = [None, None]
        self.turn = 0

    def copy(self, rows: torch.Tensor) -> torch.Tensor:
        if not self.buffers or len(rows) > len(self.buffers[0]):
            shape = (len(rows), *self.base.shape[1:])
            self.buffers = [torch.empty(shape, dtype=self.base.dtype, pin_memory=True) for _ in range(2)]
            self.events = [None, None]
        k, self.turn = self.turn, 1 - self.turn
        event = self.events[k]
        if event is not None:
            event.synchronize()  # the copy out of this buffer two batches ago has finished
        buf = self.buffers[k][: len(rows)]
        torch.index_select(self.base, 0, rows, out=buf)
        out = buf.to(self.device, non_blocking=True)
        event = torch.cuda.Event()  # type: ignore[no-untyped-call]
        event.record()
        self.events[k] = event
        return out


_STAGERS: dict[tuple[int, str], _Stager] = {}


def gather(data: ImageSet, positions: torch.Tensor) -> torch.Tensor:
    """The images at ``positions`` of a streamed set, on its device (see the module). Give
    ``positions`` on the host: indices on the device would make every batch wait for it."""
    device = data.device
    rows = data.rows(positions.cpu())
    if device.type != "cuda":
        return data.base.index_select(0, rows)  # the CPU reads the mapped cache directly
    key = (data.base.data_ptr(), str(device))
    if key not in _STAGERS:
        _STAGERS.clear()  # the last set's buffers are let go (pinned memory waits for its copies)
        _STAGERS[key] = _Stager(data.base, device)
    return _STAGERS[key].copy(rows)
