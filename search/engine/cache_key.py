"""Where a dataset's decoded images are cached (the key: dataset, files with their sizes and
mtimes, image size, resize, labels CSV, format version), and which data folders loading a config
writes. Torch-free: ``search validate`` checks the same folders ``run`` does.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from search.config import DataConfig
from search.engine.counts import DataError, csv_files

# 2: non-UTF-8 class folder names are stored escaped; 3: EXIF orientation applied; 4: an imagefolder
# is a memory-mapped .npy (streamed in, data.resize, alpha over white, 16-bit scaled)
CACHE_VERSION = 4


def key(parts: dict[str, Any]) -> str:
    """A short hash of ``parts`` (JSON): the cache file's name."""
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:12]


def file_stats(paths: list[Path], root: Path) -> list[tuple[str, int, int]]:
    """(name relative to ``root``, size, whole-second mtime) of each file: what the key hashes."""
    out = []
    for p in paths:
        st = p.stat()
        out.append((os.path.relpath(p, root), st.st_size, int(st.st_mtime)))
    return sorted(out)


def fingerprint(cfg: DataConfig) -> dict[str, Any]:
    """What the cache's key hashes: a change in any of it is another cache."""
    parts: dict[str, Any] = {"dataset": cfg.dataset, "version": CACHE_VERSION}
    if cfg.dataset == "imagefolder" and cfg.labels_csv is not None:
        csv = Path(cfg.labels_csv).resolve()
        _, files = csv_files(csv)
        parts.update(
            labels_csv=str(csv),
            csv=hashlib.sha256(csv.read_bytes()).hexdigest(),
            files=file_stats([p for p, _ in files], csv.parent),
        )
    elif cfg.dataset == "imagefolder":
        root = Path(cfg.root).resolve()
        parts.update(root=str(root), files=file_stats([p for p in root.rglob("*") if p.is_file()], root))
    elif cfg.dataset == "synthetic":
        s = cfg.synthetic
        parts.update(shape=list(s.shape), n_classes=s.n_classes, n_samples=s.n_samples)
    if cfg.dataset == "imagefolder":
        parts.update(image_size=cfg.image_size, resize=cfg.resize)
    return parts


def cache_stem(cfg: DataConfig) -> Path:
    """The cache's path without its suffix: ``<cache_dir>/<dataset>-<key>``."""
    return Path(cfg.cache_dir) / f"{cfg.dataset}-{key(fingerprint(cfg))}"


def cache_path(cfg: DataConfig) -> Path:
    """Where the decoded images of this dataset are cached: an imagefolder's memory-mapped ``.npy``
    (:mod:`search.engine.cache`), the other datasets' tensors (``.pt``)."""
    stem = cache_stem(cfg)
    return stem.with_name(stem.name + ".npy") if cfg.dataset == "imagefolder" else stem.with_suffix(".pt")


def folders_written(cfg: DataConfig) -> dict[str, str]:
    """The data folders loading ``cfg`` writes (config field -> folder): the cache folder, unless
    a cache of this dataset is already there."""
    try:
        cached = cache_path(cfg).is_file()
    except (OSError, DataError):
        cached = False
    return {} if cached else {"data.cache_dir": cfg.cache_dir}


__all__ = ["CACHE_VERSION", "cache_path", "cache_stem", "file_stats", "fingerprint", "folders_written", "key"]
