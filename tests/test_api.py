"""The public API: what a library user imports from ``search`` itself, loaded lazily, and the one
exception base whose ``exit_code`` the CLI maps."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

import search
from search.errors import EXIT_BAD_INPUT, EXIT_FAILED, InputError, RunFailure, SearchError
from tests.conftest import REPO, cli_env

PUBLIC = {
    "load_config": "search.config",
    "StudyConfig": "search.config",
    "run_study": "search.study.run",
    "RunOptions": "search.study.run",
    "RunResult": "search.study.run",
    "Outcome": "search.study.run",
    "SearchError": "search.errors",
}


@pytest.mark.parametrize("name", sorted(PUBLIC))
def test_each_public_name_imports_from_search(name: str) -> None:
    namespace: dict[str, object] = {}
    exec(f"from search import {name}", namespace)
    assert namespace[name] is getattr(importlib.import_module(PUBLIC[name]), name)
    assert name in search.__all__ and name in dir(search)


def test_the_public_api_is_exactly_what_all_lists() -> None:
    assert sorted(search.__all__) == sorted([*PUBLIC, "__version__"])
    with pytest.raises(AttributeError, match="no attribute 'nothing_here'"):
        search.nothing_here  # noqa: B018


def test_importing_search_or_its_help_loads_neither_torch_nor_optuna() -> None:
    script = (
        "import sys\n"
        "import search, search.config\n"
        "from search import SearchError, StudyConfig, load_config\n"
        "from search.cli import main\n"
        "try:\n"
        "    main(['--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "print('heavy:', sorted(m for m in ('torch', 'optuna', 'optuna_dashboard') if m in sys.modules))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script],
        cwd=REPO,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert "usage: search" in proc.stdout and proc.stdout.splitlines()[-1] == "heavy: []"


def _error(module: str, name: str) -> type[BaseException]:
    cls: type[BaseException] = getattr(importlib.import_module(module), name)
    return cls


@pytest.mark.parametrize(
    ("module", "name"),
    [
        ("search.config", "ConfigError"),
        ("search.engine.data", "DataError"),
        ("search.engine.model", "InputTooSmallError"),
        ("search.engine.tensorboard", "TensorBoardError"),
        ("search.store.storage", "StorageError"),
        ("search.store.files", "UnreadableFile"),
        ("search.store.files", "UnwritableFolder"),
        ("search.study.resume", "ResumeConflict"),
        ("search.results.export", "ExportError"),
        ("search.serve.dashboard", "DashboardError"),
        ("search.serve.app", "AppError"),
    ],
)
def test_bad_input_errors_are_search_errors_with_exit_2(module: str, name: str) -> None:
    cls = _error(module, name)
    assert issubclass(cls, SearchError) and issubclass(cls, InputError) and issubclass(cls, ValueError)
    assert cls.exit_code == EXIT_BAD_INPUT  # type: ignore[attr-defined]


def test_run_failures_exit_1_and_a_storage_fault_is_still_an_os_error() -> None:
    import errno

    from search.store.files import StorageFault
    from search.study.failures import DeviceFailure

    for cls in (StorageFault, DeviceFailure):
        assert issubclass(cls, RunFailure) and cls.exit_code == EXIT_FAILED
    fault = StorageFault("/full/disk/w.pt", OSError(errno.ENOSPC, "No space left on device"))
    assert isinstance(fault, OSError) and fault.errno == errno.ENOSPC
    assert str(DeviceFailure("trial 3: device error: boom")) == (
        f"device: trial 3: device error: boom. Fix: {DeviceFailure.hint}"
    )
