"""Shared fixtures: run the CLI as a user would, in a temporary working directory, on tiny data."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
CIFAR_SAMPLE = REPO / "tests" / "data" / "cifar10-sample"  # 200 real CIFAR-10 PNGs, 14-28 per class

REPO_STORAGE = REPO / "storage"  # what `search run` from the project root writes; tests must not


def _repo_storage_paths() -> set[Path]:
    return set(REPO_STORAGE.rglob("*")) if REPO_STORAGE.is_dir() else set()


@pytest.fixture(autouse=True)
def _writes_only_to_temporary_directories() -> Iterator[None]:
    """Fail a test (or the module fixture it started) that adds anything under the repo's storage/."""
    before = _repo_storage_paths()
    yield
    added = sorted(str(p.relative_to(REPO)) for p in _repo_storage_paths() - before)
    assert not added, f"the test wrote into the repository (use tmp_path / workdir): {added}"


@pytest.fixture(autouse=True, scope="session")
def _trial_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Finished trials shared between processes (search/store/trial_cache.py) in the session's
    temporary folder, not the machine's, for the tests and the workers they start."""
    os.environ["SEARCH_TRIAL_CACHE"] = str(tmp_path_factory.mktemp("trial-cache"))


def cli_env() -> dict[str, str]:
    """Environment for CLI subprocesses: this checkout's package first, few threads, no colour."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env.setdefault("OMP_NUM_THREADS", "1")
    env["PYTHONUNBUFFERED"] = "1"
    return env


def run_cli(
    *args: str, cwd: Path, timeout: float = 300, check: int | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m search ARGS`` in ``cwd``; with ``check``, assert the exit code."""
    proc = subprocess.run(
        [sys.executable, "-m", "search", *args],
        check=False,
        cwd=cwd,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check is not None:
        assert proc.returncode == check, (
            f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
        )
    return proc


def popen_cli(*args: str, cwd: Path) -> subprocess.Popen[str]:
    """``python -m search ARGS`` in the background, with Ctrl-C (SIGINT) at its default."""
    return subprocess.Popen(
        [sys.executable, "-m", "search", *args],
        cwd=cwd,
        env=cli_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # noqa: PLW1509
    )


def tiny_config(**sections: Any) -> dict[str, Any]:
    """A study config that runs in seconds on digits; sections override top-level keys."""
    cfg: dict[str, Any] = {
        "name": "tiny",
        "seed": 0,
        "data": {"dataset": "digits"},
        "model": {"padding": 1},
        "train": {"epochs": 2, "patience": 2},
        "search": {
            "n_trials": 3,
            "sampler": {"name": "random"},
            "pruner": {"name": "none"},
            "space": {
                "c1": {"choices": [4, 8]},
                "c2": {"choices": [8]},
                "l1": {"choices": [16]},
                "lr": {"low": 1.0e-3, "high": 1.0e-2, "log": True},
                "batch_size": {"choices": [64]},
            },
        },
    }
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(cfg.get(key), dict):
            cfg[key] = {**cfg[key], **value}
        else:
            cfg[key] = value
    return cfg


def write_config(path: Path, cfg: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh working directory (storage/ lands inside it)."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def png_size(path: Path) -> tuple[int, int]:
    """(height, width) in pixels of a PNG file, read from its IHDR header."""
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR", f"{path} is not a PNG"
    return int.from_bytes(head[20:24], "big"), int.from_bytes(head[16:20], "big")
