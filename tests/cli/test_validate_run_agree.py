"""`search validate` and `search run` give the same verdict on the same input: both exit 2 naming
the same field, or both run (issue 26 rows 5, 12, 13, 14 and their neighbours). Each input goes
through both commands as a user runs them (a tiny digits study, 1 trial of 1 epoch)."""

from __future__ import annotations

import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.conftest import cli_env, tiny_config, write_config

BIG = "9" * 400
LONG = "c" * 300
# (--set values, the field both must name; None: both must run)
CASES: list[tuple[list[str], str | None]] = [
    ([f"search.constraints.max_params={BIG}"], "search.constraints.max_params"),  # row 5
    (["search.grace_period_s=2000000000"], "search.grace_period_s"),  # past Optuna's timers
    ([f"search.grace_period_s={BIG}"], "search.grace_period_s"),
    ([f"search.space.batch_size={{choices: [{BIG}]}}"], "search.space.batch_size.choices[0]"),
    ([f"train.epochs={BIG}"], "train.epochs"),
    (["train.threads=100000"], "train.threads"),  # row 13
    (["train.threads=64"], None),  # more than the cores: lowered, with a warning
    (["model.stages=4", "model.pool=max"], "model.stages"),  # row 14
    (["search.space.model.stages={choices: [2, 4]}", "model.pool=max"], "search.space.model.stages"),
    ([f"data.cache_dir={LONG}"], "data.cache_dir"),  # row 12
    (["data.cache_dir=afile/cache"], "data.cache_dir"),
    (["checkpoints_dir=afile/x"], "checkpoints_dir"),
    ([f"storage=sqlite:///{LONG}.db"], "storage"),
    (["storage=sqlite:///junk.db"], "storage"),
    (["storage=foo://bar"], "storage"),
    (["search.constraints.max_params=1000000"], None),
    (["search.objectives=[val_accuracy, flops]", "search.sampler.name=cmaes"], "search.sampler.name"),
    (["search.objectives=[val_accuracy, n_params]", "search.pruner.name=hyperband"], "search.pruner.name"),
    (["search.objectives=[val_accuracy, n_params]", "search.sampler.name=nsga2"], None),
]
FIELD = re.compile(r"^error: (\S+): ", re.MULTILINE)


def _verdict(proc: subprocess.CompletedProcess[str]) -> tuple[int, str | None]:
    """(exit code, the field the error line names)."""
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    found = FIELD.search(proc.stderr)
    return proc.returncode, found.group(1) if found else None


def _cli(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "search", *args],
        cwd=cwd,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


@pytest.mark.parametrize("sets, field", CASES, ids=[" ".join(s)[:40] for s, _ in CASES])
def test_validate_and_run_agree(tmp_path: Path, sets: list[str], field: str | None) -> None:
    search = {**tiny_config()["search"], "n_trials": 1}
    write_config(tmp_path / "tiny.yaml", tiny_config(train={"epochs": 1, "patience": 1}, search=search))
    (tmp_path / "afile").write_text("a file where a folder should be\n")
    (tmp_path / "junk.db").write_bytes(b"a spreadsheet, honest\n" * 50)
    args = [a for s in sets for a in ("--set", s)]
    with ThreadPoolExecutor(2) as pool:
        validate = pool.submit(_cli, tmp_path, "validate", "tiny.yaml", *args)
        run = pool.submit(_cli, tmp_path, "run", "tiny.yaml", "--device", "cpu", "--study-name", "t", *args)
        checked, ran = _verdict(validate.result()), _verdict(run.result())
    assert checked == ran, f"validate {checked} but run {ran}"
    assert checked == ((2, field) if field else (0, None)), checked
    if field is None:
        return
    assert not (tmp_path / "storage" / "studies.db").exists()  # refused before any study exists
