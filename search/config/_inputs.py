"""Inputs the config names: where a relative ``data.root`` is found, and what can be checked
about the inputs without reading data."""

from __future__ import annotations

from pathlib import Path

from search.config._errors import ConfigError
from search.config._study import StudyConfig


def check_inputs(cfg: StudyConfig) -> None:
    """What can be checked about the config's inputs without reading data: folders that must exist."""
    if cfg.data.dataset == "imagefolder" and not Path(cfg.data.root).is_dir():
        raise ConfigError(
            "data.root",
            cfg.data.root,
            "folder not found",
            "point data.root at a folder with one sub-folder of images per class",
        )
