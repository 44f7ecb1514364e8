"""ConfigError is the tool's bad-input error (exit 2) and still a ValueError."""

from __future__ import annotations

import pytest

from search.config import ConfigError, config_from_dict
from search.errors import EXIT_BAD_INPUT, InputError, SearchError


def test_config_error_is_an_input_error_and_a_value_error() -> None:
    with pytest.raises(ConfigError) as info:
        config_from_dict({"train": {"epochs": 0}})
    exc = info.value
    assert isinstance(exc, InputError) and isinstance(exc, SearchError) and isinstance(exc, ValueError)
    assert exc.exit_code == EXIT_BAD_INPUT == 2
    assert str(exc) == "train.epochs: must be >= 1 (got 0). Fix: use e.g. 10"
    assert (exc.field, exc.value, exc.problem, exc.fix, exc.detail) == (
        "train.epochs",
        0,
        "must be >= 1",
        "use e.g. 10",
        "",
    )


def test_a_detail_sits_between_the_value_and_the_fix() -> None:
    exc = ConfigError("data.root", "x", "folder not found", "give a folder", detail="Looked in /a/x")
    assert str(exc) == "data.root: folder not found (got 'x'). Looked in /a/x. Fix: give a folder"
