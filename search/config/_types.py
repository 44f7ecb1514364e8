"""The value types of config fields: strict ints, bools and strings, finite floats, the
numbers and values a search-space spec takes, fixed-length lists, and the named choices."""

from __future__ import annotations

import math
import re
import typing
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, PlainValidator, Strict, WithJsonSchema

from search.config._errors import ConfigError

Dataset = Literal["digits", "mnist", "fashion_mnist", "cifar10", "imagefolder", "synthetic"]
SamplerName = Literal["tpe", "random", "grid", "cmaes", "qmc", "gp"]
OptimizerName = Literal["adam", "adamw", "sgd"]
ResizeMode = Literal["stretch", "center_crop", "pad"]
LrScheduleName = Literal["constant", "cosine", "onecycle"]
PrunerName = Literal["median", "percentile", "successive_halving", "hyperband", "none"]
DATASETS: tuple[str, ...] = typing.get_args(Dataset)
SAMPLERS: tuple[str, ...] = typing.get_args(SamplerName)
PRUNERS: tuple[str, ...] = typing.get_args(PrunerName)


def _int_in(value: Any) -> Any:
    return int(value) if isinstance(value, float) and value.is_integer() else value


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
    return num(value)


_FLOAT_TEXT = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")
Int = Annotated[int, Strict(), BeforeValidator(_int_in)]
Num = Annotated[float, PlainValidator(num), WithJsonSchema({"type": "number"})]
Value = Annotated[
    bool | int | float | str,
    PlainValidator(_value),
    WithJsonSchema({"type": ["number", "string", "boolean"]}),
]
Float = Annotated[float, Field(allow_inf_nan=False), BeforeValidator(_number_in)]
Bool = Annotated[bool, Strict()]
Str = Annotated[str, Strict()]


def list_of(n: int) -> Any:
    """A validator of a list field that must hold exactly ``n`` values."""

    def check(value: Any) -> Any:
        if isinstance(value, list | tuple) and len(value) != n:
            raise ConfigError("", value, f"expected a list of {n} values", f"give {n} values")
        return value

    return BeforeValidator(check)
