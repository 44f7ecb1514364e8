"""Issue 26 row 20, through the CLI: a refused study name says which character is wrong and
exactly what is allowed, and says when the name comes from the config file's name."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import run_cli, tiny_config, write_config

RULE = "Fix: use ASCII letters (a-z, A-Z), digits, '.', '_' and '-' only, starting with a letter or digit"


def test_a_non_ascii_name_is_refused_naming_the_letter_and_the_rule(workdir: Path) -> None:
    write_config(workdir / "study.yaml", tiny_config(name="dígitos"))
    proc = run_cli("validate", "study.yaml", cwd=workdir, check=2)
    assert "name: not a safe study name: 'í' is a letter, but not ASCII (got 'dígitos')." in proc.stderr
    assert RULE in proc.stderr and "named after the file" not in proc.stderr
    report = run_cli("report", "dígitos", cwd=workdir, check=2)
    assert (
        "STUDY: not a safe study name: 'í' is a letter, but not ASCII" in report.stderr
        and RULE in report.stderr
    )


def test_a_name_taken_from_the_file_name_says_so(workdir: Path) -> None:
    cfg = tiny_config()
    del cfg["name"]
    write_config(workdir / "my study.yaml", cfg)
    proc = run_cli("validate", "my study.yaml", cwd=workdir, check=2)
    assert "name: not a safe study name: ' ' is not allowed (got 'my study')." in proc.stderr
    assert "The study is named after the file my study.yaml, which sets no name." in proc.stderr
    assert "set name: in the file (or rename it)" in proc.stderr
    run_cli("validate", "my study.yaml", "--set", "name=mine", cwd=workdir, check=0)
