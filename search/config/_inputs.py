"""Inputs the config names: where a relative ``data.root`` is found, and what can be checked
about the inputs without reading data.

A relative ``data.root`` is looked up first in the working directory (what worked before), then in
the folder of the config file that set it, so a bundled config runs from any working directory. The
first folder that exists is used, as an absolute path, so every later step (run, workers, confirm,
finetune, a resumed run) reads the same folder. Output paths (``data.cache_dir``, ``storage/...``)
stay relative to the working directory: outputs land where the user runs.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from search.config._checks import check_arch_options
from search.config._errors import ConfigError
from search.config._study import StudyConfig

# The datasets that read data.root: an imagefolder's class folders, torchvision's download folder.
# digits and synthetic never read it, so their data.root is left as written.
READS_ROOT = frozenset({"imagefolder", "mnist", "fashion_mnist", "cifar10"})
# Where load_config looked for a relative data.root it did not find (read by check_inputs' message):
# an attribute on that config object only, outside its fields (never compared, stored or copied).
_LOOKED_IN = "_data_root_looked_in"


def _places(root: str, config_dir: str | Path | None) -> tuple[Path, ...]:
    """Where relative ``root`` is looked up, in order, without repeats; none for an absolute root."""
    if Path(root).is_absolute():
        return ()
    places = [Path.cwd() / root]
    if config_dir is not None:
        places.append(Path(config_dir).absolute() / root)
    return tuple(dict.fromkeys(places))


def locate_data_root(cfg: StudyConfig, config_dir: str | Path | None = None) -> StudyConfig:
    """``cfg`` with a relative ``data.root`` replaced by the absolute folder it names.

    The root is looked up in the working directory, then in ``config_dir`` (the folder of the config
    file that set it); the first that exists is used, symlinks resolved.

    Args:
        cfg: a validated config.
        config_dir: the config file's folder, or None when data.root did not come from a file
            (its default, a ``--set`` override, a stored config).

    Returns:
        A validated copy with the absolute root; ``cfg`` itself when the root is absolute, its
        dataset does not read it (digits, synthetic) or no place holds it (it then stays relative
        to the working directory, where torchvision datasets download, and :func:`check_inputs`
        names the places looked).
    """
    cfg = _locate_labels_csv(cfg, config_dir)
    places = _places(cfg.data.root, config_dir)
    if cfg.data.dataset not in READS_ROOT or cfg.data.labels_csv is not None or not places:
        return cfg
    for place in places:
        if place.is_dir():
            data = dataclasses.replace(cfg.data, root=str(place.resolve()))
            return dataclasses.replace(cfg, data=data)
    object.__setattr__(cfg, _LOOKED_IN, places)  # frozen: set once, beside the fields
    return cfg


def _locate_labels_csv(cfg: StudyConfig, config_dir: str | Path | None) -> StudyConfig:
    """``cfg`` with a relative ``data.labels_csv`` made absolute where it is found (as data.root)."""
    csv = cfg.data.labels_csv
    for place in _places(csv, config_dir) if csv is not None else ():
        if place.is_file():
            data = dataclasses.replace(cfg.data, labels_csv=str(place.resolve()))
            return dataclasses.replace(cfg, data=data)
    return cfg


def check_inputs(cfg: StudyConfig) -> None:
    """What can be checked about the config's inputs without reading data: folders that must exist.

    Raises:
        ConfigError: an imagefolder's data.root is not a folder; for a relative root the message
            names every place it was looked for.
    """
    check_arch_options(cfg)
    csv = cfg.data.labels_csv
    if csv is not None and not Path(csv).is_file():
        raise ConfigError(
            "data.labels_csv", csv, "file not found", "give a CSV file of path,label rows, or null"
        )
    if cfg.data.dataset == "imagefolder" and csv is None and not Path(cfg.data.root).is_dir():
        looked = getattr(cfg, _LOOKED_IN, None) or _places(cfg.data.root, None)
        where = " and ".join(str(place.resolve()) for place in looked)
        raise ConfigError(
            "data.root",
            cfg.data.root,
            "folder not found",
            "point data.root at a folder with one sub-folder of images per class",
            detail=f"Looked in {where}" if where else "",
        )
