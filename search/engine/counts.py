"""How many images a dataset holds, per class and per split, known without decoding an image.

Imports no torch, so ``search validate`` stays quick: an imagefolder is walked (its checks are the
ones ``load_splits`` makes before decoding), the built-in datasets' counts are constants, and the
split sizes follow :func:`take_count`, the rounding :func:`search.engine.data.stratified_split`
uses. The test split comes off first (unless the dataset has an official one), then validation
off the rest, as in ``load_splits``.
"""

from __future__ import annotations

import csv
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from search.config import DataConfig
from search.errors import InputError

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"})


class DataError(InputError):
    """A dataset that cannot be used: names the file or folder and what to do."""


# --------------------------------------------------------------------------- the built-in datasets

_DIGITS = tuple(str(c) for c in range(10))
_MNIST = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
_FASHION: tuple[str, ...] = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat")
_FASHION += ("Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
_CIFAR10 = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")

# (class names, images per class, official test images per class or None): torchvision's and
# scikit-learn's own counts (tests/engine/test_counts.py checks digits against the decoded labels)
BUILTIN: dict[str, tuple[tuple[str, ...], tuple[int, ...], tuple[int, ...] | None]] = {
    "digits": (_DIGITS, (178, 182, 177, 183, 181, 182, 181, 179, 174, 180), None),
    "mnist": (
        tuple(f"{i} - {word}" for i, word in enumerate(_MNIST)),
        (5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949),
        (980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009),
    ),
    "fashion_mnist": (_FASHION, (6000,) * 10, (1000,) * 10),
    "cifar10": (_CIFAR10, (5000,) * 10, (1000,) * 10),
}


BUILTIN_HW = {"digits": (8, 8), "mnist": (28, 28), "fashion_mnist": (28, 28), "cifar10": (32, 32)}


def input_hw(cfg: DataConfig) -> tuple[int, int] | None:
    """(height, width) of the images the net will see, without decoding any: a built-in dataset's
    own, synthetic's shape, ``data.image_size``, else an imagefolder's first image's header (None
    when it cannot be read: the run then names the file). Imports no image library."""
    if cfg.dataset in BUILTIN_HW:
        return BUILTIN_HW[cfg.dataset]
    if cfg.dataset == "synthetic":
        return cfg.synthetic.shape[1], cfg.synthetic.shape[2]
    if cfg.image_size is not None:
        return cfg.image_size, cfg.image_size
    try:
        first = labelled_files(cfg)[1][0][0]  # the labels CSV's first image, or the first folder's
        with first.open("rb") as f:
            return header_hw(f.read(1 << 16))
    except (OSError, IndexError, DataError):
        return None


def header_hw(head: bytes) -> tuple[int, int] | None:
    """(height, width) from the first bytes of a PNG, GIF, BMP or JPEG file (None for other kinds
    or a header that does not say); no image library is loaded."""
    if head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR":
        return int.from_bytes(head[20:24], "big"), int.from_bytes(head[16:20], "big")
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return int.from_bytes(head[8:10], "little"), int.from_bytes(head[6:8], "little")
    if head[:2] == b"BM" and len(head) >= 26:
        return abs(int.from_bytes(head[22:26], "little", signed=True)), int.from_bytes(head[18:22], "little")
    if head[:2] == b"\xff\xd8":
        return _jpeg_hw(head)
    return None


def _jpeg_hw(head: bytes) -> tuple[int, int] | None:
    """A JPEG's size from its first start-of-frame marker (SOF0-SOF15 but DHT, JPG and DAC)."""
    i = 2
    while i + 9 < len(head):
        if head[i] != 0xFF:
            return None
        marker = head[i + 1]
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            return int.from_bytes(head[i + 5 : i + 7], "big"), int.from_bytes(head[i + 7 : i + 9], "big")
        i += 2 + int.from_bytes(head[i + 2 : i + 4], "big")
    return None


# --------------------------------------------------------------------------- image folders


def class_dirs(root: Path) -> list[Path]:
    """An imagefolder's class folders, sorted (hidden ones skipped); label i is the i-th."""
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def image_files(folder: Path) -> list[Path]:
    """The image files under ``folder`` (any depth), sorted."""
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def check_folder(root: Path) -> None:
    """Raises DataError (naming the folder and the fix) unless ``root`` is a folder of at least two
    class folders that each hold an image."""
    folder_classes(root)


def folder_classes(root: Path) -> list[tuple[str, int]]:
    """(printable class name, image count) of each class folder of ``root``, in label order; no
    image is opened.

    Raises:
        DataError: ``root`` is not a folder, holds fewer than two class folders, or a class folder
            holds no image (what ``load_splits`` refuses).
    """
    if not root.is_dir():
        raise DataError(
            f"data.root {root} is not a folder. Fix: point data.root at a folder with one "
            "sub-folder of images per class"
        )
    classes = class_dirs(root)
    if len(classes) < 2:
        raise DataError(
            f"data.root {root} has {len(classes)} class folder(s); a classifier needs at least 2. "
            "Fix: put each class's images in its own sub-folder"
        )
    counts = []
    for folder in classes:
        n = len(image_files(folder))
        if not n:
            raise DataError(
                f"class folder {folder} has no images ({', '.join(sorted(IMAGE_SUFFIXES))}). "
                "Fix: add images or remove the folder"
            )
        counts.append((printable_name(folder.name), n))
    return counts


def folder_files(root: Path) -> tuple[list[str], list[tuple[Path, int]]]:
    """(class names, (image, label) pairs) of an imagefolder, in label order; nothing is opened."""
    check_folder(root)
    classes = class_dirs(root)
    files = [(path, label) for label, folder in enumerate(classes) for path in image_files(folder)]
    return [printable_name(p.name) for p in classes], files


def csv_rows(csv_path: Path) -> list[tuple[int, Path, str]]:
    """(row number, image path, label) of each row of a ``path,label`` CSV; paths are relative to
    the CSV's folder. A first row ``path,label`` is a header and skipped; blank rows are skipped.

    Raises:
        DataError: the CSV cannot be read, or a row (named by its number, counted from 1 as a
            spreadsheet does) lacks a path or a label, or names a missing file or not an image.
    """
    fix = "Fix: one row per image: path (relative to the CSV's folder),label"
    try:
        with csv_path.open(newline="", encoding="utf-8-sig") as f:
            table = list(csv.reader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"cannot read data.labels_csv {csv_path} ({exc}). {fix}") from exc
    rows = []
    for number, row in enumerate(table, start=1):
        cells = [c.strip() for c in row]
        if not any(cells) or (number == 1 and [c.lower() for c in cells] == ["path", "label"]):
            continue
        where = f"data.labels_csv {csv_path} row {number}"
        if len(cells) != 2:
            raise DataError(f"{where} has {len(cells)} column(s), not 2 (path,label). {fix}")
        name, label = cells
        if not name or not label:
            raise DataError(f"{where} has an empty {'path' if not name else 'label'}. {fix}")
        path = csv_path.parent / name
        if not path.is_file():
            raise DataError(f"{where}: image {path} not found. Fix: correct the path or remove the row")
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            raise DataError(
                f"{where}: {path} is not an image ({', '.join(sorted(IMAGE_SUFFIXES))}). "
                "Fix: correct the path or remove the row"
            )
        rows.append((number, path, label))
    return rows


def csv_files(csv_path: Path) -> tuple[list[str], list[tuple[Path, int]]]:
    """(class names, (image, label) pairs) of a labels CSV: the classes are its labels, sorted.

    Raises:
        DataError: a bad row (see :func:`csv_rows`), or fewer than two labels.
    """
    rows = csv_rows(csv_path)
    classes = sorted({label for _, _, label in rows})
    if len(classes) < 2:
        raise DataError(
            f"data.labels_csv {csv_path} has {len(classes)} label(s); a classifier needs at least 2. "
            "Fix: label the images with their classes"
        )
    index = {name: i for i, name in enumerate(classes)}
    return classes, [(path, index[label]) for _, path, label in rows]


def labelled_files(cfg: DataConfig) -> tuple[list[str], list[tuple[Path, int]]]:
    """(class names, (image, label) pairs) of an imagefolder: its ``labels_csv`` when set, else
    its class folders."""
    if cfg.labels_csv is not None:
        return csv_files(Path(cfg.labels_csv))
    return folder_files(Path(cfg.root))


def printable_name(name: str) -> str:
    """A folder name as text that can be printed and written as UTF-8 anywhere: bytes that are not
    UTF-8 (which Python keeps as lone surrogates) become ``\\xNN`` escapes, so names stay distinct."""
    try:
        return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a surrogate no file system makes: escape it as it is
        return name.encode("utf-8", "backslashreplace").decode("utf-8")


# --------------------------------------------------------------------------- splits


def take_count(n: int, fraction: float) -> int:
    """How many of a class's ``n`` images a split of ``fraction`` takes: ``fraction * n`` rounded,
    and at least one for each side when the class has two or more."""
    take = round(fraction * n)
    if n >= 2:
        take = min(max(take, 1), n - 1)
    return take


def steps_per_epoch(n: int, batch_size: int) -> int:
    """Optimizer steps in one epoch over ``n`` images (full batches only)."""
    batch = min(batch_size, n)
    return n // batch if batch >= 2 else 0  # BatchNorm needs two samples in training mode


@dataclass(frozen=True)
class ClassCount:
    """One class: its images, and how many of them each split gets."""

    name: str
    images: int
    train: int
    val: int
    test: int


@dataclass(frozen=True)
class DataCounts:
    """A dataset's classes with their split sizes (the official test split counted in ``test``)."""

    dataset: str
    classes: tuple[ClassCount, ...]
    official_test: bool

    @property
    def images(self) -> int:
        return sum(c.images for c in self.classes)

    @property
    def train(self) -> int:
        return sum(c.train for c in self.classes)

    @property
    def val(self) -> int:
        return sum(c.val for c in self.classes)

    @property
    def test(self) -> int:
        return sum(c.test for c in self.classes)


def class_split(cfg: DataConfig, name: str, images: int, official_test: int | None = None) -> ClassCount:
    """The train/val/test sizes ``load_splits`` gives a class of ``images`` images; with
    ``official_test``, the dataset's own test images of the class (``images`` are then all train+val)."""
    if official_test is None:
        test = take_count(images, cfg.test_fraction)
        rest = images - test
    else:
        test, rest = official_test, images
    val = take_count(rest, cfg.val_fraction)
    return ClassCount(name, rest + test, rest - val, val, test)


def _per_class(cfg: DataConfig) -> tuple[Sequence[str], Sequence[int], Sequence[int] | None]:
    """(class names, images per class, official test images per class or None)."""
    if cfg.dataset == "imagefolder" and cfg.labels_csv is not None:
        classes, files = csv_files(Path(cfg.labels_csv))
        per_label = Counter(label for _, label in files)
        return classes, [per_label[i] for i in range(len(classes))], None
    if cfg.dataset == "imagefolder":
        names, counts = zip(*folder_classes(Path(cfg.root)), strict=True)
        return names, counts, None
    if cfg.dataset == "synthetic":
        k, n = cfg.synthetic.n_classes, cfg.synthetic.n_samples  # labels are arange(n) % k
        return [f"class{i}" for i in range(k)], [n // k + (i < n % k) for i in range(k)], None
    if cfg.dataset in BUILTIN:
        return BUILTIN[cfg.dataset]
    raise DataError(f"unknown dataset {cfg.dataset!r}")


def data_counts(cfg: DataConfig) -> DataCounts:
    """Every class of the configured dataset with the split sizes ``load_splits`` will give it.

    Raises:
        DataError: an imagefolder that ``load_splits`` would refuse (see :func:`folder_classes`).
    """
    names, counts, tests = _per_class(cfg)
    classes = tuple(
        class_split(cfg, name, n, None if tests is None else tests[i])
        for i, (name, n) in enumerate(zip(names, counts, strict=True))
    )
    return DataCounts(cfg.dataset, classes, official_test=tests is not None)
