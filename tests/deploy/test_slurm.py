"""``deploy/slurm/search-array.sbatch`` for real: a one-node SLURM cluster on loopback, PostgreSQL,
``search create``, then arrays of ``search worker`` tasks; one task cancelled mid-trial.

Skipped where SLURM cannot start (no ``slurm-wlm``/``munge`` binaries, or not root), except
under ``CI``, which installs them (``.ci/run``): there it fails instead.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.trial import TrialState

from search.store.records import (
    FAIL_REASON_ATTR,
    PID_ATTR,
    RESUMED_FROM_EPOCH_ATTR,
    RESUMED_FROM_TRIAL_ATTR,
)
from tests.conftest import REPO, cli_env, run_cli, tiny_config, write_config
from tests.pg import postgres_server  # noqa: F401  (fixture)
from tests.slurm import SlurmCluster, missing, slurm_cluster

SBATCH = REPO / "deploy" / "slurm" / "search-array.sbatch"
JOB_TIMEOUT_S = 150.0
DONE = (TrialState.COMPLETE, TrialState.PRUNED)  # the trials the study's total counts


@pytest.fixture(scope="module")
def slurm() -> Iterator[SlurmCluster]:
    reason = missing()
    if reason:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the SLURM test, but {reason} (see .ci/run)")
        pytest.skip(f"no one-node SLURM cluster here: {reason}")
    with slurm_cluster() as cluster:
        yield cluster


def _submit(slurm: SlurmCluster, workdir: Path, study: str, url: str, tasks: str) -> str:
    """``sbatch`` the real array script on ``study`` as a user would (the URL in the environment)."""
    env = cli_env()  # this checkout's package first, one thread
    env.update(
        STUDY=study,
        SEARCH_STORAGE=url,
        SEARCH_WORKDIR=str(workdir),
        PATH=os.pathsep.join([str(Path(sys.executable).parent), env["PATH"]]),  # the venv's `search`
    )
    out = workdir / "slurm-%A_%a.out"
    proc = slurm.run(
        "sbatch",
        "--parsable",
        f"--array={tasks}",
        "--mem=1G",
        "--cpus-per-task=1",
        f"--output={out}",
        str(SBATCH),
        env=env,
    )
    return proc.stdout.strip().split(";")[0]


def _wait_gone(slurm: SlurmCluster, job: str) -> None:
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while slurm.run("squeue", "-h", "-j", job, check=False).stdout.strip():
        assert time.monotonic() < deadline, f"job {job} still queued:\n{slurm.logs()}"
        time.sleep(0.5)


def _task_logs(workdir: Path, job: str) -> str:
    return "\n".join(p.read_text(errors="replace") for p in sorted(workdir.glob(f"slurm-{job}_*.out")))


def _trials(url: str, study: str) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=study, storage=url).get_trials(deepcopy=False)


def test_an_array_finishes_the_study_and_a_cancelled_task_resumes_elsewhere(
    slurm: SlurmCluster,
    postgres_server: Any,  # noqa: F811
    workdir: Path,
) -> None:
    url = postgres_server.new_database()
    cfg = write_config(workdir / "tiny.yaml", tiny_config(train={"epochs": 3, "patience": 3}))
    run_cli("create", str(cfg), "--storage", url, "--n-trials", "6", cwd=workdir, check=0)

    job = _submit(slurm, workdir, "tiny", url, "0-2")
    _wait_gone(slurm, job)
    logs = _task_logs(workdir, job)
    trials = _trials(url, "tiny")
    finished = [t for t in trials if t.state in DONE]
    assert len(finished) == 6, logs  # exactly the total
    assert len({t.user_attrs[PID_ATTR] for t in finished}) >= 2, logs  # trials from several tasks
    assert logs.count("study tiny: 6/6 finished") == 3, logs  # every task ended at the total

    # a task cancelled mid-trial: SIGTERM ends its trial at an epoch boundary; a later task resumes it
    slow = write_config(
        workdir / "slow.yaml",
        tiny_config(name="slow", train={"epochs": 40, "patience": 40, "checkpoint_every_s": 0}),
    )
    run_cli("create", str(slow), "--storage", url, "--n-trials", "2", cwd=workdir, check=0)
    first = _submit(slurm, workdir, "slow", url, "0")
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while not any(len(t.intermediate_values) >= 2 for t in _trials(url, "slow")):
        assert time.monotonic() < deadline, _task_logs(workdir, first)
        time.sleep(0.3)
    slurm.run("scancel", first)
    _wait_gone(slurm, first)
    cancelled = _trials(url, "slow")[0]
    assert cancelled.state == TrialState.FAIL, _task_logs(workdir, first)
    assert cancelled.user_attrs[FAIL_REASON_ATTR] == "interrupted"
    stopped_at = len(cancelled.intermediate_values)
    assert 2 <= stopped_at < 40
    assert [t.state for t in _trials(url, "slow")[1:]] == [TrialState.WAITING]  # its retry, queued

    second = _submit(slurm, workdir, "slow", url, "0-1")
    _wait_gone(slurm, second)
    trials = _trials(url, "slow")
    logs = _task_logs(workdir, second)
    assert sum(t.state in DONE for t in trials) == 2, logs
    retry = trials[1]
    assert retry.state in DONE, logs
    assert retry.user_attrs[RESUMED_FROM_TRIAL_ATTR] == 0
    assert retry.user_attrs[RESUMED_FROM_EPOCH_ATTR] == stopped_at  # from its checkpoint, not epoch 0
