"""A throwaway one-node SLURM cluster for tests: munged, slurmctld and slurmd on loopback, in a temp dir.

munged runs with its own key and socket (``AuthInfo=socket=...``), the daemons with their own
``slurm.conf``, state and spool folders and free ports; client commands (``sbatch``, ``squeue``,
``scancel``) find it through ``SLURM_CONF`` (:meth:`SlurmCluster.env`). Needs root (slurmd starts
jobs as their user) and the binaries of ``slurm-wlm`` and ``munge`` (apt); :func:`missing` says
what is absent. Every daemon is stopped by its PID.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

BINARIES = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scancel", "sinfo")
START_TIMEOUT_S = 60.0
CPUS = 3  # one CPU per array task: three tasks at once (slurmd takes the count from the config)


def missing() -> str:
    """Why no cluster can start here ('' when it can)."""
    gone = [b for b in BINARIES if shutil.which(b, path=f"{os.environ.get('PATH', '')}:/usr/sbin") is None]
    if gone:
        return f"no {', '.join(gone)} (apt-get install slurm-wlm munge)"
    if os.geteuid() != 0:
        return "not root (slurmd runs jobs as their user)"
    return ""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _which(name: str) -> str:
    found = shutil.which(name, path=f"{os.environ.get('PATH', '')}:/usr/sbin")
    assert found is not None, name
    return found


class SlurmCluster:
    """:meth:`start`, then submit with :meth:`run` (``sbatch`` etc. with this cluster's ``SLURM_CONF``);
    :meth:`stop` ends the daemons by PID."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="convnet-search-slurm-", dir="/tmp"))
        self.socket = self.dir / "munge.socket"
        self.conf = self.dir / "slurm.conf"
        self.procs: list[subprocess.Popen[bytes]] = []

    def env(self) -> dict[str, str]:
        """This process's environment with the cluster's ``SLURM_CONF``."""
        return {**os.environ, "SLURM_CONF": str(self.conf)}

    def _write_conf(self) -> None:
        d = self.dir
        for sub in ("state", "spool"):
            (d / sub).mkdir()
        self.conf.write_text(
            "\n".join(
                [
                    "ClusterName=searchtest",
                    "SlurmctldHost=localhost(127.0.0.1)",
                    f"SlurmctldPort={_free_port()}",
                    f"SlurmdPort={_free_port()}",
                    "AuthType=auth/munge",
                    "CredType=cred/munge",
                    f"AuthInfo=socket={self.socket}",
                    "SlurmUser=root",
                    "SlurmdUser=root",
                    f"StateSaveLocation={d / 'state'}",
                    f"SlurmdSpoolDir={d / 'spool'}",
                    f"SlurmctldPidFile={d / 'slurmctld.pid'}",
                    f"SlurmdPidFile={d / 'slurmd.pid'}",
                    f"SlurmctldLogFile={d / 'slurmctld.log'}",
                    f"SlurmdLogFile={d / 'slurmd.log'}",
                    "ProctrackType=proctrack/linuxproc",
                    "TaskPlugin=task/none",
                    "SelectType=select/cons_tres",
                    "SelectTypeParameters=CR_CPU",
                    "SchedulerType=sched/backfill",
                    "MpiDefault=none",
                    "ReturnToService=2",
                    "SlurmdParameters=config_overrides",
                    "JobAcctGatherType=jobacct_gather/none",
                    "AccountingStorageType=accounting_storage/none",
                    "KillWait=60",  # SIGTERM, then this long to finish the epoch before SIGKILL
                    "MinJobAge=300",
                    f"NodeName=localhost NodeAddr=127.0.0.1 CPUs={CPUS} RealMemory=4000 State=UNKNOWN",
                    "PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP",
                    "",
                ]
            )
        )

    def _daemon(self, *cmd: str, log: str) -> None:
        with open(self.dir / log, "ab") as out:
            self.procs.append(
                subprocess.Popen(
                    list(cmd), stdout=out, stderr=subprocess.STDOUT, env=self.env(), cwd=self.dir
                )
            )

    def start(self) -> SlurmCluster:
        key = self.dir / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        self._daemon(
            _which("munged"),
            "--foreground",
            "--force",
            f"--socket={self.socket}",
            f"--key-file={key}",
            f"--pid-file={self.dir / 'munged.pid'}",
            f"--log-file={self.dir / 'munged.log'}",
            f"--seed-file={self.dir / 'munged.seed'}",
            log="munged.out",
        )
        self._wait(self.socket.exists, "munged's socket")
        self._write_conf()
        self._daemon(_which("slurmctld"), "-D", "-i", "-f", str(self.conf), log="slurmctld.out")
        self._daemon(_which("slurmd"), "-D", "-N", "localhost", "-f", str(self.conf), log="slurmd.out")
        self._wait(self._node_idle, "the node to come up idle")
        return self

    def _node_idle(self) -> bool:
        proc = self.run("sinfo", "-h", "-N", "-o", "%T", check=False)
        return proc.returncode == 0 and proc.stdout.strip() == "idle"

    def _wait(self, ready: object, what: str) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if callable(ready) and ready():
                return
            dead = [p for p in self.procs if p.poll() is not None]
            if dead:
                raise RuntimeError(f"a SLURM daemon exited ({dead[0].args[0]}):\n{self.logs()}")
            time.sleep(0.2)
        raise RuntimeError(f"timed out waiting for {what}:\n{self.logs()}")

    def logs(self) -> str:
        """The tails of the daemons' logs (for a failing test's message)."""
        parts = []
        for log in sorted(self.dir.glob("*.log")) + sorted(self.dir.glob("*.out")):
            lines = log.read_text(errors="replace").splitlines()[-15:]
            parts.append(f"--- {log.name}\n" + "\n".join(lines))
        return "\n".join(parts)

    def run(
        self, *cmd: str, check: bool = True, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        """A client command (``sbatch``, ``squeue``, ...) against this cluster."""
        proc = subprocess.run(
            list(cmd),
            capture_output=True,
            text=True,
            env={**self.env(), **(env or {})},
            timeout=60,
            check=False,
        )
        if check and proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr}\n{self.logs()}")
        return proc

    def stop(self) -> None:
        """End this cluster's jobs (a failed test may leave some), then SIGTERM each daemon by PID
        (slurmd, slurmctld, munged) and SIGKILL what remains."""
        if self.procs and all(p.poll() is None for p in self.procs):
            user = f"--user={os.geteuid()}"
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.run("scancel", "--full", "--signal=KILL", user, check=False)
                self.run("scancel", user, check=False)
                deadline = time.monotonic() + 20
                while self.run("squeue", "-h", check=False).stdout.strip() and time.monotonic() < deadline:
                    time.sleep(0.5)
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in reversed(self.procs):
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        shutil.rmtree(self.dir, ignore_errors=True)


@contextlib.contextmanager
def slurm_cluster() -> Iterator[SlurmCluster]:
    """A running one-node cluster for the duration of the block."""
    cluster = SlurmCluster()
    try:
        yield cluster.start()
    finally:
        cluster.stop()
