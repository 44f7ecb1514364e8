"""Storage URLs through the CLI: one checker for every command's ``--storage``, ``--warm-start-storage``
and the config's ``storage`` (exit 2 naming the flag or key and the fix; nothing created), and one
database named two ways recognised as the same (issue 26 rows 7, 8, 9, 12)."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import optuna
import pytest

from search.cli import main
from search.store.urls import same_database
from tests.conftest import run_cli, tiny_config, write_config


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-trial, 1-epoch digits study ``tiny`` in storage/studies.db of the returned folder."""
    root = tmp_path_factory.mktemp("urls-study")
    search = {**tiny_config()["search"], "n_trials": 2}
    write_config(root / "tiny.yaml", tiny_config(train={"epochs": 1, "patience": 1}, search=search))
    run_cli("run", "tiny.yaml", "--device", "cpu", cwd=root, check=0)
    return root


@pytest.fixture
def here(made: Path, workdir: Path) -> Path:
    """The working directory, holding a private copy of the study and its config."""
    shutil.copytree(made / "storage", workdir / "storage")
    shutil.copy(made / "tiny.yaml", workdir / "tiny.yaml")
    return workdir


def _cli(capsys: pytest.CaptureFixture[str], *args: str, code: int) -> str:
    """Run ``search ARGS`` in-process; assert the exit code; return stderr."""
    capsys.readouterr()
    got = main(list(args))
    out, err = capsys.readouterr()
    assert got == code, f"exit {got}\nstdout:\n{out}\nstderr:\n{err}"
    assert "Traceback" not in err
    return err


def _files(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if "storage/data" not in str(p)}


def test_bad_storage_urls_exit_2_naming_the_flag_on_every_command(
    here: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    Path("junk.db").write_bytes(b"a spreadsheet, honest\n" * 50)
    Path("empty.db").touch()
    long_name = "x" * 300 + ".db"
    cases = [  # (value, what the message says, what the fix says)
        ("studies.db", "not a database URL but a plain file path", "sqlite:///studies.db"),
        ("missing.db", "not a database URL but a plain file path", "sqlite:///missing.db"),
        ("sqlite:///missing.db", "no study storage at missing.db", "`search run` used"),
        ("sqlite:///junk.db", "storage junk.db is not an SQLite database", "`search run` used"),
        ("sqlite:///empty.db", "storage empty.db is an empty SQLite database", "`search run` used"),
        ("sqlite:///storage", "storage storage is not a file", "sqlite:///storage/studies.db"),
        (f"sqlite:///{long_name}", "a name in the path is too long (303 bytes", "shorter path"),
        ("foo://bar", "no database of kind 'foo'", "postgresql+psycopg://"),
        ("postgresql://u@h:notaport/db", "not a database URL", "sqlite:///path/to/studies.db"),
        ("", "missing", "sqlite:///storage/studies.db"),
    ]
    commands = [
        ("status",),
        ("report", "tiny"),
        ("export", "tiny"),
        ("confirm", "tiny", "--device", "cpu"),
        ("finetune", "tiny", "--device", "cpu"),
        ("dashboard", "--port", "0"),
    ]
    before = _files(here)
    for value, problem, fix in cases:
        for command in commands:
            err = _cli(capsys, *command, "--storage", value, code=2)
            assert f"error: --storage: {problem}" in err and "Fix: " in err and fix in err, (command, err)
        warm = ("run", "tiny.yaml", "--warm-start", "other", "--warm-start-storage", value)
        err = _cli(capsys, *warm, code=2)
        assert f"error: --warm-start-storage: {problem}" in err and fix in err
    assert _files(here) == before  # nothing created: no empty database, no folder
    assert Path("junk.db").read_bytes() == b"a spreadsheet, honest\n" * 50


def test_bad_storage_for_run_names_the_flag_or_the_config_key(
    here: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    Path("afile").write_text("x")
    long_path = "sqlite:///" + "/".join(["d" * 200] * 25) + "/studies.db"  # 5000 bytes
    for value, problem in [
        ("plain.db", "not a database URL but a plain file path"),
        ("sqlite:///afile/studies.db", "cannot create the storage folder afile"),
        (long_path, "the path is too long"),
    ]:
        err = _cli(capsys, "run", "tiny.yaml", "--storage", value, code=2)
        assert f"error: --storage: {problem}" in err
        err = _cli(capsys, "validate", "tiny.yaml", "--set", f"storage={value}", code=2)
        assert f"error: storage: {problem}" in err
    err = _cli(capsys, "run", "tiny.yaml", "--set", "storage=foo://bar", code=2)
    assert "error: storage: no database of kind 'foo'" in err
    assert not Path("plain.db").exists() and not Path("d" * 200).exists()


def test_warm_start_from_itself_is_refused_however_the_storage_is_spelled(
    here: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    Path("link.db").symlink_to(here / "storage" / "studies.db")
    spellings = [
        "sqlite:///./storage/studies.db",
        f"sqlite:///{here}/storage/studies.db",  # absolute: four slashes
        f"sqlite:///../{here.name}/storage//studies.db",
        "sqlite:///link.db",
    ]
    for url in spellings:
        err = _cli(
            capsys,
            "run",
            "tiny.yaml",
            "--n-trials",
            "4",
            "--warm-start",
            "tiny",
            "--warm-start-storage",
            url,
            code=2,
        )
        assert "error: --warm-start: a study cannot warm-start from itself" in err, url
    study = optuna.load_study(study_name="tiny", storage="sqlite:///storage/studies.db")
    assert len(study.trials) == 2  # nothing enqueued, nothing trained
    # the same database spelled otherwise, another study in it: a warm start as usual
    write_config(here / "warm.yaml", tiny_config(name="warm", train={"epochs": 1, "patience": 1}))
    proc = run_cli(
        "run",
        "warm.yaml",
        "--n-trials",
        "2",
        "--device",
        "cpu",
        "--warm-start",
        "tiny",
        "--warm-start-storage",
        "sqlite:///link.db",
        cwd=here,
        check=0,
    )
    assert "warm start from tiny: enqueued 2 trial(s)" in proc.stdout


def test_warm_start_flags_without_warm_start_exit_2(here: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for flag, value in [("--warm-start-storage", "sqlite:///storage/studies.db"), ("--warm-start-top", "3")]:
        err = _cli(capsys, "run", "tiny.yaml", flag, value, code=2)
        assert f"error: {flag}: given without --warm-start" in err and "Fix: add --warm-start STUDY" in err
    study = optuna.load_study(study_name="tiny", storage="sqlite:///storage/studies.db")
    assert len(study.trials) == 2


def test_an_sqlite_database_without_optuna_tables_is_refused_and_left_alone(
    here: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with sqlite3.connect("other.db") as conn:
        conn.execute("CREATE TABLE invoices (id INTEGER)")
    err = _cli(capsys, "report", "tiny", "--storage", "sqlite:///other.db", code=2)
    assert "--storage: storage other.db is an SQLite database but not an Optuna one (tables: invoices)" in err


def test_same_database_by_host_port_and_name() -> None:
    assert same_database("postgresql+psycopg://bob:pw@DB:5432/x", "postgresql://bob@db/x")
    assert not same_database("postgresql://db/x", "postgresql://db:5433/x")
    assert not same_database("postgresql://db/x", "postgresql://db/y")
    assert not same_database("sqlite:///a.db", "sqlite:///b.db")


def test_a_storage_url_from_the_environment_is_named_by_its_variable(
    here: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SEARCH_WORKER_STORAGE", "studies.db")
    err = _cli(capsys, "worker", "--study-name", "tiny", code=2)
    assert "error: SEARCH_WORKER_STORAGE: not a database URL but a plain file path" in err
    assert "Fix: set SEARCH_WORKER_STORAGE to sqlite:///studies.db" in err
    monkeypatch.setenv("SEARCH_DASHBOARD_STORAGE", "sqlite:///missing.db")
    err = _cli(capsys, "dashboard", "--port", "0", code=2)
    assert "error: SEARCH_DASHBOARD_STORAGE: no study storage at missing.db" in err
    assert not Path("missing.db").exists()
