"""Checks across fields and of names: a safe study name, a URL without its password, and the
mixes of searched values that train's own check would refuse one trial at a time."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from search.config._errors import ConfigError
from search.config._space import space_corners

if TYPE_CHECKING:
    from collections.abc import Mapping

    from search.config._sections import ModelConfig
    from search.config._space import ParamSpec
    from search.config._study import StudyConfig

INCEPTION_KERNEL, INCEPTION_PADDING, INCEPTION_MIN_WIDTH = 3, 1, 4
# model options a torchvision classifier (model.arch other than convnet) does not read
CONVNET_ONLY = (
    "block",
    "residual",
    "stages",
    "kernel_size",
    "padding",
    "pool",
    "head",
    "batchnorm",
    "dropout",
)
WIDTHS = ("c1", "c2", "l1")
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


def block_problem(
    block: str, residual: bool, batchnorm: bool, kernel_size: int, padding: int
) -> tuple[str, Any, str, str] | None:
    """Why model options do not combine with ``block`` (field, value, problem, fix), or None."""
    if residual and block != "residual":
        return (
            "residual",
            True,
            f"means block: residual, which contradicts block: {block}",
            "drop model.residual, or write block: residual",
        )
    if block == "depthwise" and not batchnorm:
        return (
            "batchnorm",
            False,
            "block: depthwise is MobileNet v1's depthwise-separable convs, each followed by BatchNorm "
            "(without it they barely train)",
            "set model.batchnorm: true",
        )
    if block == "inception" and kernel_size != INCEPTION_KERNEL:
        return (
            "kernel_size",
            kernel_size,
            "block: inception has its own kernels (branches of 1x1, 3x3 and 5x5 convs)",
            f"use model.kernel_size: {INCEPTION_KERNEL}",
        )
    if block == "inception" and padding != INCEPTION_PADDING:
        return (
            "padding",
            padding,
            "block: inception's branches keep the image size ('same' padding), the geometry of "
            "3x3 convs with padding 1",
            f"use model.padding: {INCEPTION_PADDING}",
        )
    return None


def amp_contradicts_precision(amp: Any, precision: Any) -> bool:
    """``train.amp: false`` (float32) beside a ``train.precision`` that asks for mixed precision."""
    return bool(amp is False and precision not in ("auto", "fp32"))


def check_space_mixes(cfg: StudyConfig) -> None:
    """The searched values of the train and model fields that other fields constrain combine.

    Raises:
        ConfigError: naming the first searched field and the mix that would fail its trials.
    """
    _check_train_mixes(cfg)
    _check_block_mixes(cfg)
    _check_arch(cfg)


def _check_train_mixes(cfg: StudyConfig) -> None:
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


_BLOCK_PATHS = ("model.block", "model.residual", "model.batchnorm", "model.kernel_size", "model.padding")


def _check_block_mixes(cfg: StudyConfig) -> None:
    """Every mix of the searched block and its options combines (:func:`block_problem`), and an
    inception stage gets at least one channel per branch (c1, c2 >= 4)."""
    paths = (*_BLOCK_PATHS, "c1", "c2")
    space = cfg.search.space
    searched = [p for p in _BLOCK_PATHS if p in space and not space[p].fixed]
    for mix in space_corners(cfg, paths):
        block, residual, batchnorm, kernel, padding, c1, c2 = mix.values()
        block = "residual" if block == "plain" and residual else block
        problem = block_problem(block, residual, batchnorm, kernel, padding)
        widths = problem is None and block == "inception" and min(c1, c2) < INCEPTION_MIN_WIDTH
        if widths:
            searched += [p for p in WIDTHS[:2] if not space[p].fixed]
            problem = (
                "c1" if c1 <= c2 else "c2",
                min(c1, c2),
                f"an inception stage needs at least {INCEPTION_MIN_WIDTH} channels (one per branch)",
                f"use c1 and c2 of {INCEPTION_MIN_WIDTH} or more",
            )
        if problem is None:
            continue
        field, value, why, fix = problem
        if not searched:  # the model section itself passed: a fixed width too small for inception
            raise ConfigError(f"search.space.{field}", value, why, fix)
        raise ConfigError(
            f"search.space.{searched[0]}",
            ", ".join(f"{k}={v}" for k, v in mix.items() if k in searched),
            f"this space can sample block {block} with {field} {value}: {why}",
            f"{fix}, or narrow {', '.join(searched)} in search.space",
        )


def _check_arch(cfg: StudyConfig) -> None:
    """A fixed torchvision ``model.arch`` reads none of the ConvNet's options or widths: a space
    that searches one, or a model section that sets one, is refused (it would change nothing)."""
    archs = {mix["model.arch"] for mix in space_corners(cfg, ("model.arch",))}
    if "convnet" in archs:
        return
    arch = sorted(archs)[0]
    ignored = [*WIDTHS, *(f"model.{name}" for name in CONVNET_ONLY)]
    for name in ignored:
        spec = cfg.search.space.get(name)
        if spec is not None and not spec.fixed:
            raise ConfigError(
                f"search.space.{name}",
                spec.as_yaml(),
                f"model.arch {arch} has its own widths and blocks and ignores {name}: searching it "
                "would train the same net under different names",
                f"fix it to one value (e.g. {name}: {_example(name)}), or search model.arch with convnet",
            )


def check_arch_options(cfg: StudyConfig) -> None:
    """With a fixed torchvision ``model.arch``, a model section that sets a ConvNet option it
    ignores is refused (the user's config only: a trial's config, with the arch it sampled, keeps
    the study's options).

    Raises:
        ConfigError: naming the option.
    """
    archs = {mix["model.arch"] for mix in space_corners(cfg, ("model.arch",))}
    if "convnet" in archs:
        return
    arch = sorted(archs)[0]
    default = type(cfg.model)()
    for name in CONVNET_ONLY:
        if getattr(cfg.model, name) != getattr(default, name):
            raise ConfigError(
                f"model.{name}",
                getattr(cfg.model, name),
                f"model.arch {arch} has its own blocks and head and ignores model.{name}",
                f"drop model.{name}, or use model.arch: convnet",
            )


def _example(name: str) -> Any:
    return {"c1": 16, "c2": 32, "l1": 64}.get(name, "its default")


def unused_params(model: ModelConfig, space: Mapping[str, ParamSpec]) -> list[str]:
    """The searched params of ``space`` that a trial with model settings ``model`` ignores: a
    torchvision ``model.arch`` reads none of the ConvNet's widths and options (empty for convnet)."""
    if model.arch == "convnet":
        return []
    ignored = {*WIDTHS, *(f"model.{name}" for name in CONVNET_ONLY)}
    return [name for name, spec in space.items() if name in ignored and not spec.fixed]
