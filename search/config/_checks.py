"""Checks across fields and of names: a safe study name, a URL without its password, and the
mixes of searched values that train's own check would refuse one trial at a time."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from search.config._errors import ConfigError
from search.config._space import space_corners

if TYPE_CHECKING:
    from search.config._study import StudyConfig

STUDY_NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")  # used with fullmatch


def mask_url(url: str) -> str:
    """The URL with any password replaced by ``***`` (safe for logs, tables and messages)."""
    return re.sub(r"((?:^|://)[^/:@\s]*:)[^/\s]*@", r"\1***@", url)


def check_study_name(name: str, field_path: str = "name") -> str:
    """``name`` if it is safe as a folder name (no ``..``, no separators); ConfigError otherwise."""
    if not (isinstance(name, str) and STUDY_NAME_PATTERN.fullmatch(name) and ".." not in name):
        raise ConfigError(
            field_path,
            name,
            "not a safe study name",
            "use letters, digits, '.', '_' and '-' only, no '..' (it names folders under storage/)",
        )
    return name


def nesterov_without_momentum(optimizer: Any, nesterov: Any, momentum: Any) -> bool:
    """sgd with Nesterov momentum at momentum 0, which torch refuses."""
    return bool(optimizer == "sgd" and nesterov and momentum == 0)


def amp_contradicts_precision(amp: Any, precision: Any) -> bool:
    """``train.amp: false`` (float32) beside a ``train.precision`` that asks for mixed precision."""
    return bool(amp is False and precision not in ("auto", "fp32"))


def check_space_mixes(cfg: StudyConfig) -> None:
    """Every mix of the searched ``train.optimizer``/``nesterov``/``momentum`` values passes
    train's own check: each value was checked alone (the other fields at their defaults), so
    ``nesterov: {choices: [true, false]}`` with ``train.momentum: 0`` would fail trials one by one.

    Raises:
        ConfigError: naming the first searched field of the three and the mix torch would refuse.
    """
    paths = ("train.optimizer", "train.nesterov", "train.momentum")
    searched = [p for p in paths if p in cfg.search.space]
    if not searched:
        return
    for mix in space_corners(cfg, paths):
        if nesterov_without_momentum(*(mix[p] for p in paths)):
            raise ConfigError(
                f"search.space.{searched[0]}",
                ", ".join(f"{k}={v}" for k, v in mix.items()),
                "this space can sample sgd with Nesterov momentum at momentum 0, which torch refuses",
                "keep train.momentum above 0 (e.g. 0.9) or train.nesterov false",
            )
