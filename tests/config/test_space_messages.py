"""Issue 26 row 17, through ``search validate``: a null choice or spec, duplicate choices and
unknown keys of a parameter get messages that name the parameter, the value and a real fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import run_cli, tiny_config, write_config

CASES = [
    (
        "search.space.train.optimizer={choices: [adam, null]}",
        "search.space.train.optimizer.choices[1]: null is not a value (got None). Fix: remove it",
    ),
    ("search.space.c1={choices: [8, null]}", "search.space.c1.choices[1]: null is not a value"),
    ("search.space.c1=null", "search.space.c1: null is not a parameter spec"),
    ("search.space.model.pool={value: null}", "search.space.model.pool: null is not a parameter spec"),
    ("search.space.c2={choices: [8, 8]}", "search.space.c2.choices: duplicate choices: 8 is listed twice"),
    (
        "search.space.model.stages={choices: [2, 2.0]}",
        "search.space.model.stages.choices: duplicate choices: 2 and 2.0 are the same value",
    ),
    (
        "search.space.c1.foo=1",
        "search.space.c1.foo: unknown key (got 1). Fix: remove it or use one of: choices, low, high, log",
    ),
    (
        "search.space.train.weight_decay.foo=1",
        "search.space.train.weight_decay.foo: unknown key (got 1). Fix: remove it or use one of: choices",
    ),
]


@pytest.mark.parametrize(("item", "message"), CASES, ids=[c[0].split("=")[0] + "=" for c in CASES])
def test_space_messages_name_the_parameter_and_a_fix(workdir: Path, item: str, message: str) -> None:
    write_config(workdir / "tiny.yaml", tiny_config())
    proc = run_cli("validate", "tiny.yaml", "--set", item, cwd=workdir, check=2)
    assert message in proc.stderr
    assert "use one of: \n" not in proc.stderr + "\n" and not proc.stderr.rstrip().endswith("one of:")
    assert "e.g. 0.5" not in proc.stderr
