"""Parallel workers, joining studies, killed workers, Ctrl-C and stale trials, on SQLite and PostgreSQL."""

from __future__ import annotations

import contextlib
import copy
import os
import re
import signal
import subprocess
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import optuna
import pytest
import sqlalchemy
import torch
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial, TrialState

from search.config import ConfigError, ModelConfig, TrainConfig, config_from_dict, to_dict
from search.engine.arch import build_model
from search.engine.augment import AugmentSpec, BatchTransform
from search.engine.data import ImageSet
from search.engine.train import fit
from search.study.objective import device_label
from search.study.study import CONFIG_ATTR, RetryStale, make_storage, running_trials
from search.study.workers import assign_devices, worker_process
from tests.conftest import cli_env, popen_cli, run_cli, tiny_config, write_config
from tests.pg import postgres_server, storage_url  # noqa: F401  (fixtures)

FAULT_SEARCH = {"heartbeat_interval_s": 1, "grace_period_s": 3}


def _slow_config(
    url: str, tmp: Path, n_trials: int, epochs: int = 4, n_samples: int = 1600
) -> dict[str, Any]:
    """Trials of a few epochs, each long enough (a few seconds) to be caught mid-trial.

    Also creates the storage's tables, so the test can poll it while the run starts.
    """
    make_storage(url, heartbeat=False)
    cfg = tiny_config(
        name="faults",
        storage=url,
        data={
            "dataset": "synthetic",
            "synthetic": {"shape": [3, 16, 16], "n_classes": 4, "n_samples": n_samples},
        },
        train={"epochs": epochs, "patience": epochs, "checkpoint_every_s": 0},
    )
    cfg["search"] = {
        **cfg["search"],
        **FAULT_SEARCH,
        "n_trials": n_trials,
        "space": {**cfg["search"]["space"], "c1": {"choices": [16]}, "c2": {"choices": [32]}},
    }
    return cfg


def _trials(url: str, name: str) -> list[FrozenTrial]:
    storage = make_storage(url, heartbeat=False)
    return optuna.load_study(study_name=name, storage=storage).get_trials()


def _wait_for_trial_mid_run(
    url: str, name: str, proc: subprocess.Popen[str], timeout: float = 180
) -> FrozenTrial:
    """A RUNNING trial that has finished at least one epoch (so it has a checkpoint)."""
    end = time.monotonic() + timeout
    storage = None  # made once: a new engine per poll costs more than an epoch on a loaded machine
    while time.monotonic() < end:
        assert proc.poll() is None, f"run ended early: {proc.communicate()}"
        try:
            storage = storage or make_storage(url, heartbeat=False)
            for t in optuna.load_study(study_name=name, storage=storage).get_trials():
                if t.state == TrialState.RUNNING and t.intermediate_values:  # epoch 1 reported
                    return t
        except KeyError:  # the study is not created yet
            pass
        time.sleep(0.1)
    raise AssertionError("no trial got past its first epoch in time")


def _finished(trials: list[FrozenTrial]) -> int:
    return sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)


# --------------------------------------------------------------------------- units


FAMILIES = {  # every architecture family, tiny: model.block for the ConvNet, and ResNet-18
    "plain": ModelConfig(padding=1, dropout=(0.0, 0.0)),
    "residual": ModelConfig(block="residual", batchnorm=True),
    "depthwise": ModelConfig(block="depthwise", batchnorm=True),
    "inception": ModelConfig(block="inception", batchnorm=True),
    "resnet18": ModelConfig(arch="resnet18"),
}


@pytest.mark.parametrize("family", list(FAMILIES))
def test_fit_resumed_from_a_checkpoint_ends_where_an_uninterrupted_run_ends(family: str) -> None:
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (96, 1, 8, 8), dtype=torch.uint8, generator=gen)
    labels = torch.randint(0, 3, (96,), generator=gen)
    train, val = ImageSet(images[:64], labels[:64]), ImageSet(images[64:], labels[64:])
    transform = BatchTransform([0.5], [0.5], AugmentSpec(hflip=True))
    cfg = TrainConfig(epochs=3, patience=3, amp=False, channels_last=False)

    def model() -> torch.nn.Module:
        torch.manual_seed(1)
        return build_model(FAMILIES[family], 4, 8, 16, (1, 8, 8), 3)

    states: list[dict[str, Any]] = []
    full = fit(
        model(),
        train,
        val,
        lr=1e-2,
        batch_size=16,
        cfg=cfg,
        transform=transform,
        on_checkpoint=lambda s: states.append(copy.deepcopy(s.state_dict())),
    )
    assert [s["epoch"] for s in states] == [1, 2, 3]
    resumed = fit(model(), train, val, lr=1e-2, batch_size=16, cfg=cfg, transform=transform, resume=states[0])
    assert resumed.epochs_run == 3
    assert [round(m.val_acc, 6) for m in resumed.history] == [round(m.val_acc, 6) for m in full.history]
    assert resumed.best_state is not None and full.best_state is not None
    for key, value in full.best_state.items():
        assert torch.allclose(value.float(), resumed.best_state[key].float()), key


def test_fault_config_keys_are_validated() -> None:
    with pytest.raises(ConfigError, match=r"search.grace_period_s: must exceed search.heartbeat_interval_s"):
        config_from_dict({"search": {"heartbeat_interval_s": 5, "grace_period_s": 5}})
    with pytest.raises(ConfigError, match=r"search.heartbeat_interval_s: must be >= 1"):
        config_from_dict({"search": {"heartbeat_interval_s": 0}})
    with pytest.raises(ConfigError, match=r"search.max_retry: must be >= 0"):
        config_from_dict({"search": {"max_retry": -1}})


def test_assign_devices_on_cpu_and_bad_counts() -> None:
    assert assign_devices("cpu", 3, 1) == ["cpu", "cpu", "cpu"]
    with pytest.raises(ValueError, match="--workers must be >= 1"):
        assign_devices("cpu", 0, 1)
    with pytest.raises(ValueError, match="--workers-per-gpu must be >= 1"):
        assign_devices("cpu", 2, 0)


def test_each_local_gpu_worker_sees_only_its_gpu_and_shared_ones_release_memory() -> None:
    cfg = config_from_dict({"name": "g", "search": {"n_trials": 4}})
    cmd, env = worker_process(cfg, "cuda:1", 3, {"PATH": "/bin"}, shared_gpu=True)
    assert env == {"PATH": "/bin", "CUDA_VISIBLE_DEVICES": "1"}
    assert cmd[cmd.index("--device") + 1] == "cuda:0" and cmd[cmd.index("--worker-index") + 1] == "3"
    assert cmd[-1] == "--shared-gpu"
    # under the parent's own CUDA_VISIBLE_DEVICES, its cuda:1 is the second GPU listed there
    _, env = worker_process(cfg, "cuda:1", 0, {"CUDA_VISIBLE_DEVICES": "4, 6"})
    assert env["CUDA_VISIBLE_DEVICES"] == "6"
    cmd, env = worker_process(cfg, "cpu", 0, {"PATH": "/bin"})
    assert env == {"PATH": "/bin"} and "--shared-gpu" not in cmd
    assert cmd[cmd.index("--device") + 1] == "cpu"


def test_trials_record_which_gpu_their_worker_sees(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert device_label(torch.device("cuda:0")) == "cuda:0" and device_label(torch.device("cpu")) == "cpu"
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4, 6")
    assert device_label(torch.device("cuda:0")) == "cuda:0 (GPU 4)"
    assert device_label(torch.device("cuda:1")) == "cuda:1 (GPU 6)"
    assert device_label(torch.device("cpu")) == "cpu"


def test_retry_keeps_params_and_history_up_to_max_retry_then_drops_the_checkpoint(tmp_path: Path) -> None:
    from search.store.artifacts import CheckpointStore

    storage = make_storage(f"sqlite:///{tmp_path}/s.db", heartbeat=False)
    study = optuna.create_study(storage=storage, study_name="r")
    checkpoints = CheckpointStore(str(tmp_path / "ckpt"), "r")
    retry = RetryStale(max_retry=2, checkpoints_dir=str(tmp_path / "ckpt"))
    trial = study.ask()
    trial.suggest_int("c1", 4, 8)
    trial.set_user_attr("fail_reason", "interrupted")
    trial.report(0.5, 1)
    study.tell(trial, state=TrialState.FAIL)
    failed = study.trials[0]
    assert retry.retry(study, failed)
    retry_trial = study.trials[1]
    assert retry_trial.state == TrialState.WAITING
    assert retry_trial.params == failed.params
    assert RetryHeartbeatStaleTrialCallback.retried_trial_number(retry_trial) == 0
    assert "fail_reason" not in retry_trial.user_attrs
    assert study.trials[0].user_attrs["fail_reason"] == "interrupted"  # the failed attempt keeps it
    assert retry_trial.intermediate_values == {1: 0.5}
    # A retry of the retry continues the history; the third attempt is refused and, as nothing
    # will resume them, the attempts' checkpoints are deleted.
    study.tell(study.ask(), state=TrialState.FAIL)  # takes the WAITING trial (number 1)
    assert retry.retry(study, study.trials[1])
    assert RetryHeartbeatStaleTrialCallback.retry_history(study.trials[2]) == [0, 1]
    study.tell(study.ask(), state=TrialState.FAIL)
    for n in (0, 1, 2):
        checkpoints.save(n, {"epoch": 1})
    assert not retry.retry(study, study.trials[2])
    assert len(study.trials) == 3
    assert all(checkpoints.load(n) is None for n in (0, 1, 2))


# --------------------------------------------------------------------------- many workers, one study

TRIVIAL_WORKER = """
import pathlib, sys, time, optuna
from search.config import config_from_dict
from search.study.run import RunOptions, run_study
url, name, n, seed = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
# a common start once all four have imported: else the first one up may run all the trivial trials
pathlib.Path(f"ready-{seed}").touch()
deadline = time.monotonic() + 120
while len(list(pathlib.Path(".").glob("ready-*"))) < 4 and time.monotonic() < deadline:
    time.sleep(0.02)
cfg = config_from_dict({"name": name, "storage": url, "seed": seed, "search": {"n_trials": n}})
result = run_study(cfg, RunOptions(objective=lambda t: t.suggest_float("x", 0, 1), join=True))
print(result.started)
"""


def test_four_workers_many_short_trials_reach_the_exact_total(storage_url: str, tmp_path: Path) -> None:  # noqa: F811
    n = 40
    storage = make_storage(storage_url, heartbeat=False)
    optuna.create_study(storage=storage, study_name="short")
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", TRIVIAL_WORKER, storage_url, "short", str(n), str(i)],
            cwd=tmp_path,
            env=cli_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(4)
    ]
    outs = [p.communicate(timeout=240) for p in procs]
    for p, (_out, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err
        assert "database is locked" not in err
    trials = _trials(storage_url, "short")
    assert _finished(trials) == n
    assert all(t.state != TrialState.RUNNING for t in trials)
    surplus = [t for t in trials if t.state == TrialState.FAIL]
    assert all(t.user_attrs.get("fail_reason") == "surplus" for t in surplus)
    started = [int(out.split()[-1]) for out, _ in outs]
    assert sum(started) == len(trials)
    assert sum(s > 0 for s in started) >= 2  # the work was shared


def test_killed_worker_trial_is_retried_and_resumes_from_its_checkpoint(
    storage_url: str,  # noqa: F811
    workdir: Path,
) -> None:
    n = 2
    write_config(workdir / "faults.yaml", _slow_config(storage_url, workdir, n_trials=n))
    proc = popen_cli("run", "faults.yaml", "--workers", "2", cwd=workdir)
    victim = _wait_for_trial_mid_run(storage_url, "faults", proc)
    os.kill(int(victim.user_attrs["pid"]), signal.SIGKILL)
    killed_at = time.monotonic()
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, err
    trials = _trials(storage_url, "faults")
    assert _finished(trials) == n
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    assert trials[victim.number].state == TrialState.FAIL
    retry = next(
        t for t in trials if RetryHeartbeatStaleTrialCallback.retried_trial_number(t) == victim.number
    )
    assert retry.state == TrialState.COMPLETE, retry
    assert retry.params == victim.params
    assert retry.user_attrs["resumed_from_trial"] == victim.number
    assert retry.user_attrs["resumed_from_epoch"] >= 1
    assert retry.user_attrs["pid"] != victim.user_attrs["pid"]
    assert retry.datetime_start is not None
    assert time.monotonic() - killed_at >= FAULT_SEARCH["grace_period_s"] - 1
    assert f"trial {victim.number:>4} FAIL" in out
    assert not list((workdir / "storage" / "checkpoints").rglob("*"))  # cleaned up, folders too
    assert "database is locked" not in err


@pytest.mark.parametrize("workers", [1, 2])
def test_ctrl_c_records_interrupted_trials_and_a_rerun_resumes(workdir: Path, workers: int) -> None:
    url = f"sqlite:///{workdir}/studies.db"
    # 6 epochs: the signal must land mid-trial even when a loaded machine polls slowly
    write_config(workdir / "faults.yaml", _slow_config(url, workdir, n_trials=1, epochs=6))
    proc = popen_cli("run", "faults.yaml", "--workers", str(workers), cwd=workdir)
    victim = _wait_for_trial_mid_run(url, "faults", proc)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "interrupted" in out and "run the same command again to resume" in out
    trials = _trials(url, "faults")
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    interrupted = trials[victim.number]
    assert interrupted.state == TrialState.FAIL
    assert interrupted.user_attrs["fail_reason"] == "interrupted"
    assert [p.name for p in (workdir / "storage" / "checkpoints").rglob("*.pt")] == [
        f"trial-{victim.number}.pt"
    ]
    waiting = [t for t in trials if t.state == TrialState.WAITING]
    assert [RetryHeartbeatStaleTrialCallback.retried_trial_number(t) for t in waiting].count(
        victim.number
    ) == 1

    if workers == 1:  # re-run the same command
        run_cli("run", "faults.yaml", cwd=workdir, check=0)
    else:  # or join with `search worker` and no YAML: the config comes from the study
        (workdir / "faults.yaml").unlink()
        proc2 = run_cli(
            "worker", "--study-name", "faults", "--storage", url, "--device", "cpu", cwd=workdir, check=0
        )
        assert "study faults: 1/1 finished" in proc2.stdout
    trials = _trials(url, "faults")
    assert _finished(trials) == 1
    resumed = next(
        t for t in trials if RetryHeartbeatStaleTrialCallback.retried_trial_number(t) == victim.number
    )
    assert resumed.state == TrialState.COMPLETE
    assert resumed.user_attrs["resumed_from_epoch"] >= len(victim.intermediate_values)
    assert resumed.user_attrs["epochs_run"] == 6
    assert not list((workdir / "storage" / "checkpoints").rglob("*"))  # no checkpoint, no empty folder left


def test_worker_for_an_unknown_study_exits_2(storage_url: str, workdir: Path) -> None:  # noqa: F811
    optuna.create_study(storage=make_storage(storage_url, heartbeat=False), study_name="other")
    proc = run_cli("worker", "--study-name", "nope", "--storage", storage_url, cwd=workdir, check=2)
    assert "no study named 'nope'" in proc.stderr and "other" in proc.stderr
    assert proc.stderr.count("error:") == 1


def test_status_lists_running_trials_and_fails_stale_ones(workdir: Path) -> None:
    url = f"sqlite:///{workdir}/studies.db"
    cfg = config_from_dict(tiny_config(storage=url))  # grace period 60 s
    storage = make_storage(url, heartbeat=False)  # a worker from before heartbeats: none recorded
    study = optuna.create_study(storage=storage, study_name="tiny")
    study.set_user_attr(CONFIG_ATTR, to_dict(cfg))
    crashed = study.ask()
    for key, value in {"host": "box1", "pid": 4242, "device": "cuda:1"}.items():
        crashed.set_user_attr(key, value)
    crashed.suggest_int("c1", 4, 8)
    alive = study.ask()
    alive.set_user_attr("host", "box2")
    with storage.engine.begin() as conn:  # the crash happened two minutes ago
        conn.execute(
            sqlalchemy.text("UPDATE trials SET datetime_start = :t WHERE trial_id = :id"),
            {"t": datetime.now() - timedelta(minutes=2), "id": crashed._trial_id},
        )
    storage.record_heartbeat(alive._trial_id)
    rows = {r.number: r for r in running_trials(study, storage, cfg.search.grace_period_s)}
    assert rows[crashed.number].stale and rows[crashed.number].heartbeat_age_s is None
    assert not rows[alive.number].stale

    proc = run_cli("status", "--storage", url, cwd=workdir, check=0)
    line = rf"trial +{crashed.number} host=box1 pid=4242 device=cuda:1 started=1\d\ds ago heartbeat=none  STA"
    assert re.search(line, proc.stdout), proc.stdout
    assert re.search(r"host=box2 pid=None device=\? started=\d+s ago heartbeat=\d+s ago\n", proc.stdout)
    assert "1 stale trial(s); `search status --fail-stale`" in proc.stdout

    proc = run_cli("status", "--storage", url, "--fail-stale", cwd=workdir, check=0)
    assert f"marked FAIL (reason 'stale') and re-queued: #{crashed.number}" in proc.stdout
    trials = study.get_trials()
    assert trials[crashed.number].state == TrialState.FAIL
    assert trials[crashed.number].user_attrs["fail_reason"] == "stale"
    assert trials[alive.number].state == TrialState.RUNNING
    retry = trials[-1]
    assert retry.state == TrialState.WAITING and retry.params == {"c1": crashed.params["c1"]}


def test_run_workers_bad_counts_exit_2(workdir: Path) -> None:
    write_config(workdir / "tiny.yaml", tiny_config())
    proc = run_cli("run", "tiny.yaml", "--workers", "0", cwd=workdir, check=2)
    assert "--workers must be >= 1" in proc.stderr
    assert not (workdir / "storage" / "studies.db").exists()


@pytest.mark.parametrize(("every_s", "saves"), [(0, 3), (3600, 0)])
def test_checkpoints_are_throttled_by_checkpoint_every_s(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, every_s: float, saves: int
) -> None:
    """train.checkpoint_every_s: 0 saves after every epoch; a long interval skips short epochs."""
    import search.store.artifacts
    from search.store.artifacts import CheckpointStore
    from search.study.objective import Objective
    from search.study.run import RunOptions, run_study
    from search.study.study import open_study

    saved: list[int] = []
    real_save = CheckpointStore.save

    def counting_save(self: CheckpointStore, number: int, state: Any) -> Path:
        saved.append(int(state["epoch"]))
        return real_save(self, number, state)

    monkeypatch.setattr(search.store.artifacts.CheckpointStore, "save", counting_save)
    monkeypatch.chdir(tmp_path)  # the data cache (storage/data/cache) lands in tmp_path, not the repo
    raw = tiny_config(
        storage=f"sqlite:///{tmp_path}/s.db",
        checkpoints_dir=str(tmp_path / "ckpt"),
        train={"epochs": 3, "patience": 3, "checkpoint_every_s": every_s},
        search={**tiny_config()["search"], "n_trials": 1},
    )
    cfg = config_from_dict(raw)
    study = open_study(cfg, make_storage(cfg.storage))
    run_study(cfg, RunOptions(objective=Objective(cfg, torch.device("cpu"), None)))
    assert study.trials[0].state == TrialState.COMPLETE
    assert len(saved) == saves
    assert not list((tmp_path / "ckpt").rglob("*.pt"))  # a finished trial leaves no checkpoint


def test_second_ctrl_c_aborts_at_once_and_leaves_a_resumable_study(workdir: Path) -> None:
    """Two SIGINTs 0.2 s apart mid-trial: exit 130 without a traceback, the trial FAIL with reason
    'interrupted' and re-queued, its checkpoint kept; the same command then resumes it."""
    url = f"sqlite:///{workdir}/studies.db"
    # epochs of about a second: the second signal must land before the first has ended the trial
    write_config(workdir / "faults.yaml", _slow_config(url, workdir, n_trials=1, epochs=6, n_samples=6400))
    proc = popen_cli("run", "faults.yaml", cwd=workdir)
    victim = _wait_for_trial_mid_run(url, "faults", proc)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "UpdateFinishedTrialError" not in err
    trials = _trials(url, "faults")
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    assert trials[victim.number].state == TrialState.FAIL
    assert trials[victim.number].user_attrs["fail_reason"] == "interrupted"
    assert list((workdir / "storage" / "checkpoints").glob(f"*/trial-{victim.number}.pt"))  # kept (study key)
    waiting = [t for t in trials if t.state == TrialState.WAITING]
    assert [RetryHeartbeatStaleTrialCallback.retried_trial_number(t) for t in waiting] == [victim.number]

    run_cli("run", "faults.yaml", cwd=workdir, check=0)
    trials = _trials(url, "faults")
    resumed = next(
        t for t in trials if RetryHeartbeatStaleTrialCallback.retried_trial_number(t) == victim.number
    )
    assert resumed.state == TrialState.COMPLETE
    assert resumed.user_attrs["resumed_from_trial"] == victim.number
    assert not list((workdir / "storage" / "checkpoints").rglob("*.pt"))  # the finished retry removed it


def test_fail_stale_says_which_trials_were_not_requeued_and_drops_their_checkpoint(workdir: Path) -> None:
    from search.store.artifacts import CheckpointStore

    url = f"sqlite:///{workdir}/studies.db"
    raw = tiny_config(storage=url, checkpoints_dir=str(workdir / "ckpt"))
    raw["search"] = {**raw["search"], "max_retry": 1}
    cfg = config_from_dict(raw)
    storage = make_storage(url, heartbeat=False)
    study = optuna.create_study(storage=storage, study_name="tiny")
    study.set_user_attr(CONFIG_ATTR, to_dict(cfg))
    first = study.ask()  # an attempt that failed once and was retried: the retry is its last
    first.suggest_int("c1", 4, 8)
    study.tell(first, state=TrialState.FAIL)
    RetryStale(1).retry(study, study.trials[0])
    retried = study.ask()  # takes the retry (number 1); then its worker crashes
    fresh = study.ask()  # a first attempt (number 2) that crashes too
    fresh.suggest_int("c1", 4, 8)
    checkpoints = CheckpointStore(str(workdir / "ckpt"), "tiny")
    for trial in (retried, fresh):
        checkpoints.save(trial.number, {"epoch": 1, "params": {}})
    with storage.engine.begin() as conn:  # the crashes happened two minutes ago
        conn.execute(
            sqlalchemy.text("UPDATE trials SET datetime_start = :t WHERE number IN (1, 2)"),
            {"t": datetime.now() - timedelta(minutes=2)},
        )
    proc = run_cli("status", "--storage", url, "--fail-stale", cwd=workdir, check=0)
    assert "marked FAIL (reason 'stale') and re-queued: #2\n" in proc.stdout, proc.stdout
    assert "not re-queued (retried search.max_retry=1 times already; checkpoint deleted): #1" in proc.stdout
    assert checkpoints.load(retried.number) is None  # nothing will resume it
    assert checkpoints.load(fresh.number) is not None  # its retry will
    waiting = [t for t in study.get_trials() if t.state == TrialState.WAITING]
    assert [RetryHeartbeatStaleTrialCallback.retried_trial_number(t) for t in waiting] == [fresh.number]


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


def test_workers_get_the_storage_url_with_its_password_from_the_environment(
    postgres_server: Any,  # noqa: F811
    workdir: Path,
) -> None:
    """`ps` must never show the password: read each worker's /proc/PID/cmdline while it runs."""
    url = postgres_server.new_database().replace("postgres@", "postgres:hunter2secret@")  # trust auth
    write_config(workdir / "tiny.yaml", tiny_config(search={**tiny_config()["search"], "n_trials": 2}))
    proc = popen_cli("run", "tiny.yaml", "--storage", url, "--workers", "2", "--device", "cpu", cwd=workdir)
    seen: dict[int, str] = {}
    while proc.poll() is None and sum(" worker " in cmd for cmd in seen.values()) < 2:
        for pid in _children(proc.pid):  # read again: before its exec, a child shows the parent's
            with contextlib.suppress(FileNotFoundError):  # the worker has just exited
                seen[pid] = Path(f"/proc/{pid}/cmdline").read_bytes().decode().replace("\0", " ")
        time.sleep(0.05)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    workers = [cmd for cmd in seen.values() if " worker " in cmd]
    assert len(workers) == 2, seen
    for cmd in workers:
        assert "hunter2secret" not in cmd and "postgresql" not in cmd, cmd
    assert "hunter2secret" not in out + err
    assert "study tiny: 2/2 trials finished" in out


def test_local_workers_decode_an_imagefolder_once_and_share_its_cache(workdir: Path) -> None:
    from tests.photos import make_photos

    make_photos(workdir / "photos", classes=2, per_class=12)
    data = {"dataset": "imagefolder", "root": "photos", "image_size": 16}
    search = {**tiny_config()["search"], "n_trials": 2}
    write_config(
        workdir / "p.yaml", tiny_config(data=data, search=search, train={"epochs": 1, "patience": 1})
    )
    proc = run_cli("run", "p.yaml", "--workers", "2", "--device", "cpu", cwd=workdir, check=0)
    assert proc.stderr.count("decoding 24 images") == 1, proc.stderr  # the other worker mapped it
    (npy,) = (workdir / "storage" / "data" / "cache").glob("imagefolder-*.npy")
    assert npy.stat().st_size >= 24 * 3 * 16 * 16
