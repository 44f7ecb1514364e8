"""Where a dataset's decoded tensors are cached (the key: dataset, files, sizes, format version),
and which data folders loading a config writes. Torch-free: ``search validate`` checks the same
folders ``run`` does.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from search.config import DataConfig

CACHE_VERSION = 3  # 2: non-UTF-8 class folder names are stored escaped; 3: EXIF orientation applied


def fingerprint(cfg: DataConfig) -> dict[str, Any]:
    key: dict[str, Any] = {"dataset": cfg.dataset, "version": CACHE_VERSION}
    if cfg.dataset == "imagefolder":
        root = Path(cfg.root).resolve()
        files = sorted(
            (str(p.relative_to(root)), p.stat().st_size, int(p.stat().st_mtime))
            for p in root.rglob("*")
            if p.is_file()
        )
        key.update(root=str(root), files=files, image_size=cfg.image_size)
    elif cfg.dataset == "synthetic":
        s = cfg.synthetic
        key.update(shape=list(s.shape), n_classes=s.n_classes, n_samples=s.n_samples)
    return key


def cache_path(cfg: DataConfig) -> Path:
    """Where the decoded tensors of this dataset are cached."""
    digest = hashlib.sha256(json.dumps(fingerprint(cfg)).encode()).hexdigest()[:12]
    return Path(cfg.cache_dir) / f"{cfg.dataset}-{digest}.pt"


def folders_written(cfg: DataConfig) -> dict[str, str]:
    """The data folders loading ``cfg`` writes (config field -> folder): the cache folder, unless
    a cache of this dataset is already there."""
    try:
        cached = cache_path(cfg).is_file()
    except OSError:
        cached = False
    return {} if cached else {"data.cache_dir": cfg.cache_dir}


__all__ = ["CACHE_VERSION", "cache_path", "fingerprint", "folders_written"]
