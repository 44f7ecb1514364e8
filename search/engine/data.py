"""Datasets decoded once into uint8 tensors, cached on disk, and split reproducibly.

Every dataset ends up as ``uint8 [N, C, H, W]`` images and ``int64 [N]`` labels. Decoding
(PIL, torchvision, scikit-learn) happens once; the result is cached under ``data.cache_dir``
and re-used by every trial and every later run: an imagefolder as a ``.npy`` file decoded in
parallel and memory-mapped read-only by every reader (:mod:`search.engine.ingest`,
:mod:`search.engine.cache`), the other datasets as tensors (``.pt``). A split is an index into
those images, never a copy (:class:`ImageSet`). Splits are seeded and stratified: the test split
is the official one where the dataset has it (MNIST, Fashion-MNIST, CIFAR-10), otherwise a held-out
``test_fraction``; validation is carved out of the training split. Search code asks for
``with_test=False`` and never sees the test images.
"""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from search.config import DataConfig
from search.engine.cache import CacheFiles
from search.engine.cache import build as build_cache
from search.engine.cache_key import cache_path, cache_stem, folders_written
from search.engine.counts import DataError, labelled_files, printable_name, take_count
from search.engine.ingest import ingest, read_image
from search.store.files import UnreadableFile, load_tensors, save_atomic

log = logging.getLogger(__name__)

# they live in search.engine.counts, cache_key (no torch there) and ingest; re-exported
__all__ = ["DataError", "cache_path", "folders_written", "printable_name", "read_image"]


@dataclass(frozen=True)
class ImageSet:
    """Images (uint8 NCHW) and their labels (int64): rows ``index`` of ``base`` (all of it when
    ``index`` is None).

    ``base`` may be the memory-mapped data cache, shared by every split and every process that reads
    it: a split is an index, not a copy, and batches are gathered from it (:meth:`batch`). With
    ``stream_to``, ``base`` stays on the host and each batch is copied to that device as it is
    needed (:mod:`search.engine.stream`); ``labels`` are then already there.
    """

    base: torch.Tensor
    labels: torch.Tensor
    index: torch.Tensor | None = None
    stream_to: torch.device | None = None

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def device(self) -> torch.device:
        """Where batches land (and the model trains)."""
        return self.stream_to if self.stream_to is not None else self.base.device

    @property
    def image_shape(self) -> tuple[int, int, int]:
        c, h, w = self.base.shape[1:]
        return int(c), int(h), int(w)

    @property
    def nbytes(self) -> int:
        """Bytes of this set's images (not of the whole ``base``)."""
        c, h, w = self.image_shape
        return len(self) * c * h * w * self.base.element_size()

    @property
    def images(self) -> torch.Tensor:
        """This set's images as one tensor on ``base``'s device (a copy when it is a split)."""
        return self.base if self.index is None else self.base.index_select(0, self.index)

    def rows(self, positions: torch.Tensor) -> torch.Tensor:
        """Rows of ``base`` at ``positions`` of this set (on ``base``'s device)."""
        return positions if self.index is None else self.index[positions]

    def batch(self, positions: torch.Tensor) -> torch.Tensor:
        """The images at ``positions`` (a copy, on :attr:`device`)."""
        if self.stream_to is not None:
            from search.engine.stream import gather

            return gather(self, positions)
        return self.base[self.rows(positions)]

    def chunk(self, start: int, stop: int) -> torch.Tensor:
        """The images at positions ``start:stop`` (on :attr:`device`; a slice when resident)."""
        if self.stream_to is None and self.index is None:
            return self.base[start:stop]
        return self.batch(torch.arange(start, min(stop, len(self))))

    def to(self, device: torch.device | str) -> ImageSet:
        """The set resident on ``device``; on the CPU a mapped (or already there) ``base`` is kept
        as it is (no copy: every split and process shares it)."""
        device = torch.device(device)
        if device.type == "cpu" and self.base.device.type == "cpu":
            return ImageSet(self.base, self.labels.cpu(), self.index)
        if self.stream_to is None and self.index is None and self.base.device == device:
            return self
        from search.engine.stream import resident

        return resident(self, device)


@dataclass(frozen=True)
class Splits:
    train: ImageSet
    val: ImageSet
    test: ImageSet | None
    classes: tuple[str, ...]

    @property
    def in_shape(self) -> tuple[int, int, int]:
        return self.train.image_shape

    @property
    def n_classes(self) -> int:
        return len(self.classes)


@dataclass(frozen=True)
class _Decoded:
    images: torch.Tensor
    labels: torch.Tensor
    classes: tuple[str, ...]
    test_images: torch.Tensor | None = None
    test_labels: torch.Tensor | None = None


# --------------------------------------------------------------------------- splitting


def stratified_split(labels: torch.Tensor, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices (keep, take): ``take`` holds about ``fraction`` of each class, chosen by ``seed``.

    Every class with at least two samples gives at least one to each side.
    """
    gen = torch.Generator().manual_seed(seed)
    keep: list[torch.Tensor] = []
    take: list[torch.Tensor] = []
    for cls in torch.unique(labels).tolist():
        idx = torch.nonzero(labels == cls).flatten()
        idx = idx[torch.randperm(len(idx), generator=gen)]
        n_take = take_count(len(idx), fraction)
        take.append(idx[:n_take])
        keep.append(idx[n_take:])
    return torch.sort(torch.cat(keep)).values, torch.sort(torch.cat(take)).values


def stratified_folds(labels: torch.Tensor, k: int, seed: int) -> list[torch.Tensor]:
    """``k`` disjoint index sets covering ``labels``; each class is spread evenly over them."""
    gen = torch.Generator().manual_seed(seed)
    buckets: list[list[torch.Tensor]] = [[] for _ in range(k)]
    start = 0  # each class continues where the last one stopped, so fold sizes differ by <= 1
    for cls in torch.unique(labels).tolist():
        idx = torch.nonzero(labels == cls).flatten()
        idx = idx[torch.randperm(len(idx), generator=gen)]
        for j in range(k):
            buckets[(start + j) % k].append(idx[j::k])
        start = (start + len(idx)) % k
    return [torch.sort(torch.cat(b)).values for b in buckets]


def _subset(images: torch.Tensor, labels: torch.Tensor, idx: torch.Tensor) -> ImageSet:
    """Rows ``idx`` of ``images``: an index into them, not a copy."""
    return ImageSet(images, labels[idx].contiguous(), idx)


def load_splits(cfg: DataConfig, seed: int, *, with_test: bool = False) -> Splits:
    """Train/val (and, only when asked, test) splits of the configured dataset."""
    decoded = _load_cached(cfg)
    images, labels = decoded.images, decoded.labels
    test: ImageSet | None = None
    rest = torch.arange(len(labels))
    if decoded.test_images is not None and decoded.test_labels is not None:
        if with_test:  # the dataset's official test split
            test = ImageSet(decoded.test_images, decoded.test_labels)
    else:
        rest, test_idx = stratified_split(labels, cfg.test_fraction, seed)
        if with_test:
            test = _subset(images, labels, test_idx)
    # The val split uses its own stream so changing test_fraction's seed use cannot shift it.
    train_idx, val_idx = stratified_split(labels[rest], cfg.val_fraction, seed + 1)
    splits = Splits(
        train=_subset(images, labels, rest[train_idx]),
        val=_subset(images, labels, rest[val_idx]),
        test=test,
        classes=decoded.classes,
    )
    log.info(
        "data %s: %d train / %d val%s images of shape %s, %d classes",
        cfg.dataset,
        len(splits.train),
        len(splits.val),
        f" / {len(test)} test" if test is not None else "",
        splits.in_shape,
        splits.n_classes,
    )
    return splits


# --------------------------------------------------------------------------- cache


def _cache_files(cfg: DataConfig) -> CacheFiles:
    return CacheFiles(cache_stem(cfg))


def ingest_workers() -> int:
    """Processes that decode an imagefolder: this process's thread count (the thread policy's)."""
    return max(1, torch.get_num_threads())


def _load_folder(cfg: DataConfig) -> _Decoded:
    classes, files = labelled_files(cfg)
    where = cfg.labels_csv if cfg.labels_csv is not None else cfg.root
    paths = [p for p, _ in files]

    def write(target: Path) -> None:
        log.info("decoding %d images of %s (once; later runs map the cache)", len(paths), where)
        ingest(
            paths, target, image_size=cfg.image_size, resize=cfg.resize, workers=ingest_workers(), where=where
        )

    mapped = build_cache(_cache_files(cfg), write, [label for _, label in files], classes)
    return _Decoded(mapped.images, mapped.labels, mapped.classes)


def _load_cached(cfg: DataConfig) -> _Decoded:
    if cfg.dataset == "imagefolder":
        return _load_folder(cfg)
    path = cache_path(cfg)
    if path.exists():
        cached = _read_cache(path)
        if cached is not None:
            return cached
    decoded = _decode(cfg)
    blob: dict[str, Any] = {
        "images": decoded.images,
        "labels": decoded.labels,
        "classes": list(decoded.classes),
    }
    if decoded.test_images is not None:
        blob.update(test_images=decoded.test_images, test_labels=decoded.test_labels)
    try:  # atomic (temp file, then rename): parallel workers never read a half-written cache
        save_atomic(blob, path)
    except OSError as exc:  # a cache is only a speed-up: a full or read-only disk must not stop a run
        log.warning("could not write the data cache %s (%s); decoding again next time", path, exc)
    else:
        log.info("cached decoded %s data at %s", cfg.dataset, path)
    return decoded


def _read_cache(path: Path) -> _Decoded | None:
    """The cached tensors at ``path``, or None (with a warning) when the file is unreadable or not
    a cache of ours: the caller decodes again and replaces it."""
    try:
        blob = load_tensors(path)
        decoded = _Decoded(
            images=blob["images"],
            labels=blob["labels"],
            classes=tuple(str(c) for c in blob["classes"]),
            test_images=blob.get("test_images"),
            test_labels=blob.get("test_labels"),
        )
    except (UnreadableFile, OSError, KeyError, TypeError, AttributeError) as exc:
        log.warning("ignoring unreadable data cache %s (%s); decoding again", path, exc)
        return None
    tensors = [decoded.images, decoded.labels, decoded.test_images, decoded.test_labels]
    ok = all(t is None or isinstance(t, torch.Tensor) for t in tensors)
    ok = ok and decoded.images.dtype == torch.uint8 and decoded.images.ndim == 4
    ok = ok and decoded.labels.ndim == 1 and len(decoded.labels) == len(decoded.images)
    if not ok:
        log.warning("ignoring data cache %s: not a cache of decoded images; decoding again", path)
        return None
    return decoded


# --------------------------------------------------------------------------- decoders


def _decode(cfg: DataConfig) -> _Decoded:
    log.info("decoding dataset %s (once; later runs use the cache)", cfg.dataset)
    if cfg.dataset == "digits":
        return _decode_digits()
    if cfg.dataset in ("mnist", "fashion_mnist", "cifar10"):
        return _decode_torchvision(cfg.dataset, Path(cfg.root))
    if cfg.dataset == "synthetic":
        s = cfg.synthetic
        return _synthetic(s.shape, s.n_classes, s.n_samples)
    raise DataError(f"unknown dataset {cfg.dataset!r}")


def digits_csv() -> Path | None:
    """scikit-learn's bundled ``digits.csv.gz`` (found without importing scikit-learn), or None."""
    spec = importlib.util.find_spec("sklearn")
    for folder in (spec.submodule_search_locations or []) if spec is not None else []:
        path = Path(folder) / "datasets" / "data" / "digits.csv.gz"
        if path.is_file():
            return path
    return None


def _digits_arrays() -> tuple[Any, Any]:
    """(pixels 0..16 as N x 8 x 8, labels): the file ``load_digits`` reads, read as it reads it.

    Importing scikit-learn (and the pandas it pulls in) takes about a second; reading its CSV
    directly, a tenth of that. ``load_digits`` itself is the fallback.
    """
    path = digits_csv()
    if path is None:
        from sklearn.datasets import load_digits

        bunch = load_digits()
        return bunch.images, bunch.target
    import numpy as np

    data = np.loadtxt(path, delimiter=",")
    return data[:, :-1].reshape(-1, 8, 8), data[:, -1].astype(np.int64)


def _decode_digits() -> _Decoded:
    images_16, target = _digits_arrays()
    pixels = torch.as_tensor(images_16, dtype=torch.float32)  # values 0..16
    images = (pixels * (255.0 / 16.0)).round().to(torch.uint8).unsqueeze(1)
    labels = torch.as_tensor(target, dtype=torch.int64)
    return _Decoded(images, labels, tuple(str(c) for c in range(10)))


def _decode_torchvision(name: str, root: Path) -> _Decoded:
    from torchvision import datasets

    cls = {
        "mnist": datasets.MNIST,
        "fashion_mnist": datasets.FashionMNIST,
        "cifar10": datasets.CIFAR10,
    }[name]
    root.mkdir(parents=True, exist_ok=True)
    try:
        train = cls(str(root), train=True, download=True)
        test = cls(str(root), train=False, download=True)
    except (OSError, RuntimeError) as exc:
        raise DataError(
            f"could not download or read {name} into {root} ({exc}). Fix: run once with internet "
            f"access, copy the torchvision files into data.root, or use dataset: imagefolder"
        ) from exc

    def tensors(ds: Any) -> tuple[torch.Tensor, torch.Tensor]:
        data = torch.as_tensor(ds.data)
        images = data.unsqueeze(1) if data.ndim == 3 else data.permute(0, 3, 1, 2)
        return images.to(torch.uint8).contiguous(), torch.as_tensor(ds.targets, dtype=torch.int64)

    images, labels = tensors(train)
    test_images, test_labels = tensors(test)
    return _Decoded(images, labels, tuple(train.classes), test_images, test_labels)


def _synthetic(shape: tuple[int, int, int], n_classes: int, n_samples: int) -> _Decoded:
    """Learnable random images: each class is a smooth random pattern, each sample adds noise."""
    gen = torch.Generator().manual_seed(1234)
    c, h, w = shape
    coarse = torch.rand(n_classes, c, max(1, h // 4), max(1, w // 4), generator=gen)
    patterns = torch.nn.functional.interpolate(coarse, size=(h, w), mode="nearest")
    labels = torch.arange(n_samples) % n_classes
    noise = torch.randn(n_samples, c, h, w, generator=gen) * 0.15
    images = ((patterns[labels] + noise).clamp(0, 1) * 255).round().to(torch.uint8)
    return _Decoded(images, labels.to(torch.int64), tuple(f"class{i}" for i in range(n_classes)))
