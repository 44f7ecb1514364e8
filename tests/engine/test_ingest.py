"""Image folders decoded into the memory-mapped cache: modes and formats, resize modes, parallel
workers, atomic writes (a cache interrupted mid-write), one cache shared by two processes."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, features

from search.config import DataConfig
from search.engine.cache import CacheFiles
from search.engine.counts import DataError
from search.engine.data import cache_path, load_splits
from search.engine.ingest import Plan, decode, ingest
from tests.conftest import REPO


def _cfg(root: Path, cache: Path, **kw: object) -> DataConfig:
    return DataConfig(dataset="imagefolder", root=str(root), cache_dir=str(cache), **kw)  # type: ignore[arg-type]


def _all_rows(cfg: DataConfig) -> tuple[torch.Tensor, list[str]]:
    """Every decoded row, in file order (from the cache the splits map), and the class names."""
    s = load_splits(cfg, seed=0)
    return s.train.base, list(s.classes)


def _mixed(root: Path) -> dict[str, tuple[int, int, int]]:
    """One small image per mode and format under ``root/<class>/``; returns file -> expected RGB."""
    a, b = root / "a", root / "b"
    a.mkdir(parents=True)
    b.mkdir(parents=True)
    want: dict[str, tuple[int, int, int]] = {}

    def put(folder: Path, name: str, img: Image.Image, rgb: tuple[int, int, int], **save: object) -> None:
        img.save(folder / name, **save)  # type: ignore[arg-type]
        want[name] = rgb

    put(a, "rgb.jpg", Image.new("RGB", (12, 10), (200, 30, 30)), (200, 30, 30), quality=95)
    put(a, "cmyk.jpg", Image.new("CMYK", (12, 10), (0, 255, 255, 0)), (255, 0, 0), quality=95)
    put(a, "gray16.png", Image.fromarray(np.full((10, 12), 32896, np.uint16)), (128, 128, 128))
    pal = Image.new("P", (12, 10), 1)
    pal.putpalette([0, 0, 0, 10, 200, 10] + [0] * 762)
    put(a, "palette.png", pal, (10, 200, 10))
    put(b, "rgba.png", Image.new("RGBA", (12, 10), (255, 0, 0, 0)), (255, 255, 255))  # clear: white
    put(b, "la.png", Image.new("LA", (12, 10), (0, 255)), (0, 0, 0))  # opaque black
    put(b, "bmp.bmp", Image.new("RGB", (12, 10), (0, 0, 250)), (0, 0, 250))
    put(b, "tiff.tif", Image.new("RGB", (12, 10), (40, 80, 120)), (40, 80, 120))
    frames = [Image.new("P", (12, 10), i) for i in (1, 2)]
    for f in frames:
        f.putpalette([0, 0, 0, 250, 250, 0, 0, 250, 250] + [0] * 759)
    frames[0].save(b / "anim.gif", save_all=True, append_images=frames[1:])
    want["anim.gif"] = (250, 250, 0)  # the first frame
    if features.check("webp"):
        put(b, "webp.webp", Image.new("RGB", (12, 10), (90, 90, 30)), (90, 90, 30), lossless=True)
    return want


def test_mixed_modes_and_formats_become_rgb_as_a_viewer_shows_them(tmp_path: Path) -> None:
    want = _mixed(tmp_path / "imgs")
    cfg = _cfg(tmp_path / "imgs", tmp_path / "cache", image_size=4)
    rows, classes = _all_rows(cfg)
    assert classes == ["a", "b"] and rows.shape == (len(want), 3, 4, 4) and rows.dtype == torch.uint8
    order = sorted(n for n in want if (tmp_path / "imgs" / "a" / n).exists())
    order += sorted(n for n in want if (tmp_path / "imgs" / "b" / n).exists())
    for name, row in zip(order, rows, strict=True):
        got = row.float().mean(dim=(1, 2))
        assert torch.allclose(got, torch.tensor(want[name], dtype=torch.float32), atol=3), name


@pytest.mark.parametrize(
    ("resize", "expect"),
    [
        ("stretch", [0, 255, 255, 255]),  # the whole width, squeezed: the black quarter shows
        ("center_crop", [255, 255, 255, 255]),  # the middle square: all white
        ("pad", None),  # the whole photo on black bars above and below
    ],
)
def test_resize_modes(tmp_path: Path, resize: str, expect: list[int] | None) -> None:
    pixels = np.zeros((20, 40), np.uint8)
    pixels[:, 10:] = 255  # black left 10 columns, white right 30
    Image.fromarray(pixels).save(tmp_path / "wide.png")
    row = decode(tmp_path / "wide.png", Plan("L", (4, 4), resize))[0]
    assert row.shape == (4, 4)
    if expect is None:
        assert (row[0] == 0).all() and (row[-1] == 0).all()  # the bars
        assert row[1:3, -1].min() == 255 and row[1:3, 0].max() < 128
    else:
        assert [int(v > 127) * 255 for v in row[2]] == expect


def test_a_photo_tagged_90_degrees_is_cached_upright(tmp_path: Path) -> None:
    import random

    from tests.photos import draw_photo, save_photo

    picture = draw_photo("triangle", (64, 48), random.Random(0))
    for cls in ("a", "b"):
        (tmp_path / "imgs" / cls).mkdir(parents=True)
        save_photo(picture, tmp_path / "imgs" / cls / "1upright.jpg", exif_rotated=False)
        save_photo(picture, tmp_path / "imgs" / cls / "2tagged.jpg", exif_rotated=True)
    rows, _ = _all_rows(_cfg(tmp_path / "imgs", tmp_path / "cache"))  # no image_size: 64x48 each
    assert rows.shape == (4, 3, 48, 64)
    upright, tagged = rows[0].float(), rows[1].float()
    assert (upright - tagged).abs().mean() < 3.0


def _photos(root: Path, n: int = 40) -> Path:
    from tests.photos import make_photos

    return make_photos(root, classes=2, per_class=n // 2)


@pytest.mark.parametrize("kind", ["process", "thread"])
def test_parallel_workers_write_what_one_worker_writes(tmp_path: Path, kind: str) -> None:
    files = sorted(_photos(tmp_path / "imgs").rglob("*.jpg"))
    ingest(files, tmp_path / "one.npy", image_size=16, workers=1)
    ingest(files, tmp_path / "two.npy", image_size=16, workers=2, kind=kind)
    one, two = np.load(tmp_path / "one.npy"), np.load(tmp_path / "two.npy")
    assert one.shape == (40, 3, 16, 16) and np.array_equal(one, two)


@pytest.mark.parametrize("workers", [1, 2])
def test_a_corrupt_photo_is_named_and_nothing_is_written(tmp_path: Path, workers: int) -> None:
    root = _photos(tmp_path / "imgs")
    bad = root / "squares" / "IMG_0007.jpg"
    bad.write_bytes(bad.read_bytes()[:600])  # a truncated JPEG: its header reads, its data does not
    cfg = _cfg(root, tmp_path / "cache", image_size=16)
    torch.set_num_threads(workers)
    try:
        with pytest.raises(DataError, match=rf"cannot read image {bad}"):
            load_splits(cfg, seed=0)
    finally:
        torch.set_num_threads(1)
    assert not (tmp_path / "cache").exists()


def test_a_cache_interrupted_mid_write_is_ignored_and_rebuilt(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = _photos(tmp_path / "imgs", 8)
    cfg = _cfg(root, tmp_path / "cache", image_size=8)
    first = load_splits(cfg, seed=0).train.images.clone()
    npy = cache_path(cfg)
    files = CacheFiles(npy.with_suffix(""))
    # a writer killed mid-write left its temporary file; the cache itself got truncated
    files.temp(pid=999_999).write_bytes(npy.read_bytes()[:300])
    npy.write_bytes(npy.read_bytes()[:300])
    again = load_splits(cfg, seed=0)
    assert "ignoring unreadable data cache" in caplog.text
    assert torch.equal(again.train.images, first)
    assert sorted(p.name for p in npy.parent.iterdir()) == sorted([npy.name, files.meta.name])
    # a .npy whose .json never got written (killed between the two) is not a cache either
    files.meta.unlink()
    assert torch.equal(load_splits(cfg, seed=0).train.images, first)
    assert json.loads(files.meta.read_text())["shape"] == [8, 3, 8, 8]


SHARER = """
import logging, sys
logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
from search.config import DataConfig
from search.engine.data import load_splits
cfg = DataConfig(dataset="imagefolder", root=sys.argv[1], cache_dir=sys.argv[2], image_size=16)
s = load_splits(cfg, seed=0)
maps = open("/proc/self/maps").read()
print([line.split()[-1] for line in maps.splitlines() if line.endswith(".npy")])
print(int(s.train.images.sum()))
"""


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="reads /proc/self/maps")
def test_two_processes_share_one_cache_decoded_once(tmp_path: Path) -> None:
    root = _photos(tmp_path / "imgs", 24)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-c", textwrap.dedent(SHARER), str(root), str(tmp_path / "cache")]
    procs = [
        subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    (npy,) = (tmp_path / "cache").glob("*.npy")
    lines = [out.splitlines() for out, _ in outs]
    for mapped, _ in lines:
        assert mapped == str([str(npy)])  # each maps the one cache file (read-only), no copy of it
    assert lines[0][1] == lines[1][1] != "0"  # the same pixels
    decoded = sum(err.count("decoding 24 images") for _, err in outs)
    assert decoded == 1, [err for _, err in outs]  # the second waited for the first, then mapped it


def test_without_a_terminal_progress_is_a_log_line_with_rate_and_eta(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import logging

    from search.engine import ingest as ingest_module

    monkeypatch.setattr(ingest_module, "LOG_EVERY_S", 0.0)  # a line after every chunk
    files = sorted(_photos(tmp_path / "imgs").rglob("*.jpg"))
    with caplog.at_level(logging.INFO, logger="search.engine.ingest"):
        ingest(files, tmp_path / "x.npy", image_size=8)
    assert re.search(r"decoding images: 16/40 images, \d+/s, about \d+ s left", caplog.text)
    assert re.search(r"decoded 40 images from .* in [\d.]+ s \(\d+/s", caplog.text)


def test_photos_of_different_sizes_without_an_image_size_name_both(tmp_path: Path) -> None:
    for cls, size in (("a", (8, 6)), ("b", (6, 8))):
        (tmp_path / "imgs" / cls).mkdir(parents=True)
        Image.new("RGB", size).save(tmp_path / "imgs" / cls / "0.png")
    with pytest.raises(
        DataError, match=r"image \S*b/0\.png is 6x8 but \S*a/0\.png is 8x6\. Fix: set data\.image_size"
    ):
        load_splits(_cfg(tmp_path / "imgs", tmp_path / "cache"), seed=0)
    assert not (tmp_path / "cache").exists()


def test_the_cache_key_follows_the_files_and_the_resize(tmp_path: Path) -> None:
    root = _photos(tmp_path / "imgs", 8)
    cfg = _cfg(root, tmp_path / "cache", image_size=8)
    first = cache_path(cfg)
    assert cache_path(_cfg(root, tmp_path / "cache", image_size=8, resize="pad")) != first
    photo = next(root.rglob("*.jpg"))
    os.utime(photo, (photo.stat().st_atime, photo.stat().st_mtime + 10))  # a photo edited in place
    assert cache_path(cfg) != first
    touched = cache_path(cfg)
    photo.rename(photo.with_name("renamed.jpg"))
    assert cache_path(cfg) not in (first, touched)
