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


NAME_RULE = (
    "use ASCII letters (a-z, A-Z), digits, '.', '_' and '-' only, starting with a letter or digit, "
    "at most 128 characters, no '..' (it names folders under storage/)"
)


def _name_problem(name: str) -> str:
    """What makes ``name`` unsafe, in a few words (the first character that is not allowed, ...)."""
    if not name:
        return "empty"
    bad = next((c for c in name if not (c.isascii() and (c.isalnum() or c in "_.-"))), None)
    if bad is not None:
        kind = "a letter, but not ASCII" if bad.isalpha() else "not allowed"
        return f"{bad!r} is {kind}"
    if not name[0].isalnum():
        return f"starts with {name[0]!r}"
    if len(name) > 128:
        return f"{len(name)} characters, more than 128"
    return "contains '..'"


def check_study_name(name: str, field_path: str = "name") -> str:
    """``name`` if it is safe as a folder name (no ``..``, no separators); ConfigError otherwise,
    naming what is wrong with it (e.g. ``'í' is a letter, but not ASCII``) and :data:`NAME_RULE`."""
    if not (isinstance(name, str) and STUDY_NAME_PATTERN.fullmatch(name) and ".." not in name):
        problem = _name_problem(name) if isinstance(name, str) else "not a string"
        raise ConfigError(field_path, name, f"not a safe study name: {problem}", NAME_RULE)
    return name


def nesterov_without_momentum(optimizer: Any, nesterov: Any, momentum: Any) -> bool:
    """sgd with Nesterov momentum at momentum 0, which torch refuses."""
    return bool(optimizer == "sgd" and nesterov and momentum == 0)


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
