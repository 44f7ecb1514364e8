from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from search.config import DataConfig, SyntheticConfig
from search.engine.data import DataError, cache_path, load_splits, stratified_folds, stratified_split
from tests.conftest import CIFAR_SAMPLE, run_cli, tiny_config, write_config


def test_stratified_split_is_seeded_and_balanced() -> None:
    labels = torch.arange(100) % 4
    keep, take = stratified_split(labels, 0.2, seed=1)
    assert len(take) == 20 and len(keep) == 80
    assert torch.bincount(labels[take]).tolist() == [5, 5, 5, 5]
    assert set(keep.tolist()).isdisjoint(take.tolist())
    assert torch.equal(stratified_split(labels, 0.2, seed=1)[1], take)
    assert not torch.equal(stratified_split(labels, 0.2, seed=2)[1], take)


def test_digits_splits_cached_uint8_and_disjoint(tmp_path: Path) -> None:
    cfg = DataConfig(cache_dir=str(tmp_path))
    s = load_splits(cfg, seed=0, with_test=True)
    assert s.train.images.dtype == torch.uint8 and s.in_shape == (1, 8, 8) and s.n_classes == 10
    assert s.test is not None
    assert len(s.train) + len(s.val) + len(s.test) == 1797
    assert len(s.test) == pytest.approx(0.2 * 1797, abs=10)
    assert cache_path(cfg).exists()
    # no image appears in two splits (digits has a few exact duplicates, so compare by index via a cache)
    again = load_splits(cfg, seed=0, with_test=True)
    assert torch.equal(again.val.images, s.val.images) and torch.equal(again.test.images, s.test.images)


def test_digits_read_without_sklearn_match_load_digits() -> None:
    """The bundled CSV read directly (no scikit-learn import) gives load_digits' images and labels."""
    from sklearn.datasets import load_digits

    from search.engine.data import _digits_arrays, digits_csv

    assert digits_csv() is not None
    images, labels = _digits_arrays()
    bunch = load_digits()
    assert images.shape == (1797, 8, 8) and (images == bunch.images).all()
    assert labels.dtype.kind == "i" and (labels == bunch.target).all()


def test_search_never_sees_the_test_split(tmp_path: Path) -> None:
    s = load_splits(DataConfig(cache_dir=str(tmp_path)), seed=0)
    assert s.test is None
    full = load_splits(DataConfig(cache_dir=str(tmp_path)), seed=0, with_test=True)
    assert torch.equal(s.train.images, full.train.images)  # same train/val with or without the test


def test_imagefolder_cifar_sample(tmp_path: Path) -> None:
    cfg = DataConfig(dataset="imagefolder", root=str(CIFAR_SAMPLE), cache_dir=str(tmp_path))
    s = load_splits(cfg, seed=0, with_test=True)
    assert s.in_shape == (3, 32, 32)
    assert s.classes[0] == "airplane" and s.n_classes == 10
    assert s.test is not None and len(s.train) + len(s.val) + len(s.test) == 200
    assert torch.bincount(s.test.labels).min() >= 1


def test_imagefolder_resize(tmp_path: Path) -> None:
    cfg = DataConfig(dataset="imagefolder", root=str(CIFAR_SAMPLE), cache_dir=str(tmp_path), image_size=16)
    assert load_splits(cfg, seed=0).in_shape == (3, 16, 16)


def test_imagefolder_faults_name_the_file(tmp_path: Path) -> None:
    root = tmp_path / "imgs"
    shutil.copytree(CIFAR_SAMPLE / "cat", root / "cat")
    cfg = DataConfig(dataset="imagefolder", root=str(root), cache_dir=str(tmp_path / "cache"))
    with pytest.raises(DataError, match="1 class folder"):
        load_splits(cfg, seed=0)
    (root / "dog").mkdir()
    with pytest.raises(DataError, match=r"class folder .*dog has no images"):
        load_splits(cfg, seed=0)
    shutil.copy(next((CIFAR_SAMPLE / "dog").glob("*.png")), root / "dog" / "a.png")
    (root / "dog" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match=r"cannot read image .*broken\.png"):
        load_splits(cfg, seed=0)


def test_synthetic_is_learnable_shape(tmp_path: Path) -> None:
    cfg = DataConfig(
        dataset="synthetic",
        cache_dir=str(tmp_path),
        synthetic=SyntheticConfig(shape=(1, 12, 10), n_classes=3, n_samples=90),
    )
    s = load_splits(cfg, seed=0)
    assert s.in_shape == (1, 12, 10) and s.n_classes == 3


# --------------------------------------------------------------------------- round two: faults


def _bomb_png(path: Path, side: int = 20000) -> Path:
    """A PNG whose header claims ``side`` x ``side`` pixels (a decompression bomb), in 60 bytes."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b""))
        + chunk(b"IEND", b"")
    )
    return path


def _folder(root: Path, names: list[str | bytes]) -> Path:
    from PIL import Image

    for name in names:
        folder = Path(os.fsdecode(name)) if isinstance(name, bytes) else Path(name)
        (root / folder).mkdir(parents=True)
        for i in range(6):
            Image.new("L", (8, 8), color=30 * i + len(str(folder))).save(root / folder / f"{i}.png")
    return root


@pytest.mark.parametrize("side", [20000, 10000])  # past PIL's error limit, and past its warning one
def test_a_decompression_bomb_in_an_imagefolder_exits_2(workdir: Path, side: int) -> None:
    root = _folder(workdir / "imgs", ["a", "b"])
    bomb = _bomb_png(root / "a" / "bomb.png", side)
    cfg = tiny_config(data={"dataset": "imagefolder", "root": str(root)}, train={"epochs": 1, "patience": 1})
    write_config(workdir / "c.yaml", cfg)
    proc = run_cli("run", "c.yaml", "--device", "cpu", cwd=workdir, check=2)
    assert proc.stderr.count("error:") == 1 and "Traceback" not in proc.stderr
    assert f"image {bomb} is too large to decode safely" in proc.stderr
    assert not (workdir / "storage" / "studies.db").exists()


@pytest.mark.parametrize("content", ["random", "pickled", "list", "text", "wrong-dtype"])
def test_an_unreadable_data_cache_is_rebuilt(
    tmp_path: Path, content: str, caplog: pytest.LogCaptureFixture
) -> None:
    import io
    import pickle

    cfg = DataConfig(dataset="digits", cache_dir=str(tmp_path / "cache"))
    first = load_splits(cfg, seed=0)
    path = cache_path(cfg)
    buf = io.BytesIO()
    torch.save({"images": torch.zeros(3, 1, 8, 8), "labels": torch.zeros(3), "classes": ["a"]}, buf)
    path.write_bytes(
        {
            "random": bytes(range(256)) * 9,
            "pickled": pickle.dumps({"images": print}, protocol=2),
            "list": pickle.dumps([1, 2], protocol=2),
            "text": b"hello\n",
            "wrong-dtype": buf.getvalue(),
        }[content]
    )
    again = load_splits(cfg, seed=0)
    assert torch.equal(again.train.images, first.train.images)
    assert "data cache" in caplog.text and "decoding again" in caplog.text
    assert torch.load(path, weights_only=True)["images"].dtype == torch.uint8  # replaced by a good one
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]


def test_a_corrupt_cache_through_the_cli_is_rebuilt(workdir: Path) -> None:
    write_config(
        workdir / "c.yaml",
        tiny_config(train={"epochs": 1, "patience": 1}, search={**tiny_config()["search"], "n_trials": 1}),
    )
    run_cli("run", "c.yaml", "--device", "cpu", cwd=workdir, check=0)
    (cache,) = (workdir / "storage" / "data" / "cache").glob("*.pt")
    cache.write_bytes(bytes(range(256)) * 40)
    proc = run_cli("run", "c.yaml", "--device", "cpu", "--n-trials", "2", cwd=workdir, check=0)
    assert "ignoring unreadable data cache" in proc.stderr and "Traceback" not in proc.stderr


def test_non_utf8_class_folder_names_become_printable(tmp_path: Path) -> None:
    root = _folder(tmp_path / "imgs", [b"caf\xe9", b"caf\xe8", "b"])
    cfg = DataConfig(dataset="imagefolder", root=str(root), cache_dir=str(tmp_path / "cache"))
    classes = load_splits(cfg, seed=0).classes
    assert classes == ("b", "caf\\xe8", "caf\\xe9")  # distinct, and UTF-8 encodable
    assert all(c.encode("utf-8") for c in classes)


def test_a_photo_stored_rotated_with_an_exif_tag_is_read_upright(tmp_path: Path) -> None:
    """Phone cameras store sideways pixels plus an Orientation tag; the decoder applies the tag, so
    training, validate and predict see the photo as people do."""
    import random

    from PIL import Image

    from search.engine.data import read_image
    from tests.photos import draw_photo, save_photo

    picture = draw_photo("triangle", (320, 240), random.Random(0))
    save_photo(picture, tmp_path / "upright.jpg", exif_rotated=False)
    save_photo(picture, tmp_path / "tagged.jpg", exif_rotated=True)
    assert Image.open(tmp_path / "tagged.jpg").size == (240, 320)  # as stored: sideways
    upright = np.asarray(read_image(tmp_path / "upright.jpg"), dtype=np.float32)
    tagged = np.asarray(read_image(tmp_path / "tagged.jpg"), dtype=np.float32)
    assert tagged.shape == upright.shape == (240, 320, 3)
    assert np.abs(tagged - upright).mean() < 3.0  # the same picture, up to JPEG noise
    sideways = np.asarray(Image.open(tmp_path / "tagged.jpg").convert("RGB").resize((320, 240)), np.float32)
    assert np.abs(sideways - upright).mean() > 3 * np.abs(tagged - upright).mean()


def test_stratified_folds_partition_each_class_evenly() -> None:
    labels = torch.tensor([0] * 10 + [1] * 7 + [2] * 5)
    folds = stratified_folds(labels, 3, seed=5)
    joined = torch.cat(folds)
    assert sorted(joined.tolist()) == list(range(len(labels)))  # disjoint and complete
    for cls in range(3):
        counts = [int((labels[f] == cls).sum()) for f in folds]
        assert max(counts) - min(counts) <= 1
    sizes = [len(f) for f in folds]
    assert max(sizes) - min(sizes) <= 1
    assert all(torch.equal(a, b) for a, b in zip(folds, stratified_folds(labels, 3, seed=5), strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(folds, stratified_folds(labels, 3, seed=6), strict=True))
