"""Thread policy: (usable cores - busy cores) // workers unless the user chose; passed on to children."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

import search.engine.threads as threads_module
import search.study.workers as workers_module
from search.config import ConfigError, config_from_dict
from search.engine.threads import ThreadPolicy, child_env, passive_wait, thread_policy, use_threads
from search.errors import InputError
from tests.conftest import cli_env, run_cli, tiny_config
from tests.studies import build_study, study_config


@pytest.fixture
def four_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    """This process may run on 4 cores (of however many the machine has), none busy elsewhere."""
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: {0, 1, 2, 3}, raising=False)
    monkeypatch.setattr(threads_module, "busy_cores", lambda: 0)


def test_busy_cores_counts_other_runnable_tasks(tmp_path: Path) -> None:
    loadavg = tmp_path / "loadavg"
    loadavg.write_text("1.52 0.98 0.40 3/345 12345\n")  # 3 runnable: this reader and 2 others
    assert threads_module.busy_cores(samples=3, interval_s=0, path=str(loadavg)) == 2
    loadavg.write_text("0.00 0.00 0.00 1/200 1\n")
    assert threads_module.busy_cores(samples=1, path=str(loadavg)) == 0
    loadavg.write_text("garbage\n")
    assert threads_module.busy_cores(samples=1, path=str(loadavg)) == 0
    assert threads_module.busy_cores(samples=1, path=str(tmp_path / "missing")) == 0


@pytest.mark.parametrize(("busy", "workers", "threads"), [(1, 1, 3), (3, 1, 1), (9, 1, 1), (2, 2, 1)])
def test_auto_policy_leaves_cores_busy_elsewhere(
    monkeypatch: pytest.MonkeyPatch, busy: int, workers: int, threads: int
) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: {0, 1, 2, 3}, raising=False)
    monkeypatch.setattr(threads_module, "busy_cores", lambda: busy)
    policy = thread_policy(workers, environ={})
    assert policy.threads == threads and policy.busy == min(busy, 3)
    assert f"{min(busy, 3)} busy with other processes" in policy.describe()


@pytest.mark.parametrize(("workers", "threads"), [(1, 4), (2, 2), (3, 1), (4, 1), (8, 1)])
def test_auto_policy_divides_usable_cores_among_workers(four_cores: None, workers: int, threads: int) -> None:
    policy = thread_policy(workers, environ={})
    assert policy == ThreadPolicy(threads, 4, workers, "auto")


def test_policy_follows_affinity_not_the_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: {5}, raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    assert thread_policy(1, environ={}).threads == 1


def test_flag_then_omp_num_threads_then_config(four_cores: None) -> None:
    env = {"OMP_NUM_THREADS": "3"}
    assert thread_policy(2, flag=1, configured=2, environ=env) == ThreadPolicy(1, 4, 2, "--threads")
    assert thread_policy(2, configured=2, environ=env) == ThreadPolicy(3, 4, 2, "OMP_NUM_THREADS")
    assert thread_policy(2, configured=4, environ={}) == ThreadPolicy(4, 4, 2, "train.threads")
    # a value OpenMP itself would ignore is ignored here too
    for bad in ("", "0", "-2", "two"):
        assert thread_policy(1, environ={"OMP_NUM_THREADS": bad}).source == "auto"


def test_bad_counts_raise() -> None:
    with pytest.raises(ValueError, match="workers must be >= 1"):
        thread_policy(0, environ={})
    with pytest.raises(ValueError, match="--threads must be >= 1"):
        thread_policy(1, flag=0, environ={})


def test_describe_names_cores_workers_and_the_users_choice() -> None:
    assert ThreadPolicy(2, 2, 1, "auto").describe() == "torch threads: 2 (2 usable cores, 1 worker)"
    assert ThreadPolicy(1, 1, 2, "--threads").describe() == (
        "torch threads: 1 (set by --threads; 1 usable core, 2 workers)"
    )


def test_use_threads_sets_torch_and_logs(four_cores: None, caplog: pytest.LogCaptureFixture) -> None:
    before = torch.get_num_threads()
    try:
        with caplog.at_level("INFO", logger="search.engine.threads"):
            policy = use_threads(2, flag=1)
        assert torch.get_num_threads() == 1 == policy.threads
        assert "torch threads: 1 (set by --threads; 4 usable cores, 2 workers)" in caplog.messages
    finally:
        torch.set_num_threads(before)


def test_child_env_sets_omp_and_mkl_and_keeps_the_rest() -> None:
    env = child_env(2, {"PATH": "/bin", "OMP_NUM_THREADS": "8"})
    assert env == {"PATH": "/bin", "OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2"}
    assert child_env(1, {"MKL_NUM_THREADS": "4"})["MKL_NUM_THREADS"] == "4"
    # the dashboard follows a user's OMP_NUM_THREADS, else gets one thread
    assert child_env(1, {"OMP_NUM_THREADS": "3"}, keep_user=True)["OMP_NUM_THREADS"] == "3"
    assert child_env(1, {}, keep_user=True)["OMP_NUM_THREADS"] == "1"


def test_train_threads_is_validated_and_may_change_on_resume() -> None:
    assert config_from_dict(tiny_config(train={"threads": 2})).train.threads == 2
    assert config_from_dict(tiny_config()).train.threads is None
    with pytest.raises(ConfigError, match=r"train.threads: must be >= 1 \(got 0\). Fix: "):
        config_from_dict(tiny_config(train={"threads": 0}))
    from search.study.resume import config_diff

    old, new = tiny_config(train={"threads": 1}), tiny_config(train={"threads": None})
    assert config_diff(old, _dict(new)) == []


def _dict(raw: dict[str, Any]) -> dict[str, Any]:
    from search.config import to_dict

    return to_dict(config_from_dict(raw))


class _Finished:
    """A worker process that has already exited 0 (what run_parallel's loop waits for)."""

    pid = 4242
    returncode = 0

    def poll(self) -> int:
        return 0


def test_workers_children_get_the_decided_threads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, four_cores: None
) -> None:
    cfg = config_from_dict(study_config(tmp_path, search={**tiny_config()["search"], "n_trials": 1}))
    build_study(study_config(tmp_path, search={**tiny_config()["search"], "n_trials": 1}))
    seen: list[dict[str, str]] = []

    def popen(cmd: list[str], *, env: dict[str, str], **_kw: Any) -> _Finished:
        assert cmd[:3] == [sys.executable, "-m", "search"] and "worker" in cmd
        seen.append(env)
        return _Finished()

    monkeypatch.setattr(workers_module.subprocess, "Popen", popen)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("MKL_NUM_THREADS", raising=False)
    workers_module.run_parallel(cfg, ["cpu", "cpu"])  # auto: 4 cores // 2 workers
    workers_module.run_parallel(cfg, ["cpu", "cpu"], threads=1)  # what `--threads 1` decided
    assert [e["OMP_NUM_THREADS"] for e in seen] == ["2", "2", "1", "1"]
    assert [e["MKL_NUM_THREADS"] for e in seen] == ["2", "2", "1", "1"]


def test_run_with_threads_flag_logs_the_decision(tmp_path: Path) -> None:
    cfg = tiny_config(search={**tiny_config()["search"], "n_trials": 1}, train={"epochs": 1, "patience": 1})
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(cfg))
    proc = run_cli("run", "tiny.yaml", "--device", "cpu", "--threads", "1", cwd=tmp_path, check=0)
    cores = len(os.sched_getaffinity(0))
    plural = "s" if cores != 1 else ""
    assert f"torch threads: 1 (set by --threads; {cores} usable core{plural}, 1 worker)" in proc.stderr
    assert "1/1 trials finished" in proc.stdout
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    (fresh / "tiny.yaml").write_text(yaml.safe_dump(cfg))
    bad = run_cli("run", "tiny.yaml", "--threads", "0", cwd=fresh, check=2)
    assert "error: --threads: must be >= 1 (got 0). Fix: " in bad.stderr
    assert not (fresh / "storage").exists()  # nothing written


def test_passive_wait_policy_unless_the_user_chose() -> None:
    env: dict[str, str] = {}
    assert passive_wait(env) and env == {"OMP_WAIT_POLICY": "PASSIVE"}
    env = {"OMP_WAIT_POLICY": "ACTIVE"}
    assert not passive_wait(env) and env == {"OMP_WAIT_POLICY": "ACTIVE"}


def test_counts_over_the_cores_are_lowered_and_absurd_ones_refused(four_cores: None) -> None:
    lowered = thread_policy(1, flag=10, environ={})
    assert lowered == ThreadPolicy(4, 4, 1, "--threads", asked=10)
    assert (
        lowered.clamp_warning()
        == "--threads 10 is more threads than the 4 usable cores of this machine; using 4"
    )
    assert thread_policy(2, environ={"OMP_NUM_THREADS": "64"}).threads == 4
    assert thread_policy(1, configured=4, environ={}).asked is None
    with pytest.raises(InputError, match=r"^OMP_NUM_THREADS: 100000 threads is not a thread count"):
        thread_policy(1, environ={"OMP_NUM_THREADS": "100000"})


def test_run_lowers_a_thread_count_over_the_cores_and_refuses_an_absurd_one(tmp_path: Path) -> None:
    """Issue 26 row 13: `train.threads: 1000` runs with a warning naming the value used;
    `--threads 99999999999999999999` and `OMP_NUM_THREADS=100000` exit 2, nothing written."""
    cfg = tiny_config(search={**tiny_config()["search"], "n_trials": 1}, train={"epochs": 1, "patience": 1})
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump({**cfg, "train": {**cfg["train"], "threads": 1000}}))
    env = {k: v for k, v in cli_env().items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    cores = len(os.sched_getaffinity(0))
    plural = "s" if cores != 1 else ""

    def search(*args: str, **extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "search", *args],
            cwd=tmp_path,
            env={**env, **extra},
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )

    for args, extra, message in [
        (["--threads", "99999999999999999999"], {}, "error: --threads: 99999999999999999999 threads is not"),
        ([], {"OMP_NUM_THREADS": "100000"}, "error: OMP_NUM_THREADS: 100000 threads is not a thread count"),
    ]:
        bad = search("run", "tiny.yaml", "--device", "cpu", *args, **extra)
        assert bad.returncode == 2 and message in bad.stderr and "Traceback" not in bad.stderr, bad.stderr
        assert "Fix: " in bad.stderr and not (tmp_path / "storage" / "studies.db").exists()
    proc = search("run", "tiny.yaml", "--device", "cpu")
    assert proc.returncode == 0, proc.stderr[-2000:]
    warning = f"train.threads 1000 is more threads than the {cores} usable core{plural} of this machine"
    assert f"WARNING search.engine.threads: {warning}; using {cores}" in proc.stderr
    assert f"torch threads: {cores} (set by train.threads;" in proc.stderr
