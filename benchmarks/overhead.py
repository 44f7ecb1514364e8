"""Per-trial time spent outside training: sampler, storage, report/prune, artifact save.

Runs the real per-trial machinery (``search.study.run.run_study``, the real
``search.study.objective.Objective`` with its sampler, pruner, ``trial.report``/``should_prune``
each epoch, user attrs and the top-k weights save) with the training loop replaced by a stand-in
(the objective's ``fit=`` option) that takes no time: it reports ``train.epochs`` made-up
validation accuracies through the same ``on_epoch`` callback and returns the built model's real
weights. Everything a trial then costs is framework overhead. Studies are pre-filled with
finished trials (``optuna.trial.create_trial`` + ``study.add_trials``) up to 10, 100 and 1000,
then ``--trials`` trials are timed at each level.

Config: ``study_configs/cifar10.yaml`` (TPE, median pruner, 10 epochs a trial, the seed's net
family), with the dataset replaced by a few CIFAR-shaped synthetic images (data are loaded once
per process, not per trial). Each level also counts the SQL statements and commits a trial
sends to the storage (SQLAlchemy event listeners), split by what sent them.

Then, with real training, the same trials run the hand-written way (``benchmarks/handwritten.py``:
Optuna + torch as a careful user writes it, same space, TPE, median pruner, SQLite WAL +
``synchronous=NORMAL``, same net and data) and through ``search.study.run.run_study``, on the quickstart
config (``study_configs/digits.yaml``, 10 epochs). Both studies get the same param sets enqueued
(drawn once at random from the space), so both train the same nets; rounds alternate which goes
first, so both see the same machine load. The last line is ``per-trial ratio: X.XXx (ours /
hand-written)``.

    python benchmarks/overhead.py                          # SQLite
    python benchmarks/overhead.py --storage sqlite postgres   # + a throw-away PostgreSQL cluster
    python benchmarks/overhead.py --pg-url postgresql+psycopg://user:pw@host/db
    python benchmarks/overhead.py --quick
    python benchmarks/overhead.py --skip-handwritten       # only the zero-time-training levels
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import logging
import math
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import optuna
import sqlalchemy.engine
import sqlalchemy.event
import torch
from optuna.distributions import BaseDistribution
from optuna.trial import TrialState, create_trial

from benchmarks._common import REPO, machine, median, quiet_logging, table
from benchmarks.handwritten import run_handwritten
from search.config import StudyConfig, load_config
from search.engine.train import EpochMetrics, FitResult, StopKind, StopReason
from search.store.artifacts import WeightStore
from search.store.records import FAIL_REASON_ATTR
from search.study.objective import Objective
from search.study.run import RunOptions, run_study
from search.study.space import suggest
from search.study.study import open_study, storage_for

log = logging.getLogger("overhead")
CONFIG = REPO / "study_configs" / "cifar10.yaml"
QUICKSTART = REPO / "study_configs" / "digits.yaml"
PG_BIN = Path("/usr/lib/postgresql")
TRIAL_S = 10.0  # the reference trial length for the "share" column

Timers = dict[str, float]


# ------------------------------------------------------------------------------ training stand-in


class _CheckpointStandIn:
    """What ``fit`` hands to ``on_checkpoint``: here a model- plus optimizer-sized state."""

    def __init__(self, epoch: int, weights: dict[str, torch.Tensor]) -> None:
        self.epoch, self.weights = epoch, weights

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "model": self.weights, "optimizer": self.weights}


def make_fit_stand_in(timers: Timers) -> Callable[..., FitResult]:
    """A ``fit`` that trains nothing: made-up accuracies through ``on_epoch``, the model's real weights."""

    def fit_stand_in(
        model: torch.nn.Module,
        train: Any,
        val: Any,
        *,
        lr: float,
        batch_size: int,
        cfg: Any,
        transform: Any,
        seed: int = 0,
        on_epoch: Callable[[int, EpochMetrics], bool | None] | None = None,
        on_checkpoint: Callable[[Any], None] | None = None,
        resume: Any = None,
    ) -> FitResult:
        t0 = time.perf_counter()
        in_callback = 0.0
        rng = random.Random(seed)
        quality = max(0.3, 0.8 - 0.1 * abs(math.log10(lr) + 3.0)) + rng.uniform(-0.05, 0.05)
        history: list[EpochMetrics] = []
        stop = StopReason(StopKind.COMPLETED)
        try:
            for epoch in range(1, cfg.epochs + 1):
                acc = quality * (1.0 - 0.5**epoch)
                metrics = EpochMetrics(epoch, 1.0 - acc, acc, 1.0 - acc, acc, 0.0, 0.0)
                history.append(metrics)
                if on_checkpoint is not None:  # the real per-epoch checkpoint: model + optimizer-sized state
                    t_cb = time.perf_counter()
                    try:
                        on_checkpoint(_CheckpointStandIn(epoch, model.state_dict()))
                    finally:
                        in_callback += time.perf_counter() - t_cb
                if on_epoch is not None:
                    t_cb = time.perf_counter()
                    try:
                        pruned = on_epoch(epoch, metrics)
                    finally:
                        in_callback += time.perf_counter() - t_cb
                    if pruned:
                        stop = StopReason(StopKind.PRUNED, epoch)
                        break
            state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        finally:
            timers["report+prune+checkpoint"] += in_callback
            timers["training stand-in"] += time.perf_counter() - t0 - in_callback
        best = history[-1]
        return FitResult(
            best_val_acc=best.val_acc,
            best_epoch=best.epoch,
            epochs_run=best.epoch,
            stop=stop,
            train_seconds=0.0,
            images_per_s=0.0,
            history=history,
            best_state=state,
        )

    return fit_stand_in


def timed(fn: Callable[..., Any], timers: Timers, key: str) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            timers[key] += time.perf_counter() - t0

    return wrapper


def instrument_sampler(sampler: optuna.samplers.BaseSampler, timers: Timers) -> None:
    for name in ("infer_relative_search_space", "sample_relative", "sample_independent", "before_trial"):
        setattr(sampler, name, timed(getattr(sampler, name), timers, "sampler"))
    # after_trial runs inside tell(), with the storage write; counted as sampler too
    sampler.after_trial = timed(sampler.after_trial, timers, "sampler")  # type: ignore[method-assign]


# --------------------------------------------------------------------------------------- prefill


def prefill(study: optuna.Study, cfg: StudyConfig, target: int, seed: int) -> float:
    """Add finished trials (about 1 in 3 pruned) until the study holds ``target``; returns seconds."""
    have = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))
    need = target - have
    if need <= 0:
        return 0.0
    t0 = time.perf_counter()
    scratch = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed + target))
    rng = random.Random(seed + target)
    trials = []
    for i in range(need):
        trial = scratch.ask()
        params = suggest(trial, cfg.search.space)
        distributions: dict[str, BaseDistribution] = dict(trial.distributions)
        raw = {name: trial.params[name] for name in distributions}
        quality = rng.uniform(0.4, 0.8)
        pruned = i % 3 == 2
        epochs = rng.randint(2, 4) if pruned else cfg.train.epochs
        curve = {e: quality * (1.0 - 0.5**e) for e in range(1, epochs + 1)}
        attrs: dict[str, Any] = {"epochs_run": epochs, "n_params": 1000, "device": "cpu"}
        if pruned:
            attrs["pruned_at_epoch"] = epochs
        else:
            attrs.update(best_epoch=epochs, stop_reason="completed", train_seconds=10.0)
        trials.append(
            create_trial(
                state=TrialState.PRUNED if pruned else TrialState.COMPLETE,
                value=None if pruned else curve[epochs],
                params=raw,
                distributions=distributions,
                intermediate_values=curve,
                user_attrs=attrs,
            )
        )
        del params
    study.add_trials(trials)
    return time.perf_counter() - t0


# -------------------------------------------------------------------------------- round trips

# (part, function name): a statement is counted under the innermost frame of its stack named here
PARTS = (
    ("heartbeat", "_record_heartbeat"),
    ("stale check + slot counts", "_slots"),
    ("stale check + slot counts", "fail_stale_trials"),
    ("retry history", "retry_history"),
    ("keep top-k weights", "_keep_weights"),
    ("should_prune", "should_prune"),
    ("prune gate (COMPLETE count)", "worth_asking"),
    ("report", "report"),
    ("checkpoint folder (study key)", "checkpoint_key"),
    ("user attrs", "set_user_attr"),
    ("sampler", "sample_relative"),
    ("sampler", "infer_relative_search_space"),
    ("sampler", "sample_independent"),
    ("sampler", "before_trial"),
    ("sampler", "after_trial"),
    ("suggest (params)", "suggest"),
    ("tell", "_tell_with_warning"),
    ("ask", "ask"),
    ("trial read back for callbacks", "_optimize_sequential"),
    ("run start-up (once a run)", "storage_for"),
    ("run start-up (once a run)", "prepare_resume"),
    ("run start-up (once a run)", "open_study"),
    ("run end (once a run)", "best_trial"),
    ("run end (once a run)", "finished_count"),
)
_PART_OF = {name: part for part, name in PARTS}
_GUARD = ("__call__", str(REPO / "search" / "study" / "run.py"))  # run._Guarded: the exact-total check


class RoundTrips:
    """Counts SQL statements and commits on every SQLAlchemy engine while ``on``, by part."""

    def __init__(self) -> None:
        self.statements: dict[str, int] = defaultdict(int)
        self.commits: dict[str, int] = defaultdict(int)
        self.on = False
        sqlalchemy.event.listen(sqlalchemy.engine.Engine, "before_cursor_execute", self._statement)
        sqlalchemy.event.listen(sqlalchemy.engine.Engine, "commit", self._commit)

    def close(self) -> None:
        sqlalchemy.event.remove(sqlalchemy.engine.Engine, "before_cursor_execute", self._statement)
        sqlalchemy.event.remove(sqlalchemy.engine.Engine, "commit", self._commit)

    def clear(self) -> None:
        self.statements.clear()
        self.commits.clear()

    @staticmethod
    def _part() -> str:
        frame = sys._getframe(2)  # a benchmark's stack walk: which of our calls sent the statement
        while frame is not None:
            code = frame.f_code
            part = _PART_OF.get(code.co_name)
            if part is not None:
                return part
            if (code.co_name, code.co_filename) == _GUARD:
                return "exact-total check"
            frame = frame.f_back  # type: ignore[assignment]
        return "other (Optuna internals)"

    def _statement(self, *_args: Any) -> None:
        if self.on:
            self.statements[self._part()] += 1

    def _commit(self, *_args: Any) -> None:
        if self.on:
            self.commits[self._part()] += 1

    def totals(self) -> tuple[int, int]:
        return sum(self.statements.values()), sum(self.commits.values())


# ------------------------------------------------------------------------------------ storages


@contextlib.contextmanager
def temp_postgres() -> Iterator[str]:
    """A throw-away PostgreSQL cluster on a Unix socket; yields its SQLAlchemy URL."""
    bins = sorted(PG_BIN.glob("*/bin/initdb"))
    if not bins:
        raise RuntimeError(f"no PostgreSQL server binaries under {PG_BIN} (apt-get install postgresql)")
    bindir = bins[-1].parent
    root = Path(tempfile.mkdtemp(prefix="bench-pg-"))
    data, sock = root / "data", root / "sock"
    sock.mkdir()
    as_user: list[str] = []
    if os.geteuid() == 0:  # initdb refuses to run as root
        shutil.chown(root, "postgres")
        shutil.chown(sock, "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]

    def pg(*cmd: str, check: bool = True) -> None:
        subprocess.run([*as_user, *cmd], check=check, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    pg(str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres")
    opts = f"-p {port} -k {sock} -c listen_addresses='' -c fsync=on"
    pg(
        str(bindir / "pg_ctl"),
        "-D",
        str(data),
        "-o",
        opts,
        "-w",
        "-l",
        str(root / "log"),
        "start",
    )
    try:
        yield f"postgresql+psycopg://postgres@/postgres?host={sock}&port={port}"
    finally:
        pg(str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "stop", check=False)
        shutil.rmtree(root, ignore_errors=True)


# ------------------------------------------------------------------------------------------ run


class TrialClock:
    """A study callback: wall and CPU seconds from one trial's end (or the start) to the next's."""

    def __init__(self) -> None:
        self.wall: list[float] = []
        self.cpu: list[float] = []
        self._last = (time.perf_counter(), time.process_time())

    def __call__(self, _study: optuna.Study, _trial: optuna.trial.FrozenTrial) -> None:
        now = (time.perf_counter(), time.process_time())
        self.wall.append(now[0] - self._last[0])
        self.cpu.append(now[1] - self._last[1])
        self._last = now


def bench_storage(
    label: str, url: str, work: Path, args: argparse.Namespace, trips: RoundTrips
) -> list[list[object]]:
    """Time ``args.trials`` trials at each level on the storage at ``url``; one table row per level.

    ``trips`` holds the round trips of the last level's timed trials when this returns."""
    overrides = [
        f"storage={url}",
        f"artifacts_dir={work / 'artifacts'}",
        f"name=overhead-{label}",
        "data.dataset=synthetic",
        f"data.cache_dir={work / 'cache'}",
        "data.synthetic.n_samples=100",
        f"train.epochs={args.epochs}",
    ]
    cfg = load_config(CONFIG, overrides)
    timers: Timers = defaultdict(float)
    fit_stand_in = make_fit_stand_in(timers)
    objective = Objective(cfg, torch.device("cpu"), WeightStore(cfg.artifacts_dir), fit=fit_stand_in)
    objective._keep_weights = timed(objective._keep_weights, timers, "keep weights")  # type: ignore[method-assign]
    storage = storage_for(cfg)
    study = open_study(cfg, storage, objective.data_attrs())
    rows: list[list[object]] = []
    for level in args.levels:
        prefill_s = prefill(study, cfg, level, cfg.seed)
        timers.clear()
        trips.clear()
        clock = TrialClock()

        def instrumented(run: optuna.Study) -> contextlib.AbstractContextManager[None]:
            instrument_sampler(run.sampler, timers)  # the sampler of the study the run uses
            return contextlib.nullcontext()

        trips.on = True
        try:
            run_study(
                _with_n_trials(cfg, level + args.trials),
                RunOptions(
                    objective=objective, on_trial=functools.partial(clock, study), around=instrumented
                ),
            )
        finally:
            trips.on = False
        failed = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.FAIL]
        if failed:  # a broken stand-in must not pass for a fast framework
            reason = failed[-1].user_attrs.get(FAIL_REASON_ATTR, "no reason recorded")
            raise SystemExit(f"error: {len(failed)} timed trial(s) failed, e.g. {reason}")
        durations, cpu_times = clock.wall, clock.cpu
        n = max(len(durations), 1)
        stand_in = timers.pop("training stand-in", 0.0) / n
        per_trial = [d - stand_in for d in durations]
        mean_s = sum(per_trial) / n
        parts = {k: v / n for k, v in timers.items()}
        storage_s = mean_s - sum(parts.values())
        n_statements, n_commits = trips.totals()
        rows.append(
            [
                label,
                level,
                len(durations),
                f"{median(per_trial) * 1e3:.1f}",
                f"{mean_s * 1e3:.1f}",
                f"{(sum(cpu_times) / n - stand_in) * 1e3:.1f}",
                f"{parts.get('sampler', 0.0) * 1e3:.1f}",
                f"{parts.get('report+prune+checkpoint', 0.0) * 1e3:.1f}",
                f"{parts.get('keep weights', 0.0) * 1e3:.1f}",
                f"{storage_s * 1e3:.1f}",
                f"{n_statements / n:.1f}",
                f"{n_commits / n:.1f}",
                f"{100 * mean_s / (TRIAL_S + mean_s):.2f} %",
            ]
        )
        log.info("%s level %d: prefill %.1f s, %.1f ms/trial", label, level, prefill_s, mean_s * 1e3)
    return rows


# ----------------------------------------------------------------------- against a hand-written loop


def fixed_params(cfg: StudyConfig, n: int, seed: int) -> list[dict[str, Any]]:
    """``n`` param sets drawn at random from ``cfg``'s space (in memory), as enqueue_trial takes them."""
    scratch = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    out = []
    for _ in range(n):
        trial = scratch.ask()
        suggest(trial, cfg.search.space)
        out.append(dict(trial.params))
        scratch.tell(trial, 0.0)
    return out


@dataclasses.dataclass
class LoopRun:
    seconds: float
    trials: int
    epochs: int
    pruned: int
    best: float
    statements: int
    commits: int


def _summary(study: optuna.Study, seconds: float, trips: RoundTrips) -> LoopRun:
    trials = [t for t in study.get_trials(deepcopy=False) if t.state.is_finished()]
    complete = [t.value for t in trials if t.state == TrialState.COMPLETE and t.value is not None]
    statements, commits = trips.totals()
    return LoopRun(
        seconds=seconds,
        trials=len(trials),
        epochs=sum(len(t.intermediate_values) for t in trials),
        pruned=sum(t.state == TrialState.PRUNED for t in trials),
        best=max(complete, default=float("nan")),
        statements=statements,
        commits=commits,
    )


def run_ours(cfg: StudyConfig, params: list[dict[str, Any]], trips: RoundTrips) -> LoopRun:
    """``search.run.run_study`` (the real objective) on ``params``, from data loading to the end."""
    study = open_study(cfg, storage_for(cfg))
    for p in params:
        study.enqueue_trial(p)
    trips.clear()
    trips.on = True
    t0 = time.perf_counter()
    try:
        run_study(cfg)
    finally:
        trips.on = False
    return _summary(study, time.perf_counter() - t0, trips)


def run_hand(cfg: StudyConfig, params: list[dict[str, Any]], trips: RoundTrips) -> LoopRun:
    """The hand-written loop on ``params``, from data loading to the end."""
    trips.clear()
    trips.on = True
    t0 = time.perf_counter()
    try:
        study = run_handwritten(cfg, cfg.storage, len(params), enqueue=params)
    finally:
        trips.on = False
    return _summary(study, time.perf_counter() - t0, trips)


def warm_up() -> None:
    """One training step of a small net: lazy imports (Adam's first use loads torch._dynamo, about
    a second) and first-call costs are paid here, not by whichever loop runs first."""
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.Flatten(), torch.nn.Linear(144, 2))
    opt = torch.optim.Adam(model.parameters())
    loss = torch.nn.functional.cross_entropy(
        model(torch.zeros(4, 1, 8, 8)), torch.zeros(4, dtype=torch.int64)
    )
    loss.backward()  # type: ignore[no-untyped-call]
    opt.step()


def bench_vs_handwritten(
    work: Path, args: argparse.Namespace, trips: RoundTrips
) -> tuple[list[list[object]], float, float]:
    """Rounds of (ours, hand-written) on the same enqueued params, alternating which goes first."""
    runs: dict[str, list[LoopRun]] = {"ours": [], "hand-written": []}
    warm_up()
    for r in range(args.rounds):
        order = ("ours", "hand-written") if r % 2 == 0 else ("hand-written", "ours")
        for who in order:
            tag = "ours" if who == "ours" else "hand"
            cfg = load_config(
                QUICKSTART,
                [
                    f"storage=sqlite:///{work / f'{tag}-{r}.db'}",
                    f"name=vs-{tag}-{r}",
                    f"artifacts_dir={work / f'artifacts-{r}'}",
                    f"checkpoints_dir={work / f'checkpoints-{r}'}",
                    f"data.cache_dir={work / 'cache'}",
                    f"train.epochs={args.hand_epochs}",
                    f"search.n_trials={args.hand_trials}",
                    "train.precision=fp32",  # the hand-written loop's: the same arithmetic on both sides
                ],
            )
            params = fixed_params(cfg, args.hand_trials, seed=r)
            run = run_ours if who == "ours" else run_hand
            runs[who].append(run(cfg, params, trips))
            log.info("round %d %s: %s", r, who, runs[who][-1])
    rows: list[list[object]] = []
    per_trial: dict[str, float] = {}
    per_epoch: dict[str, float] = {}
    for who, done in runs.items():
        per_trial[who] = median([d.seconds / max(d.trials, 1) for d in done])
        per_epoch[who] = median([d.seconds / max(d.epochs, 1) for d in done])
        rows.append(
            [
                who,
                len(done),
                f"{sum(d.trials for d in done) / len(done):.0f}",
                f"{sum(d.epochs for d in done) / len(done):.0f}",
                f"{sum(d.pruned for d in done) / len(done):.1f}",
                f"{median([d.best for d in done]):.4f}",
                f"{median([d.seconds for d in done]):.2f}",
                f"{per_trial[who] * 1e3:.0f}",
                f"{per_epoch[who] * 1e3:.1f}",
                f"{median([d.statements / max(d.trials, 1) for d in done]):.1f}",
                f"{median([d.commits / max(d.trials, 1) for d in done]):.1f}",
            ]
        )
    return (
        rows,
        per_trial["ours"] / per_trial["hand-written"],
        per_epoch["ours"] / per_epoch["hand-written"],
    )


def _with_n_trials(cfg: StudyConfig, n_trials: int) -> StudyConfig:
    return dataclasses.replace(cfg, search=dataclasses.replace(cfg.search, n_trials=n_trials))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--quick", action="store_true", help="levels 3 and 6, 2 timed trials, 3 epochs")
    p.add_argument(
        "--storage", nargs="+", choices=("sqlite", "postgres"), default=None, help="default: sqlite"
    )
    p.add_argument("--pg-url", default=None, help="PostgreSQL URL to use (else a throw-away local cluster)")
    p.add_argument("--levels", type=int, nargs="+", default=None, help="finished trials (10 100 1000)")
    p.add_argument("--trials", type=int, default=None, help="timed trials per level (default 20)")
    p.add_argument("--epochs", type=int, default=None, help="reports per trial (default 10)")
    p.add_argument("--skip-handwritten", action="store_true", help="no comparison with the hand-written loop")
    p.add_argument("--rounds", type=int, default=None, help="hand-written comparison rounds (default 2)")
    p.add_argument(
        "--hand-trials", type=int, default=None, help="trials a loop in the comparison (default 20)"
    )
    p.add_argument(
        "--hand-epochs", type=int, default=None, help="epochs a trial in the comparison (default 10)"
    )
    args = p.parse_args(argv)
    if args.rounds is None:
        args.rounds = 1 if args.quick else 2
    if args.hand_trials is None:
        args.hand_trials = 2 if args.quick else 20
    if args.hand_epochs is None:
        args.hand_epochs = 2 if args.quick else 10
    if args.storage is None:
        args.storage = ["sqlite", "postgres"] if args.pg_url else ["sqlite"]
    if args.levels is None:
        args.levels = [3, 6] if args.quick else [10, 100, 1000]
    if args.trials is None:
        args.trials = 2 if args.quick else 20
    if args.epochs is None:
        args.epochs = 3 if args.quick else 10
    if sorted(args.levels) != args.levels or min(args.levels) < 0:
        p.error("--levels must be increasing and >= 0")
    return args


def main(argv: list[str] | None = None) -> int:
    quiet_logging()
    args = parse_args(argv)
    rows: list[list[object]] = []
    trips = RoundTrips()
    load_start = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="bench-overhead-") as tmp:
        work = Path(tmp)
        for label in args.storage:
            if label == "sqlite":
                rows += bench_storage(label, f"sqlite:///{work / 'studies.db'}", work, args, trips)
            elif args.pg_url:
                rows += bench_storage(label, args.pg_url, work, args, trips)
            else:
                try:
                    with temp_postgres() as url:
                        rows += bench_storage(label, url, work, args, trips)
                except (RuntimeError, OSError, subprocess.CalledProcessError) as exc:
                    print(
                        f"error: cannot start a PostgreSQL cluster ({exc}); pass --pg-url",
                        file=sys.stderr,
                    )
                    return 2
        parts = sorted(trips.statements, key=lambda k: -trips.statements[k])
        n_timed = max(args.trials, 1)
        part_rows = [
            [k, f"{trips.statements[k] / n_timed:.1f}", f"{trips.commits.get(k, 0) / n_timed:.1f}"]
            for k in parts
        ]
        hand_rows: list[list[object]] = []
        ratio = epoch_ratio = float("nan")
        if not args.skip_handwritten:
            hand_rows, ratio, epoch_ratio = bench_vs_handwritten(work, args, trips)
    trips.close()
    print(
        f"machine: {machine()}; load average (1 min) at the start {load_start:.1f}, "
        f"at the end {os.getloadavg()[0]:.1f}"
    )
    print(
        f"config: {CONFIG.relative_to(REPO)} (TPE, median pruner), {args.epochs} reports a trial, "
        f"{args.trials} timed trials a level, training replaced by a zero-time stand-in; "
        "wall-clock ms unless marked CPU; sampler / report+prune+checkpoint / keep weights / storage+other "
        "split the mean; SQL statements and commits per trial counted on the storage's engine"
    )
    print()
    headers = [
        "storage",
        "finished trials",
        "timed",
        "ms/trial (median)",
        "ms/trial (mean)",
        "CPU ms/trial",
        "sampler",
        "report+prune+ckpt",
        "keep weights",
        "storage+other",
        "SQL/trial",
        "commits/trial",
        f"share of a {TRIAL_S:.0f} s trial",
    ]
    print(table(headers, rows))
    print()
    print(f"round trips per trial by part ({rows[-1][0]}, {rows[-1][1]} finished trials):")
    print()
    print(table(["part", "SQL statements", "commits"], part_rows))
    print()
    last = rows[-1]
    print(f"overhead: {last[4]} ms/trial at {last[1]} finished trials ({last[0]})")
    if args.skip_handwritten:
        return 0
    print()
    print(
        f"against the hand-written loop (benchmarks/handwritten.py): {QUICKSTART.relative_to(REPO)}, "
        f"{args.hand_trials} enqueued param sets (the same for both), {args.hand_epochs} epochs, "
        f"{args.rounds} round(s) alternating who goes first; both in fp32 (ours with "
        "train.precision fp32); seconds from data loading to the end, medians over rounds"
    )
    print()
    print(
        table(
            [
                "loop",
                "rounds",
                "trials",
                "epochs",
                "pruned",
                "best val",
                "s total",
                "ms/trial",
                "ms/epoch",
                "SQL/trial",
                "commits/trial",
            ],
            hand_rows,
        )
    )
    print()
    print(f"per-epoch ratio: {epoch_ratio:.2f}x (ours / hand-written)")
    print(f"per-trial ratio: {ratio:.2f}x (ours / hand-written)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
