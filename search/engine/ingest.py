"""Image files decoded in parallel, one at a time per worker, straight into a file on disk.

Workers are threads by default: PIL releases the GIL while it decodes and resizes, so they run on
every core without a process pool's start-up and copies (measured: docs/BENCHMARKS.md).

:func:`ingest` writes uint8 ``[N, C, S, S]`` rows into a preallocated ``.npy`` file (the data
cache, :mod:`search.engine.cache`): each worker opens, orients, converts and resizes one photo and
writes its row at its offset (``os.pwrite``), so neither the workers nor this process hold more
than a chunk of decoded photos, whatever the folder's size. A first pass reads only the headers
(mode and upright size): the colour mode of the whole set and, without ``image_size``, the common
size are known before anything is decoded, and an unreadable header stops the run before any
decoding. JPEGs are decoded at 1/2, 1/4 or 1/8 of their size (the decoder's draft mode) when the
target is that much smaller. A corrupt file stops the run naming it (:class:`DataError`); the
caller removes the half-written file.

How photos become pixels (:func:`decode`, also what ``predict`` uses): the EXIF orientation is
applied; palette images are expanded; 16-bit images are scaled to 8 bits (not clipped); CMYK
becomes RGB; an alpha channel is composited over white (what a viewer shows on a page), then
dropped; a GIF, WebP or TIFF with several frames gives its first. ``resize`` says how a photo
becomes square: ``stretch`` (today's behaviour, the default), ``center_crop`` (the largest
centred square, then resized) or ``pad`` (the whole photo, resized to fit, on black borders).
"""

from __future__ import annotations

import logging
import os
import sys
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import (
    FIRST_COMPLETED,
    Executor,
    Future,
    ProcessPoolExecutor,
    ThreadPoolExecutor,
    wait,
)
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from search.engine.counts import DataError

log = logging.getLogger(__name__)

RESIZE_MODES = ("stretch", "center_crop", "pad")
GRAY_MODES = frozenset({"L", "1", "I;16", "I;16L", "I;16B", "I;16N", "I", "F", "LA", "La"})
ORIENTATION_TAG = 0x0112
CHUNK = 16  # photos per task: small enough to keep every worker busy to the end
LOG_EVERY_S = 10.0  # without a terminal: a progress line this often


@dataclass(frozen=True)
class Plan:
    """What every row becomes: colour mode, square side (None: the photos' own common size) and how
    a non-square photo is made square."""

    mode: str
    size: tuple[int, int] | None
    resize: str = "stretch"

    @property
    def channels(self) -> int:
        return 1 if self.mode == "L" else 3


# --------------------------------------------------------------------------- one photo


@contextmanager
def _named(path: Path) -> Iterator[None]:
    """Any failure to read ``path`` as a DataError naming it and the fix."""
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            yield
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise DataError(
            f"image {path} is too large to decode safely ({exc}). Fix: resize it to a sensible size "
            "or remove it"
        ) from exc
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError, MemoryError, EOFError) as exc:
        raise DataError(f"cannot read image {path} ({exc}). Fix: delete or replace the file") from exc


def read_image(path: Path) -> Any:
    """The fully decoded PIL image at ``path``, upright (its EXIF orientation applied; file closed).

    Raises:
        DataError: naming the file, if it is not a readable image or is too large to decode (a
            decompression bomb: more pixels than PIL's ``Image.MAX_IMAGE_PIXELS``, found from the
            header before anything is decoded).
    """
    from PIL import Image, ImageOps

    with _named(path), Image.open(path) as img:
        img.load()
        # Phone cameras store pixels as the sensor saw them and an EXIF Orientation tag that says
        # how to turn them; PIL ignores the tag, so apply it (a copy either way).
        return ImageOps.exif_transpose(img)


def probe(path: Path) -> tuple[str, tuple[int, int]]:
    """(mode, upright width x height) of the image at ``path``, from its header only."""
    from PIL import Image

    with _named(path), Image.open(path) as img:
        w, h = img.size
        turned = img.getexif().get(ORIENTATION_TAG, 1) in (5, 6, 7, 8)
        return img.mode, ((h, w) if turned else (w, h))


def plan_mode(modes: Sequence[str], paths: Sequence[Path], where: object) -> str:
    """``L`` when every image is grey, else ``RGB`` (warned about, naming an image that is not RGB,
    when the modes are mixed)."""
    counts = Counter(modes)
    if set(counts) <= GRAY_MODES:
        return "L"
    if not set(counts) <= {"RGB"}:
        other = next(path for path, mode in zip(paths, modes, strict=True) if mode != "RGB")
        log.warning(
            "imagefolder %s mixes image modes (%s, e.g. %s); converting all to RGB",
            where,
            ", ".join(f"{n} {m}" for m, n in sorted(counts.items())),
            other,
        )
    return "RGB"


def _eight_bit(img: Any) -> Any:
    """16-bit and 32-bit grey images scaled to 0..255 (PIL's own conversion clips them)."""
    from PIL import Image

    if not (img.mode.startswith("I") or img.mode == "F"):
        return img
    arr = np.asarray(img, dtype=np.float64)
    if img.mode.startswith("I;16") or arr.max(initial=0) > 255:
        arr = arr / 257.0
    return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), "L")


def to_mode(img: Any, mode: str) -> Any:
    """``img`` in ``mode`` (``L`` or ``RGB``): palette expanded, 16-bit scaled, alpha over white."""
    from PIL import Image

    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    img = _eight_bit(img)
    if img.mode in ("RGBA", "LA", "La", "RGBa", "PA"):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(white, rgba)
    return img if img.mode == mode else img.convert(mode)


def to_square(img: Any, side: tuple[int, int], resize: str) -> Any:
    """``img`` made ``side`` (w, h) as ``resize`` says (stretch, center_crop, pad)."""
    from PIL import Image

    bilinear = Image.Resampling.BILINEAR
    w, h = img.size
    if (w, h) == side:
        return img
    if resize == "center_crop":
        scale = max(side[0] / w, side[1] / h)
        cw, ch = min(w, round(side[0] / scale)), min(h, round(side[1] / scale))
        left, top = (w - cw) // 2, (h - ch) // 2
        return img.resize(side, bilinear, box=(left, top, left + cw, top + ch))
    if resize == "pad":
        scale = min(side[0] / w, side[1] / h)
        inner = (max(1, round(w * scale)), max(1, round(h * scale)))
        canvas = Image.new(img.mode, side)  # black
        canvas.paste(img.resize(inner, bilinear), ((side[0] - inner[0]) // 2, (side[1] - inner[1]) // 2))
        return canvas
    return img.resize(side, bilinear)


def decode(path: Path, plan: Plan) -> np.ndarray:
    """The photo at ``path`` as a uint8 ``[C, H, W]`` row of ``plan`` (upright; see the module)."""
    from PIL import Image, ImageOps

    with _named(path), Image.open(path) as img:
        if plan.size is not None and img.format == "JPEG":
            img.draft(None, plan.size)  # 1/2, 1/4 or 1/8 scale while still at least the target size
        img.load()
        upright = ImageOps.exif_transpose(img)
        pixels = to_mode(upright, plan.mode)
        if plan.size is not None:
            pixels = to_square(pixels, plan.size, plan.resize)
        arr = np.asarray(pixels, dtype=np.uint8)
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


# --------------------------------------------------------------------------- many photos


def _probe_chunk(paths: Sequence[Path]) -> list[tuple[str, tuple[int, int]]]:
    return [probe(p) for p in paths]


def _decode_chunk(target: str, offset: int, start: int, paths: Sequence[Path], plan: Plan) -> int:
    """Decode ``paths`` into rows ``start...`` of the ``.npy`` file ``target`` (data at ``offset``)."""
    fd = os.open(target, os.O_WRONLY)
    try:
        for i, path in enumerate(paths):
            row = decode(path, plan)
            os.pwrite(fd, np.ascontiguousarray(row).tobytes(), offset + (start + i) * row.nbytes)
    finally:
        os.close(fd)
    return len(paths)


def make_pool(workers: int, kind: str = "thread") -> Executor:
    """The ingestion's workers: threads by default (PIL lets go of the GIL while it decodes and
    resizes; threads measured faster than processes, docs/BENCHMARKS.md), or processes."""
    if kind == "thread":
        return ThreadPoolExecutor(workers)
    import multiprocessing

    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context(method))


class Progress:
    """A bar with rate and ETA on a terminal (tqdm), else a log line every :data:`LOG_EVERY_S`."""

    def __init__(self, total: int, what: str) -> None:
        from tqdm import tqdm

        self.total, self.what, self.done = total, what, 0
        self.t0 = self.last = time.monotonic()
        self.bar = tqdm(total=total, unit="img", desc=what, disable=None, file=sys.stderr, leave=False)

    def update(self, n: int) -> None:
        self.done += n
        self.bar.update(n)
        now = time.monotonic()
        if self.bar.disable and now - self.last >= LOG_EVERY_S and self.done < self.total:
            self.last = now
            rate = self.done / max(now - self.t0, 1e-9)
            eta = (self.total - self.done) / max(rate, 1e-9)
            log.info(
                "%s: %d/%d images, %.0f/s, about %.0f s left", self.what, self.done, self.total, rate, eta
            )

    def close(self) -> None:
        self.bar.close()


def _count(result: Any) -> int:
    """How many images a chunk's result stands for (a list of headers, or a count of rows)."""
    return len(result) if isinstance(result, list) else int(result)


def _run_chunks(
    pool: Executor | None, fn: Callable[..., Any], chunks: Sequence[tuple[Any, ...]], progress: Progress
) -> list[Any]:
    """``fn(*chunk)`` for every chunk, in order of the chunks; the first failure cancels the rest."""
    if pool is None:
        out = []
        for args in chunks:
            out.append(fn(*args))
            progress.update(_count(out[-1]))
        return out
    futures: dict[Future[Any], int] = {pool.submit(fn, *args): i for i, args in enumerate(chunks)}
    results: list[Any] = [None] * len(chunks)
    pending = set(futures)
    try:
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for fut in done:
                results[futures[fut]] = fut.result()  # a worker's DataError is raised here
                progress.update(_count(results[futures[fut]]))
    finally:
        for fut in pending:
            fut.cancel()
    return results


def _chunks(n: int, size: int = CHUNK) -> list[tuple[int, int]]:
    return [(start, min(start + size, n)) for start in range(0, n, size)]


def plan_for(
    paths: Sequence[Path], image_size: int | None, resize: str, pool: Executor | None, where: object
) -> Plan:
    """The set's :class:`Plan` from every header (an unreadable one raises DataError naming it)."""
    progress = Progress(len(paths), "reading headers")
    try:
        parts = _run_chunks(
            pool, _probe_chunk, [(paths[a:b],) for a, b in _chunks(len(paths), 256)], progress
        )
    finally:
        progress.close()
    headers = [h for part in parts for h in part]
    mode = plan_mode([m for m, _ in headers], paths, where)
    if image_size is not None:
        return Plan(mode, (image_size, image_size), resize)
    first = headers[0][1]
    for path, (_, size) in zip(paths, headers, strict=True):
        if size != first:
            raise DataError(
                f"image {path} is {size[0]}x{size[1]} but {paths[0]} is {first[0]}x{first[1]}. "
                "Fix: set data.image_size to resize all images"
            )
    return Plan(mode, first, resize)


def ingest(
    paths: Sequence[Path],
    target: Path,
    *,
    image_size: int | None,
    resize: str = "stretch",
    workers: int = 1,
    kind: str = "thread",
    where: object = "",
) -> tuple[int, int, int]:
    """Decode ``paths`` into a new uint8 ``.npy`` file at ``target``; returns its ``(C, H, W)``.

    Runs on ``workers`` threads (or processes, ``kind="process"``); one worker decodes inline.
    Raises DataError naming the first unreadable file (``target`` is then half-written: the
    caller, which wrote it under a temporary name, removes it).
    """
    if not paths:
        raise DataError(f"no images in {where}. Fix: add images")
    pool = make_pool(workers, kind) if workers > 1 and len(paths) > CHUNK else None
    try:
        plan = plan_for(paths, image_size, resize, pool, where)
        assert plan.size is not None
        shape = (len(paths), plan.channels, plan.size[1], plan.size[0])
        out = np.lib.format.open_memmap(target, mode="w+", dtype=np.uint8, shape=shape)
        offset = int(out.offset)
        del out  # only its header and size are written here; rows go in with pwrite
        t0 = time.perf_counter()
        progress = Progress(len(paths), "decoding images")
        try:
            chunks = [(str(target), offset, a, paths[a:b], plan) for a, b in _chunks(len(paths))]
            _run_chunks(pool, _decode_chunk, chunks, progress)
        finally:
            progress.close()
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
    seconds = time.perf_counter() - t0
    log.info(
        "decoded %d images from %s in %.1f s (%.0f/s, %d %s%s, mode %s)",
        len(paths),
        where,
        seconds,
        len(paths) / max(seconds, 1e-9),
        workers if pool is not None else 1,
        kind if pool is not None else "worker",
        "s" if pool is not None else "",
        plan.mode,
    )
    return shape[1], shape[2], shape[3]
