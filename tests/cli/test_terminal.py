"""What `search run` shows on the terminal: a line per trial, the summary, the next commands; the
per-trial housekeeping logs only with -v; errors mapped to exit codes by their class alone."""

from __future__ import annotations

import errno
from pathlib import Path

import optuna
import pytest

from search import cli
from search.cli.main import main
from search.cli.progress import next_steps
from search.config import config_from_dict
from search.store.artifacts import WEIGHTS_ATTR
from search.store.files import StorageFault
from tests.conftest import tiny_config, write_config


def test_a_run_shows_trial_lines_the_summary_and_next_steps_and_no_housekeeping(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """keep_top_k 1: trial 2 beats trial 0, whose weights file is removed; that is not logged
    (DEBUG) at the default verbosity, and the log-midpoint's lr is rounded to 4 digits."""
    search = tiny_config()["search"]
    # lr from 1e-4: trial 0 (lr 0.00173) trains to 0.33 and trial 2 (lr 0.0023) to 0.42 in 2 epochs
    space = {**search["space"], "lr": {"low": 1.0e-4, "high": 3.0e-2, "log": True}}
    cfg = write_config(workdir / "tiny.yaml", tiny_config(search={**search, "space": space, "keep_top_k": 1}))
    assert main(["run", str(cfg), "--device", "cpu"]) == 0
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert [line.split()[:3] for line in lines[:3]] == [["trial", str(n), "COMPLETE"] for n in range(3)]
    assert lines[3].startswith("study tiny: 3/3 trials finished in ")
    assert lines[4:] == [
        "next: search report tiny   (tables and plots under storage/reports/tiny)",
        "      search export tiny   (the best trial's weights, for search predict / search app)",
        "      search finetune tiny (continue the best weights, then test once)",
    ]
    # a weights file was removed during the run (a trial records one that no longer exists) ...
    storage = f"sqlite:///{workdir}/storage/studies.db"
    trials = optuna.load_study(study_name="tiny", storage=storage).trials
    ids = [t.user_attrs[WEIGHTS_ATTR] for t in trials if WEIGHTS_ATTR in t.user_attrs]
    kept = {p.name for p in (workdir / "storage" / "artifacts").iterdir()}
    assert len(ids) >= 2 and sum(a in kept for a in ids) == 1
    # ... and the log said nothing about it; floats in log lines are rounded
    assert "removed" not in err and "weights file" not in err
    assert "the space's log-midpoint c1=4 c2=8 l1=16 lr=0.001732 batch_size=64" in err
    assert "0.0017320508" not in err


def test_next_steps_name_a_storage_that_is_not_the_default_without_its_password() -> None:
    url = "postgresql+psycopg://search:s3cret@db.example:5432/studies"
    text = next_steps(config_from_dict(tiny_config(name="cifar-run", storage=url)))
    flag = "--storage 'postgresql+psycopg://search:***@db.example:5432/studies'"
    assert text.splitlines() == [
        f"next: search report cifar-run {flag}   (tables and plots under storage/reports/cifar-run)",
        f"      search export cifar-run {flag}   (the best trial's weights, for search predict / search app)",
        f"      search finetune cifar-run {flag} (continue the best weights, then test once)",
    ]
    assert "s3cret" not in text


def test_errors_map_to_exit_codes_by_their_class(
    workdir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A RunFailure (a full disk) from any command: its message after `error: `, exit 1."""

    def full_disk(_args: object) -> int:
        raise StorageFault(workdir / "storage" / "x.pt", OSError(errno.ENOSPC, "No space left on device"))

    monkeypatch.setattr(cli.schema, "run", full_disk)
    assert main(["schema"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: no space left on the device of ") and err.count("\n") == 1
    assert "Fix: free disk space there" in err
