"""The value types of config fields: strict ints, bools and strings, finite floats, the
numbers and values a search-space spec takes, fixed-length lists, and the named choices."""

from __future__ import annotations

import math
import re
import typing
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BeforeValidator, Field, PlainValidator, Strict, WithJsonSchema

from search.config._errors import ConfigError

Dataset = Literal["digits", "mnist", "fashion_mnist", "cifar10", "imagefolder", "synthetic"]
SamplerName = Literal["tpe", "random", "grid", "cmaes", "qmc", "gp", "nsga2"]
# search.objectives: the accuracy, then optionally one cost of the built net (minimised)
ObjectiveName = Literal["val_accuracy", "n_params", "flops", "latency_ms"]
OptimizerName = Literal["adam", "adamw", "sgd"]
ResizeMode = Literal["stretch", "center_crop", "pad"]
LrScheduleName = Literal["constant", "cosine", "onecycle"]
PrunerName = Literal["median", "percentile", "successive_halving", "hyperband", "none"]
BlockName = Literal["plain", "residual", "depthwise", "inception"]
# the configurable ConvNet, then torchvision classifiers (each one entry in engine/arch.py's table)
ArchName = Literal["convnet", "resnet18"]
DATASETS: tuple[str, ...] = typing.get_args(Dataset)
SAMPLERS: tuple[str, ...] = typing.get_args(SamplerName)
PRUNERS: tuple[str, ...] = typing.get_args(PrunerName)
COSTS: tuple[str, ...] = typing.get_args(ObjectiveName)[1:]
# samplers that take two objectives (CMA-ES models one); pruners with a two-objective rule
MULTI_OBJECTIVE_SAMPLERS: tuple[str, ...] = ("tpe", "nsga2", "random", "grid", "qmc", "gp")
MULTI_OBJECTIVE_PRUNERS: tuple[str, ...] = ("median", "percentile", "none")
BLOCKS: tuple[str, ...] = typing.get_args(BlockName)
ARCHS: tuple[str, ...] = typing.get_args(ArchName)


MAX_INT = 2**53  # the largest integer a float holds exactly: the run turns some into floats


def _int_in(value: Any) -> Any:
    return int(value) if isinstance(value, float) and value.is_integer() else value


def _int_fits(value: int) -> int:
    """After the field's own bounds: an integer the run can use (the field's bounds say more)."""
    if abs(value) > MAX_INT:
        raise ConfigError("", value, f"too large: at most {MAX_INT} (2**53)", "use a smaller number")
    return value


def _number_in(value: Any) -> Any:
    if isinstance(value, bool):
        raise ConfigError("", value, "expected a number", "write a number, e.g. 0.5")
    return value


def num(value: Any) -> int | float:
    """A parameter's number as written (ints stay ints); "1e-4" text (PyYAML reads it so) is a number."""
    if isinstance(value, str) and _FLOAT_TEXT.fullmatch(value.strip()):
        value = float(value)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError("", value, "expected a number", "write a number, e.g. 0.5")
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError("", value, "expected a finite number", "use a finite value")
    return value


def _value(value: Any) -> bool | int | float | str:
    """A searched value as written: a number (finite), a string or true/false; the field decides."""
    if isinstance(value, bool | str):
        return value
    if value is None:
        raise ConfigError(
            "", None, "null is not a value", "remove it (a field's setting none is the string 'none')"
        )
    if not isinstance(value, int | float):
        raise ConfigError("", value, "expected a number, a string or true/false", "write one value, e.g. 0.5")
    return num(value)


_FLOAT_TEXT = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")
Int = Annotated[int, Strict(), BeforeValidator(_int_in), AfterValidator(_int_fits)]
Num = Annotated[float, PlainValidator(num), WithJsonSchema({"type": "number"})]
Value = Annotated[
    bool | int | float | str,
    PlainValidator(_value),
    WithJsonSchema({"type": ["number", "string", "boolean"]}),
]
Float = Annotated[float, Field(allow_inf_nan=False), BeforeValidator(_number_in)]
Bool = Annotated[bool, Strict()]
Str = Annotated[str, Strict()]


NAME_MAX = 255  # bytes in one path component (ext4, xfs, btrfs, APFS)
PATH_MAX = 4095  # bytes in a whole path (Linux)


def path_too_long(path: str) -> str:
    """Why the system cannot have a file at ``path`` ("" when it can): a name over 255 bytes, a whole
    path over 4095, a NUL byte; the OS would say ``File name too long`` only at the first write."""
    if "\0" in path:
        return "a path cannot hold a NUL byte"
    names = [len(part.encode("utf-8", "surrogateescape")) for part in path.split("/")]
    whole = len(path.encode("utf-8", "surrogateescape"))
    if max(names, default=0) > NAME_MAX:
        return f"a name in the path is too long ({max(names)} bytes; at most {NAME_MAX})"
    if whole > PATH_MAX:
        return f"the path is too long ({whole} bytes; at most {PATH_MAX})"
    return ""


def _path_in(value: Any) -> Any:
    if isinstance(value, str) and (problem := path_too_long(value)):
        raise ConfigError("", value, problem, "use a shorter path")
    return value


PathStr = Annotated[str, Strict(), BeforeValidator(_path_in)]  # a file or folder the run writes or reads


def list_of(n: int) -> Any:
    """A validator of a list field that must hold exactly ``n`` values."""

    def check(value: Any) -> Any:
        if isinstance(value, list | tuple) and len(value) != n:
            raise ConfigError("", value, f"expected a list of {n} values", f"give {n} values")
        return value

    return BeforeValidator(check)
