"""Decoding a folder of photos: our ingestion against the sequential PIL loop a user writes by hand.

Generates N photos (1024x768 JPEGs, as tests/photos.py draws them; 25 drawn, the rest byte copies
under their own names) and decodes the first 250 and all 1,000 (``--sizes``; ``--big`` adds 10,000)
to ``--image-size`` squares, each method in its own subprocess, so each has its own peak RSS:

Peak RSS is read from ``/proc/self/status`` (VmHWM) in each subprocess; a worker's is its
``ru_maxrss`` (which counts the pages it shares with the process that forked it).

- ``loop``: open, convert to RGB, resize, ``np.asarray``, appended to a list and stacked at the end;
- ``ours (process)`` / ``ours (thread)``: :func:`search.engine.ingest.ingest` with ``--workers``
  processes or threads, writing into a ``.npy`` file (what ``load_splits`` does on a first run).

Prints, per method and size, wall seconds and peak RSS (the process, and its largest worker), then
per method the extra time and extra peak RSS of the larger size over the smaller one, and ours'
extra time as a share of the loop's (the issue's goal: at most 0.5 on 2 cores).

    python benchmarks/ingest.py                  # 250 and 1,000 photos
    python benchmarks/ingest.py --big            # also 10,000
    python benchmarks/ingest.py --quick          # seconds: 12 and 36 small photos
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

DISTINCT = 25  # photos drawn; the others are copies (decoding costs the same, drawing does not)
METHODS = ("loop", "process", "thread")


def make_folder(root: Path, n: int, size: tuple[int, int]) -> list[Path]:
    """``n`` JPEG photos of ``size`` under ``root`` (two classes), in a stable order."""
    from tests.photos import SHAPES, draw_photo, save_photo

    rng = random.Random(0)
    drawn = []
    for i in range(min(n, DISTINCT)):
        path = root / SHAPES[i % 2] / f"IMG_{i:05d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        save_photo(draw_photo(SHAPES[i % 2], size, rng), path, exif_rotated=False)
        drawn.append(path)
    for i in range(len(drawn), n):
        path = root / SHAPES[i % 2] / f"IMG_{i:05d}.jpg"
        shutil.copyfile(drawn[i % len(drawn)], path)
    return [root / SHAPES[i % 2] / f"IMG_{i:05d}.jpg" for i in range(n)]


def handwritten(paths: list[Path], side: int) -> None:
    """The loop a user writes: every photo decoded, converted, resized, kept, then stacked."""
    import numpy as np
    from PIL import Image

    arrays = []
    for path in paths:
        img = Image.open(path).convert("RGB").resize((side, side), Image.Resampling.BILINEAR)
        arrays.append(np.asarray(img).transpose(2, 0, 1))
    np.stack(arrays)


def child(method: str, folder: Path, n: int, side: int, workers: int) -> None:
    """Decode the first ``n`` photos of ``folder`` with ``method``; print seconds, peak RSS MiB of
    this process and of its largest worker."""
    import numpy  # noqa: F401  (imports are not what is timed)
    import PIL.Image  # noqa: F401

    paths = sorted(folder.rglob("*.jpg"), key=lambda p: p.name)[:n]
    if method != "loop":
        from search.engine.ingest import ingest  # imported before the clock starts, as PIL is
    t0 = time.perf_counter()
    if method == "loop":
        handwritten(paths, side)
    else:
        with tempfile.TemporaryDirectory() as out:
            ingest(paths, Path(out) / "x.npy", image_size=side, workers=workers, kind=method)
    seconds = time.perf_counter() - t0
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(f"{seconds:.3f} {peak_rss_mib():.1f} {kids:.1f}")


def peak_rss_mib() -> float:
    """This process's peak RSS: VmHWM (ru_maxrss would include the parent's, kept across exec)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(method: str, folder: Path, n: int, side: int, workers: int) -> tuple[float, float, float]:
    cmd = [sys.executable, __file__, "--child", method, str(folder), str(n), str(side), str(workers)]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout.split()
    return float(out[0]), float(out[1]), float(out[2])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs=2, default=[250, 1000], metavar=("SMALL", "LARGE"))
    parser.add_argument("--big", action="store_true", help="also 10,000 photos (minutes)")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--quick", action="store_true", help="12 and 36 photos of 256x192")
    parser.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        method, folder, n, side, workers = args.child
        child(method, Path(folder), int(n), int(side), int(workers))
        return
    from benchmarks._common import machine, table

    sizes = [12, 36] if args.quick else [*args.sizes, *([10_000] if args.big else [])]
    photo = (256, 192) if args.quick else (1024, 768)
    print(f"{machine()}; load {os.getloadavg()[0]:.2f}; {args.workers} worker(s)")
    print(f"photos {photo[0]}x{photo[1]} JPEG -> {args.image_size}x{args.image_size} RGB")
    with tempfile.TemporaryDirectory() as tmp:
        make_folder(Path(tmp), max(sizes), photo)
        runs = {
            (m, n): measure(m, Path(tmp), n, args.image_size, args.workers) for n in sizes for m in METHODS
        }
    rows = [
        [m, n, f"{runs[m, n][0]:.2f}", f"{runs[m, n][1]:.0f}", f"{runs[m, n][2]:.0f}"]
        for n in sizes
        for m in METHODS
    ]
    print(table(["method", "photos", "seconds", "peak RSS MiB", "largest worker MiB"], rows))
    small, large = sizes[0], sizes[-1]
    extra = {
        m: (runs[m, large][0] - runs[m, small][0], runs[m, large][1] - runs[m, small][1]) for m in METHODS
    }
    loop_extra = extra["loop"][0]
    rows = [
        [
            m,
            f"{extra[m][0]:.2f}",
            f"{extra[m][0] / loop_extra:.2f}" if loop_extra > 0 else "n/a",
            f"{extra[m][1]:.0f}",
        ]
        for m in METHODS
    ]
    print(f"{large - small} more photos ({large} vs {small}):")
    print(table(["method", "extra seconds", "x loop's extra", "extra peak RSS MiB"], rows))
    print(f"load after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
