"""Checkpoints and weights on disk: keyed by study, unreadable files, full and unwritable folders.

Each fault is reproduced the way a user meets it (``search run`` / ``search worker`` through the
CLI); the full disk is injected in-process (``OSError(ENOSPC)`` from the one function that writes
tensor files), since a real full disk needs a mount.
"""

from __future__ import annotations

import errno
import io
import os
import pickle
from pathlib import Path
from typing import Any

import optuna
import pytest
import torch
from optuna.trial import FixedTrial, TrialState

import search.store.artifacts
import search.store.files
from search.cli import main
from search.config import config_from_dict
from search.store.artifacts import (
    CHECKPOINT_KEY_ATTR,
    CheckpointStore,
    UnreadableFile,
    UnwritableFolder,
    check_writable,
    load_tensors,
    save_atomic,
    unwritable_reason,
)
from search.study.space import suggest
from search.study.study import RetryStale, make_storage
from tests.conftest import run_cli, tiny_config, write_config


class _Payload:
    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, ("echo pwned",))


def _real_checkpoint_bytes() -> bytes:
    buf = io.BytesIO()
    torch.save({"epoch": 1, "params": {"c1": 4}, "model": {"w": torch.randn(300)}}, buf)
    return buf.getvalue()


# Unreadable files as found in the wild: random bytes, cut off, empty, text, pickled code.
CORRUPT: dict[str, bytes] = {
    "random": bytes(range(256)) * 20,
    "truncated": _real_checkpoint_bytes()[:-40],
    "half": _real_checkpoint_bytes()[:700],
    "empty": b"",
    "text": b"not a checkpoint\n",
    "pickled-code": pickle.dumps({"epoch": _Payload()}, protocol=2),
    "pickled-list": pickle.dumps([1, 2, 3], protocol=2),
}


def _config(workdir: Path, n_trials: int = 1, **sections: Any) -> Path:
    raw = tiny_config(train={"epochs": 1, "patience": 1, "checkpoint_every_s": 0}, **sections)
    raw["search"] = {**raw["search"], "n_trials": n_trials}
    return write_config(workdir / "tiny.yaml", raw)


def _study(workdir: Path, name: str = "tiny") -> optuna.Study:
    url = f"sqlite:///{workdir}/storage/studies.db"
    return optuna.load_study(study_name=name, storage=make_storage(url, create=False, heartbeat=False))


def _requeue_copy_of(study: optuna.Study, number: int, reason: str) -> int:
    """Add a FAIL trial with trial ``number``'s params (as a killed or interrupted attempt) and
    re-queue it the way the run does; returns the failed trial's number."""
    src = next(t for t in study.get_trials() if t.number == number)
    study.add_trial(
        optuna.create_trial(
            state=TrialState.FAIL,
            params=src.params,
            distributions=src.distributions,
            user_attrs={"fail_reason": reason},
        )
    )
    failed = study.get_trials()[-1]
    assert RetryStale(max_retry=3).retry(study, failed)
    return failed.number


def _objective_params(workdir: Path, trial_params: dict[str, Any]) -> dict[str, Any]:
    """The params dict the objective stores in a checkpoint for a trial with ``trial_params``."""
    import yaml

    cfg = config_from_dict(yaml.safe_load((workdir / "tiny.yaml").read_text()))
    return dict(suggest(FixedTrial(trial_params), cfg.search.space))


def _temp_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if ".tmp" in p.name or p.name.startswith(".upload-")]


# --------------------------------------------------------------------------- item 2: keyed by study


def test_a_new_study_of_an_old_name_never_touches_the_old_studys_checkpoints(workdir: Path) -> None:
    """Old study: an interrupted trial, re-queued, with a checkpoint. ``--fresh`` archives it; the
    new study (same name, same seed, so the same params) retries a trial of the same number: it
    must start over, not load the archived study's checkpoint, and the archive keeps its file."""
    cfg = _config(workdir, n_trials=1)
    run_cli("run", str(cfg), "--device", "cpu", cwd=workdir, check=0)
    old = _study(workdir)
    interrupted = _requeue_copy_of(old, 0, "interrupted")
    old_store = CheckpointStore.for_study(workdir / "storage" / "checkpoints", old)
    params = _objective_params(workdir, old.trials[0].params)
    old_file = old_store.save(interrupted, {"epoch": 1, "params": params, "marker": torch.ones(3)})
    old_key = old.user_attrs[CHECKPOINT_KEY_ATTR]

    proc = run_cli("run", str(cfg), "--device", "cpu", "--fresh", cwd=workdir, check=0)
    archived_name = next(n for n in optuna.get_all_study_names(old._storage) if n.startswith("tiny-old-"))
    archived, new = _study(workdir, archived_name), _study(workdir)
    assert archived.user_attrs[CHECKPOINT_KEY_ATTR] == old_key  # the copy keeps pointing at its files
    assert new.user_attrs[CHECKPOINT_KEY_ATTR] != old_key
    assert old_file.is_file(), proc.stderr  # the new study's trials did not delete it

    # A killed attempt of the new study with the same number and params, re-queued.
    assert _requeue_copy_of(new, 0, "stale") == interrupted
    run_cli("run", str(cfg), "--device", "cpu", "--n-trials", "2", cwd=workdir, check=0)
    retry = _study(workdir).get_trials()[-1]
    assert retry.system_attrs["retry_history"] == [interrupted]
    assert retry.state == TrialState.COMPLETE
    assert "resumed_from_trial" not in retry.user_attrs  # started over: nothing of the old study
    assert old_file.is_file()
    assert torch.equal(
        CheckpointStore.for_study(workdir / "storage" / "checkpoints", archived).load(interrupted)["marker"],
        torch.ones(3),
    )
    new_dir = workdir / "storage" / "checkpoints" / new.user_attrs[CHECKPOINT_KEY_ATTR]
    assert not list(new_dir.glob("*.pt"))  # the new study's own checkpoints were cleaned up


def test_checkpoint_keys_are_unique_safe_and_kept(tmp_path: Path) -> None:
    storage = make_storage(f"sqlite:///{tmp_path}/s.db", heartbeat=False)
    a = optuna.create_study(study_name="x", storage=storage)
    key = search.store.artifacts.ensure_checkpoint_key(a)
    assert key.startswith("x-") and search.store.artifacts.ensure_checkpoint_key(a) == key
    optuna.delete_study(study_name="x", storage=storage)
    b = optuna.create_study(study_name="x", storage=storage)  # same name, maybe the same id
    assert search.store.artifacts.ensure_checkpoint_key(b) != key
    b.set_user_attr(CHECKPOINT_KEY_ATTR, "../../escape")
    with pytest.raises(ValueError, match="unsafe"):
        CheckpointStore.for_study(tmp_path, b)
    legacy = optuna.create_study(study_name="legacy", storage=storage)
    legacy.enqueue_trial({"x": 1})  # a study from before keys: it keeps its name's folder
    assert search.store.artifacts.ensure_checkpoint_key(legacy) == "legacy"


# --------------------------------------------------------------------------- item 6: unreadable files


@pytest.mark.parametrize("content", sorted(CORRUPT))
def test_unreadable_checkpoints_count_as_none(tmp_path: Path, content: str) -> None:
    store = CheckpointStore(tmp_path, "k")
    store.dir.mkdir()
    store.path(3).write_bytes(CORRUPT[content])
    assert store.load(3) is None
    with pytest.raises(UnreadableFile) as caught:
        load_tensors(store.path(3))
    assert str(store.path(3)) in str(caught.value) and "weights_only=False" not in str(caught.value)


def test_a_retry_with_a_corrupt_checkpoint_starts_over(workdir: Path) -> None:
    """Random bytes and pickled code in the checkpoints of two re-queued trials: both retries
    start over and COMPLETE (warning in the log), and the bad files are gone afterwards."""
    cfg = _config(workdir, n_trials=1)
    run_cli("run", str(cfg), "--device", "cpu", cwd=workdir, check=0)
    study = _study(workdir)
    store = CheckpointStore.for_study(workdir / "storage" / "checkpoints", study)
    store.dir.mkdir(parents=True, exist_ok=True)
    bad = []
    for content in ("random", "pickled-code"):
        number = _requeue_copy_of(study, 0, "interrupted")
        store.path(number).write_bytes(CORRUPT[content])
        bad.append(number)
    proc = run_cli("run", str(cfg), "--device", "cpu", "--n-trials", "3", cwd=workdir, check=0)
    retries = [t for t in _study(workdir).get_trials() if t.system_attrs.get("retry_history")]
    assert [t.system_attrs["retry_history"] for t in retries] == [[n] for n in bad]
    assert all(t.state == TrialState.COMPLETE for t in retries), [t.user_attrs for t in retries]
    assert all("resumed_from_trial" not in t.user_attrs for t in retries)
    assert proc.stderr.count("ignoring unreadable checkpoint") == 2
    assert "weights_only=False" not in proc.stderr + proc.stdout
    assert not list(store.dir.glob("*.pt*"))


# --------------------------------------------------------------------------- item 8: storage faults


@pytest.mark.parametrize("field", ["artifacts_dir", "checkpoints_dir", "data.cache_dir"])
def test_an_unwritable_folder_is_refused_before_the_first_trial(workdir: Path, field: str) -> None:
    """A file where the folder should be (fails for root too): exit 2, the field named, nothing created."""
    (workdir / "blocker").write_text("a file, not a folder")
    cfg = _config(workdir)
    proc = run_cli("run", str(cfg), "--device", "cpu", "--set", f"{field}=blocker/sub", cwd=workdir)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("error:") == 1 and "Traceback" not in proc.stderr
    assert f"error: {field}: " in proc.stderr and "blocker is a file, not a folder" in proc.stderr
    assert "Fix:" in proc.stderr
    assert not (workdir / "storage").exists()  # no study, no cache, nothing


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_artifacts_folder_is_refused_for_run_and_worker(workdir: Path) -> None:
    cfg = _config(workdir)
    run_cli("run", str(cfg), "--device", "cpu", cwd=workdir, check=0)
    artifacts = workdir / "storage" / "artifacts"
    artifacts.chmod(0o555)
    try:
        proc = run_cli("run", str(cfg), "--device", "cpu", "--n-trials", "2", cwd=workdir, check=2)
        assert "error: artifacts_dir: " in proc.stderr and "not writable" in proc.stderr
        url = f"sqlite:///{workdir}/storage/studies.db"
        args = ("worker", "--study-name", "tiny", "--storage", url, "--device", "cpu", "--n-trials", "2")
        proc = run_cli(*args, cwd=workdir, check=2)
        assert "error: artifacts_dir: " in proc.stderr
    finally:
        artifacts.chmod(0o755)
    assert len(_study(workdir).get_trials()) == 1


def test_unwritable_reason_creates_nothing(tmp_path: Path) -> None:
    assert unwritable_reason(tmp_path / "a" / "b" / "c") is None
    assert not (tmp_path / "a").exists() and not list(tmp_path.iterdir())
    (tmp_path / "f").write_text("x")
    assert unwritable_reason(tmp_path / "f") == f"{tmp_path / 'f'} is a file, not a folder"
    with pytest.raises(UnwritableFolder, match=r"^checkpoints_dir: .*\(got '.*f/x'\)\. Fix: "):
        check_writable({"artifacts_dir": tmp_path / "ok", "checkpoints_dir": tmp_path / "f" / "x"})


def _full_disk_under(monkeypatch: pytest.MonkeyPatch, folder: str) -> None:
    """Files under ``folder`` get half their bytes written, then ENOSPC (as a full disk does)."""
    real = search.store.files._write_file

    def write(path: Path, data: bytes) -> None:
        if folder in Path(path).resolve().parts:
            with open(path, "wb") as f:
                f.write(data[: len(data) // 2])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        real(path, data)

    monkeypatch.setattr(search.store.files, "_write_file", write)


@pytest.mark.parametrize("folder", ["checkpoints", "artifacts"])
def test_a_full_disk_ends_the_run_cleanly(
    workdir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], folder: str
) -> None:
    """ENOSPC while saving a checkpoint or the weights: one error line naming the folder, exit 1,
    the trial FAIL with a reason (none left RUNNING), no more trials, and no temp files."""
    cfg = _config(workdir, n_trials=3)
    _full_disk_under(monkeypatch, folder)
    assert main(["run", str(cfg), "--device", "cpu"]) == 1
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and "Traceback" not in err and "Should not reach" not in err
    assert "error: no space left on the device of " in err and f"storage/{folder}" in err
    assert "Fix: free disk space there" in err
    trials = _study(workdir).get_trials()
    assert [t.state for t in trials] == [TrialState.FAIL]  # the run stopped at the first fault
    assert trials[0].user_attrs["fail_reason"].startswith("storage: no space left")
    assert not _temp_files(workdir / "storage")
    for sub in ("checkpoints", "artifacts"):  # no half-written checkpoint or weights
        assert not [p for p in (workdir / "storage" / sub).rglob("*") if p.is_file()]

    monkeypatch.undo()  # space freed: the same command resumes and finishes
    monkeypatch.chdir(workdir)  # undo() also undid the workdir fixture's chdir
    assert main(["run", str(cfg), "--device", "cpu"]) == 0


def test_save_atomic_leaves_the_old_file_and_no_temp_on_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = save_atomic({"v": torch.zeros(2)}, tmp_path / "c" / "x.pt")
    _full_disk_under(monkeypatch, "c")
    with pytest.raises(search.store.artifacts.StorageFault, match="no space left"):
        save_atomic({"v": torch.ones(2)}, target)
    assert torch.equal(load_tensors(target)["v"], torch.zeros(2))  # the last good one is intact
    assert sorted(p.name for p in target.parent.iterdir()) == ["x.pt"]
