"""The counts known without decoding are the ones decoding and splitting give."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from search.config import DataConfig, SyntheticConfig
from search.engine.counts import BUILTIN, DataError, data_counts, folder_classes, take_count
from search.engine.data import Splits, load_splits, stratified_split


def _per_class(splits: Splits) -> list[tuple[int, int, int]]:
    """(train, val, test) images of each class, from the decoded splits."""
    k = splits.n_classes
    assert splits.test is not None

    def count(labels: torch.Tensor) -> list[int]:
        return torch.bincount(labels, minlength=k).tolist()

    return list(
        zip(count(splits.train.labels), count(splits.val.labels), count(splits.test.labels), strict=True)
    )


def _counted(cfg: DataConfig) -> list[tuple[int, int, int]]:
    return [(c.train, c.val, c.test) for c in data_counts(cfg).classes]


@pytest.mark.parametrize(
    ("n", "fraction", "take"),
    [
        (1, 0.2, 0),
        (2, 0.2, 1),
        (2, 0.9, 1),
        (3, 0.1, 1),
        (3, 0.5, 2),
        (5, 0.5, 2),
        (7, 0.5, 4),
        (20, 0.15, 3),
    ],
)
def test_take_count_rounds_half_to_even_and_leaves_one_each_side(n: int, fraction: float, take: int) -> None:
    assert take_count(n, fraction) == take


@pytest.mark.parametrize("fraction", [0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.5, 0.7])
def test_take_count_is_what_stratified_split_takes(fraction: float) -> None:
    sizes = [*range(1, 41), 45, 55, 65, 99, 101, 250]  # x.5 ties of the rounding included
    labels = torch.cat([torch.full((n,), i) for i, n in enumerate(sizes)])
    _, take = stratified_split(labels, fraction, seed=3)
    taken = torch.bincount(labels[take], minlength=len(sizes)).tolist()
    assert taken == [take_count(n, fraction) for n in sizes]


def test_digits_counts_are_the_decoded_ones(tmp_path: Path) -> None:
    from search.engine.data import _digits_arrays

    _, labels = _digits_arrays()
    assert list(BUILTIN["digits"][1]) == torch.bincount(torch.as_tensor(labels)).tolist()
    cfg = DataConfig(cache_dir=str(tmp_path), val_fraction=0.15, test_fraction=0.25)
    splits = load_splits(cfg, seed=5, with_test=True)
    assert _counted(cfg) == _per_class(splits)
    assert data_counts(cfg).images == 1797 and data_counts(cfg).val == len(splits.val)


def test_synthetic_counts_are_the_generated_ones(tmp_path: Path) -> None:
    cfg = DataConfig(
        dataset="synthetic",
        cache_dir=str(tmp_path),
        synthetic=SyntheticConfig(shape=(1, 4, 4), n_classes=7, n_samples=103),
    )
    assert _counted(cfg) == _per_class(load_splits(cfg, seed=0, with_test=True))


def test_official_test_datasets_keep_their_test_split() -> None:
    counts = data_counts(DataConfig(dataset="cifar10", test_fraction=0.3))
    assert counts.official_test and (counts.images, counts.test) == (60_000, 10_000)
    assert (counts.train, counts.val) == (45_000, 5_000)  # val_fraction 0.1 of the 50,000 training images
    mnist = data_counts(DataConfig(dataset="mnist"))
    assert (mnist.images, mnist.test, len(mnist.classes)) == (70_000, 10_000, 10)


def _write_folder(root: Path, sizes: dict[str, int]) -> Path:
    from PIL import Image

    for name, n in sizes.items():
        (root / name).mkdir(parents=True)
        for i in range(n):
            Image.new("L", (4, 4), i).save(root / name / f"{i}.png")
    return root


def test_folder_classes_count_without_opening_images(tmp_path: Path) -> None:
    root = _write_folder(tmp_path / "imgs", {"b": 3, "a": 2})
    (root / "a" / "notes.txt").write_text("not an image")
    (root / "a" / "broken.png").write_bytes(b"not a png: never opened here")
    (root / ".hidden").mkdir()
    assert folder_classes(root) == [("a", 3), ("b", 3)]
    (root / "empty").mkdir()
    with pytest.raises(DataError, match=r"class folder .*empty has no images"):
        folder_classes(root)


def test_imagefolder_counts_are_load_splits(tmp_path: Path) -> None:
    sizes = {"ant": 1, "bee": 2, "cat": 3, "dog": 7, "eel": 20, "fox": 33}
    root = _write_folder(tmp_path / "imgs", sizes)
    cfg = DataConfig(dataset="imagefolder", root=str(root), cache_dir=str(tmp_path / "cache"))
    assert [c.name for c in data_counts(cfg).classes] == list(sizes)
    assert _counted(cfg) == _per_class(load_splits(cfg, seed=0, with_test=True))
