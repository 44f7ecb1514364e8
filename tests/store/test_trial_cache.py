"""Finished trials shared by the processes of one machine (search/store/trial_cache.py)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import optuna
import pytest
from optuna.trial import FrozenTrial, TrialState

from search.store import trial_cache
from search.store.trial_cache import CACHE_ENV, TrialCache, cache_root


def _trials() -> list[FrozenTrial]:
    """A COMPLETE, a PRUNED (with steps) and a RUNNING trial, as Optuna's storage gives them."""
    study = optuna.create_study()
    done = study.ask({"lr": optuna.distributions.FloatDistribution(1e-4, 1e-1, log=True)})
    done.set_user_attr("epochs_run", 3)
    study.tell(done, 0.75)
    pruned = study.ask()
    pruned.report(0.5, step=1)
    study.tell(pruned, state=TrialState.PRUNED)
    study.ask()
    return study.get_trials()


def test_finished_trials_come_back_equal_running_ones_are_not_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "shared"))
    done, pruned, running = _trials()
    writer, reader = TrialCache.open("token"), TrialCache.open("token")
    assert writer is not None and reader is not None
    writer.put([done, pruned, running])
    found = reader.get([done._trial_id, pruned._trial_id, running._trial_id, 99])
    assert found == {done._trial_id: done, pruned._trial_id: pruned}
    assert found[done._trial_id].params == {"lr": done.params["lr"]}
    assert found[pruned._trial_id].intermediate_values == {1: 0.5}
    assert (tmp_path / "shared").stat().st_mode & 0o777 == 0o700
    other = TrialCache.open("another study")
    assert other is not None and other.get([done._trial_id]) == {}  # one folder per study


def test_a_file_cut_short_is_read_from_the_database_instead(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    done, pruned, _ = _trials()
    cache = TrialCache.open("t")
    assert cache is not None
    cache.put([done, pruned])
    path = cache.folder / f"{done._trial_id}.pkl"
    path.write_bytes(path.read_bytes()[:20])
    with caplog.at_level(logging.DEBUG, logger=trial_cache.__name__):
        assert cache.get([done._trial_id, pruned._trial_id]) == {pruned._trial_id: pruned}
    assert f"shared trial {done._trial_id} unreadable" in caplog.text
    assert not [p for p in cache.folder.iterdir() if p.name.startswith(".")]  # no part left behind


def test_off_or_a_folder_others_can_write_is_not_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv(CACHE_ENV, "off")
    assert cache_root() is None and TrialCache.open("t") is None
    shared = tmp_path / "team"
    shared.mkdir(mode=0o777)
    os.chmod(shared, 0o777)  # the umask may have taken bits off
    monkeypatch.setenv(CACHE_ENV, str(shared))
    with caplog.at_level(logging.WARNING, logger=trial_cache.__name__):
        assert TrialCache.open("t") is None
    assert "not a folder only this user can write" in caplog.text and "mode 777" in caplog.text
    assert f"Fix: set {CACHE_ENV} to a private folder" in caplog.text


def test_by_default_a_private_folder_under_the_temporary_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(CACHE_ENV)
    monkeypatch.setattr(trial_cache.tempfile, "tempdir", str(tmp_path))
    root = cache_root()
    assert root == tmp_path / f"convnet-search-{os.getuid()}" / "trials"
    assert root.is_dir() and root.stat().st_mode & 0o777 == 0o700


def test_a_default_folder_someone_else_made_first_is_not_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The default's first level has a predictable name: made by another user (here: writable by
    others) before this one, the trials below it could be swapped for a pickle of theirs."""
    monkeypatch.delenv(CACHE_ENV)
    monkeypatch.setattr(trial_cache.tempfile, "tempdir", str(tmp_path))
    planted = tmp_path / f"convnet-search-{os.getuid()}"
    planted.mkdir()
    os.chmod(planted, 0o777)
    with caplog.at_level(logging.WARNING, logger=trial_cache.__name__):
        assert cache_root() is None
    assert str(planted) in caplog.text and "mode 777" in caplog.text


def test_a_file_others_can_write_is_never_loaded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "shared"))
    done, pruned, _ = _trials()
    cache = TrialCache.open("t")
    assert cache is not None
    cache.put([done, pruned])
    os.chmod(cache.folder / f"{done._trial_id}.pkl", 0o666)
    with caplog.at_level(logging.WARNING, logger=trial_cache.__name__):
        assert cache.get([done._trial_id, pruned._trial_id]) == {pruned._trial_id: pruned}
    assert "is not this user's: ignored" in caplog.text


def test_a_copy_of_the_database_keeps_its_own_trials(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The token travels with a copied database; its trial ids then name other trials."""
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "shared"))
    done, _, _ = _trials()
    original = TrialCache.open("token", "('sqlite', '/data/studies.db')")
    copy = TrialCache.open("token", "('sqlite', '/data/branch.db')")
    assert original is not None and copy is not None
    original.put([done])
    assert copy.get([done._trial_id]) == {}
    assert original.get([done._trial_id]) == {done._trial_id: done}
