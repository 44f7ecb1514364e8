"""Command-line interface: a thin layer over the library.

Exit codes: 0 ok, 1 failed run (no trial completed), 2 bad input, 130 interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
from collections.abc import Iterator, Sequence
from typing import Any

from search.config import (
    PARAM_NAMES,
    ConfigError,
    StudyConfig,
    check_inputs,
    check_study_name,
    load_config,
    with_overrides,
)

log = logging.getLogger("search")

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 130
DISTRIBUTION = "convnet-search"  # the name in pyproject.toml; `search --version` reads its metadata


class BadInput(Exception):
    """Raised inside a command for input errors that are not ConfigErrors."""


# --------------------------------------------------------------------------- helpers


def _setup_logging(verbosity: int, *, optuna_logs: bool = True) -> None:
    level = logging.WARNING if verbosity < 0 else logging.DEBUG if verbosity > 0 else logging.INFO
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
        force=True,
    )
    if not optuna_logs:  # validate/schema never import optuna (start-up time)
        return
    import optuna

    optuna.logging.disable_default_handler()
    optuna.logging.enable_propagation()
    optuna.logging.set_verbosity(logging.WARNING if verbosity <= 0 else logging.INFO)


def _quote(value: Any) -> str:
    return json.dumps(value)  # JSON is YAML: strings stay strings


def _config_from_args(args: argparse.Namespace) -> StudyConfig:
    sets = list(args.set or [])
    flag_fields = {
        "study_name": "name",
        "storage": "storage",
        "n_trials": "search.n_trials",
        "timeout_s": "search.timeout_s",
    }
    for attr, key in flag_fields.items():
        value = getattr(args, attr, None)
        if value is not None:
            sets.append(f"{key}={_quote(value)}")
    if getattr(args, "tensorboard", False):
        sets.append("train.tensorboard=true")
    return load_config(args.config, sets)


def _format_params(params: dict[str, Any]) -> str:
    parts = []
    for name in [*PARAM_NAMES, *(k for k in params if k not in PARAM_NAMES)]:  # then dotted ones
        if name in params:
            v = params[name]
            parts.append(f"{name}={v:.3g}" if isinstance(v, float) else f"{name}={v}")
    return " ".join(parts)


def _trial_line(trial: Any) -> str:
    value = "-" if trial.value is None else f"{trial.value:.4f}"
    seconds = trial.duration.total_seconds() if trial.duration is not None else 0.0
    epochs = trial.user_attrs.get("epochs_run", "-")
    extra = ""
    if "constraint" in trial.user_attrs:  # over a search.constraints budget: pruned before training
        extra = f" over_budget={trial.user_attrs['constraint']!r}"
    elif "pruned_at_epoch" in trial.user_attrs:
        extra = f" pruned_at={trial.user_attrs['pruned_at_epoch']}"
    elif "fail_reason" in trial.user_attrs:
        extra = f" reason={trial.user_attrs['fail_reason']!r}"
    elif "best_epoch" in trial.user_attrs:
        extra = f" best_epoch={trial.user_attrs['best_epoch']}"
    return (
        f"trial {trial.number:>4} {trial.state.name:<8} value={value} "
        f"{_format_params(trial.params)} epochs={epochs}{extra} {seconds:.1f}s"
    )


# --------------------------------------------------------------------------- commands


def cmd_validate(args: argparse.Namespace) -> int:
    cfg = _config_from_args(args)
    check_inputs(cfg)  # what can be checked without reading data (the same check `run` makes)
    from search.study.preflight import preflight
    from search.study.space import grid_size

    data = preflight(cfg)  # counts (nothing decoded); DataError for what `run` would refuse
    size = f", grid of {grid_size(cfg.search.space)}" if cfg.search.sampler.name == "grid" else ""
    print(
        f"ok: study {cfg.name!r} on {cfg.data.dataset}, {cfg.search.n_trials} trials, "
        f"sampler {cfg.search.sampler.name}{size}, pruner {cfg.search.pruner.name}"
    )
    print("\n".join(data.listing()), flush=True)
    data.log_warnings()
    return EXIT_OK


def _threads_flag(args: argparse.Namespace) -> int | None:
    """``--threads`` checked (exit 2 before anything is written); None when not given."""
    flag: int | None = getattr(args, "threads", None)
    if flag is not None and flag < 1:
        raise BadInput(
            f"--threads: must be >= 1 (got {flag}). "
            "Fix: use e.g. --threads 1, or leave it out for free cores // local workers"
        )
    return flag


def _use_threads(args: argparse.Namespace, cfg: StudyConfig) -> None:
    """The thread policy for a command that trains in this process (finetune, confirm)."""
    from search.engine.threads import use_threads

    use_threads(1, flag=_threads_flag(args), configured=cfg.train.threads)


def _device(flag: str) -> Any:
    from search.engine.train import resolve_device

    try:
        return resolve_device(flag)
    except ValueError as exc:
        raise BadInput(f"--device: {exc}. Fix: use --device cpu or auto") from exc


def _worker_devices(args: argparse.Namespace) -> list[str]:
    """One device per ``--workers`` process; empty for the in-process default."""
    from search.study.workers import assign_devices

    if args.workers == 1 and args.workers_per_gpu == 1:
        return []
    try:
        return assign_devices(args.device, args.workers, args.workers_per_gpu)
    except ValueError as exc:
        raise BadInput(str(exc)) from exc


class _Progress:
    """The run's progress bar and trial lines; with ``dashboard_port``, a background dashboard."""

    def __init__(self, cfg: StudyConfig, dashboard_port: int | None) -> None:
        self.cfg = cfg
        self.dashboard_port = dashboard_port
        self.bar: Any = None
        if dashboard_port is not None:
            from search.serve.dashboard import DEFAULT_HOST, DashboardError, check_port

            try:
                check_port(DEFAULT_HOST, dashboard_port, "--dashboard-port")  # before anything is created
            except DashboardError as exc:
                raise BadInput(str(exc)) from exc

    @contextlib.contextmanager
    def around(self, study: Any) -> Iterator[None]:
        from tqdm import tqdm
        from tqdm.contrib.logging import logging_redirect_tqdm

        from search.study.study import finished_count

        cfg = self.cfg
        dashboard: contextlib.AbstractContextManager[str | None] = contextlib.nullcontext()
        if self.dashboard_port is not None:
            from search.serve.dashboard import background_dashboard

            dashboard = background_dashboard(
                cfg.storage, port=self.dashboard_port, artifact_dir=cfg.artifacts_dir
            )
        done = finished_count(study)
        self.bar = tqdm(
            total=cfg.search.n_trials,
            initial=min(done, cfg.search.n_trials),
            unit="trial",
            desc=cfg.name,
            disable=None,
            dynamic_ncols=True,
            file=sys.stderr,
        )
        # log lines go above the bar while it is shown (tqdm.write), not into it; a background
        # optuna-dashboard is stopped however the run ends
        with logging_redirect_tqdm(), dashboard as url:
            if url is not None:
                from search.serve.dashboard import study_url
                from search.study.study import make_storage

                storage = make_storage(cfg.storage, create=False, heartbeat=False)
                page = study_url(url, storage.get_study_id_from_name(cfg.name))
                self.bar.write(f"dashboard: {page}", file=sys.stdout)
                sys.stdout.flush()
            try:
                yield
            finally:
                self.bar.close()

    def on_trial(self, trial: Any) -> None:
        self.bar.write(_trial_line(trial), file=sys.stdout)
        sys.stdout.flush()
        if trial.state.name in ("COMPLETE", "PRUNED"):
            self.bar.update(1)


def cmd_run(args: argparse.Namespace) -> int:
    cfg = _config_from_args(args)
    check_inputs(cfg)
    from search.study.preflight import preflight
    from search.study.run import run_study
    from search.study.study import mask_url

    preflight(cfg).log_warnings()  # once, here: `search worker` processes do not repeat them
    device = _device(args.device)
    devices = _worker_devices(args)
    threads = _threads_flag(args)
    log.info("study %s on %s, storage %s", cfg.name, devices or device, mask_url(cfg.storage))
    wants_dashboard = args.dashboard or args.dashboard_port is not None
    progress = _Progress(cfg, (args.dashboard_port or 8080) if wants_dashboard else None)
    warm = None
    if args.warm_start is not None:  # read-only, before anything is created
        from search.study.warmstart import plan_warm_start

        source_storage = args.warm_start_storage or cfg.storage
        warm = plan_warm_start(cfg, args.warm_start, source_storage, args.warm_start_top)
    result = run_study(
        cfg,
        device=device,
        workers=devices,
        fresh=args.fresh,
        on_trial=progress.on_trial,
        around=progress.around,
        warm_start=warm,
        on_warm_start=_print_warm_start,
        threads=threads,
    )
    return _run_exit(result)


def _print_warm_start(source: str, ws: Any) -> None:
    print(
        f"warm start from {source}: enqueued {len(ws.enqueued)} trial(s)"
        + (f" ({', '.join(f'#{n}' for n in ws.enqueued)})" if ws.enqueued else "")
        + (f", {len(ws.already)} enqueued by an earlier run" if ws.already else "")
        + (f", skipped {len(ws.skipped)} outside this space" if ws.skipped else ""),
        flush=True,
    )


def _run_exit(result: Any) -> int:
    """Print how a `search run` ended and return its exit code."""
    from search.study.run import Outcome

    name, n, elapsed = result.study_name, result.n_trials, result.elapsed_s
    if result.outcome is Outcome.INTERRUPTED:
        print(
            f"study {name}: interrupted with {result.finished}/{n} trials "
            f"finished ({elapsed:.1f}s); run the same command again to resume"
        )
        return EXIT_INTERRUPTED
    if result.outcome is Outcome.FAILURE_BUDGET:
        print(f"study {name}: {result.stop_message}; see `search status` for the reasons")
        return EXIT_FAILED
    if result.outcome is Outcome.NO_TRIAL_COMPLETED:
        over = (
            f"; {result.over_budget} of {result.finished} finished trials were over budget "
            "(search.constraints) and pruned before training, see `search status`"
            if result.over_budget
            else ""
        )
        print(f"study {name}: no trial completed ({elapsed:.1f}s){over}")
        return EXIT_FAILED
    best = result.best
    print(
        f"study {name}: {result.finished}/{n} trials finished in "
        f"{elapsed:.1f}s; best trial {best.number} value={best.value:.4f} "
        f"{_format_params(best.params)}"
    )
    return EXIT_OK


def cmd_dashboard(args: argparse.Namespace) -> int:
    import os

    from search.serve.dashboard import STORAGE_ENV, DashboardError, exit_process, open_dashboard
    from search.study.study import mask_url

    storage = args.storage or os.environ.get(STORAGE_ENV) or StudyConfig().storage
    try:
        dashboard = open_dashboard(storage, host=args.host, port=args.port, artifact_dir=args.artifact_dir)
    except DashboardError as exc:
        raise BadInput(str(exc)) from exc
    print(dashboard.url, flush=True)
    log.info("serving optuna-dashboard on %s (Ctrl-C to stop)", mask_url(storage))
    dashboard.serve(watch_parent=args.exit_with_parent)
    exit_process(EXIT_OK)  # Ctrl-C / SIGTERM is how a dashboard normally ends; exits within a second


def cmd_worker(args: argparse.Namespace) -> int:
    """Join an existing study (its config is stored in it) and run trials until its total."""
    import os

    from search.study.run import Outcome, run_study
    from search.study.study import load_study, make_storage
    from search.study.workers import STORAGE_ENV, StopRequest, worker_config

    check_study_name(args.study_name, "--study-name")
    url = args.storage or os.environ.get(STORAGE_ENV)
    if not url:
        raise BadInput(f"--storage: missing (got nothing). Fix: pass --storage URL or set {STORAGE_ENV}")
    study = load_study(args.study_name, make_storage(url, create=False, heartbeat=False))
    cfg = with_overrides(worker_config(study, args.n_trials, args.timeout_s), {"storage": url})
    device = _device(args.device)
    log.info("worker pid %d on %s joins study %s", os.getpid(), device, cfg.name)
    result = run_study(
        cfg,
        device=device,
        join=True,
        stop=StopRequest(parent_pid=args.parent_pid),
        ignore_sigint=args.parent_pid is not None,
        release_memory=args.shared_gpu,
        threads=_threads_flag(args),
        on_trial=lambda trial: print(_trial_line(trial), flush=True),
    )
    interrupted = result.outcome is Outcome.INTERRUPTED
    print(
        f"worker {os.getpid()}: {result.started} trial(s) run; study {cfg.name}: "
        f"{result.finished}/{cfg.search.n_trials} finished" + (" (interrupted)" if interrupted else "")
    )
    if interrupted:
        return EXIT_INTERRUPTED
    if result.outcome is Outcome.FAILURE_BUDGET:
        print(f"worker {os.getpid()}: {result.stop_message}")
        return EXIT_FAILED
    return EXIT_OK if result.outcome is Outcome.COMPLETED else EXIT_FAILED


def _numbers(numbers: Sequence[int]) -> str:
    return ", ".join(f"#{n}" for n in numbers)


def _age(seconds: float | None) -> str:
    return "none" if seconds is None else f"{seconds:.0f}s ago"


def _status_running(study: Any, storage: Any, fail_stale: bool) -> None:
    """Print the study's RUNNING trials (worker host, pid, device, heartbeat); optionally fail stale ones."""
    from search.config import config_from_dict
    from search.study.study import CONFIG_ATTR, GRACE_PERIOD_S, RetryStale, fail_stale_trials, running_trials

    raw = study.user_attrs.get(CONFIG_ATTR)
    cfg = config_from_dict(raw) if isinstance(raw, dict) else None
    grace = cfg.search.grace_period_s if cfg else GRACE_PERIOD_S
    rows = running_trials(study, storage, grace)
    if not rows:
        return
    print(f"  running trials of {study.study_name} (stale: no heartbeat for {grace}s):")
    for r in rows:
        flag = "  STALE" if r.stale else ""
        print(
            f"    trial {r.number:>4} host={r.host} pid={r.pid} device={r.device} "
            f"started={_age(r.age_s)} heartbeat={_age(r.heartbeat_age_s)}{flag}"
        )
    stale = [r.number for r in rows if r.stale]
    if stale and fail_stale:
        max_retry = cfg.search.max_retry if cfg else 3
        retry = RetryStale(max_retry, cfg.checkpoints_dir if cfg else None)
        done = fail_stale_trials(study, storage, grace, retry)
        if done.requeued:
            print(f"  marked FAIL (reason 'stale') and re-queued: {_numbers(done.requeued)}")
        if done.not_requeued:
            print(
                f"  marked FAIL (reason 'stale'), not re-queued (retried search.max_retry={max_retry} "
                f"times already; checkpoint deleted): {_numbers(done.not_requeued)}"
            )
    elif stale:
        print(
            f"  {len(stale)} stale trial(s); `search status --fail-stale` marks them FAIL and re-queues them"
        )


def cmd_status(args: argparse.Namespace) -> int:
    import optuna

    from search.study.failures import fail_summary
    from search.study.study import best_trial, make_storage, mask_url, over_budget_counts, state_counts

    if args.study_name:
        check_study_name(args.study_name, "--study-name")
    storage = make_storage(args.storage, create=False, heartbeat=False)
    names = sorted(optuna.get_all_study_names(storage))
    if args.study_name:
        if args.study_name not in names:
            raise BadInput(
                f"no study named {args.study_name!r} in {mask_url(args.storage)} "
                f"(studies: {', '.join(names) or 'none'})"
            )
        names = [args.study_name]
    if not names:
        print(f"no studies in {mask_url(args.storage)}")
        return EXIT_OK
    states = ("COMPLETE", "PRUNED", "FAIL", "RUNNING", "WAITING")
    header = f"{'study':<24} " + " ".join(f"{s.lower():>8}" for s in states) + "  best"
    print(header)
    for name in names:
        study = optuna.load_study(study_name=name, storage=storage)
        trials = study.get_trials(deepcopy=False)
        counts = state_counts(trials)
        best = best_trial(study)
        best_text = "-" if best is None else f"#{best.number} {best.value:.4f} {_format_params(best.params)}"
        print(f"{name:<24} " + " ".join(f"{counts[s]:>8}" for s in states) + f"  {best_text}")
        for reason, count in fail_summary(trials):
            print(f"{'':<24} failed x{count}: {reason}")
        for budget, count in over_budget_counts(trials).items():
            print(f"{'':<24} over budget x{count}: search.constraints.{budget} (pruned before training)")
        _status_running(study, storage, args.fail_stale)
    return EXIT_OK


# -------------------------------------------------------------------- report, export, finetune, predict


def _results_study(args: argparse.Namespace) -> Any:
    from search.study.stored import open_existing

    check_study_name(args.study_name, "STUDY")
    return open_existing(args.study_name, args.storage)


def cmd_report(args: argparse.Namespace) -> int:
    from search.results.report import summary_lines, write_report

    check_study_name(args.study_name, "STUDY")
    files = write_report(args.study_name, args.storage, args.out)
    for line in summary_lines(files.summary):
        print(line)
    print(f"report: {', '.join(str(p) for p in files.tables)} (+ {len(files.plots)} plots as .html/.png)")
    return EXIT_OK


def cmd_export(args: argparse.Namespace) -> int:
    from search.results.export import ExportError, export_finetuned, export_trial
    from search.study.stored import study_config

    study = _results_study(args)
    try:
        if args.finetuned:
            done = export_finetuned(study, args.out, trial=args.trial)
        else:
            done = export_trial(study, study_config(study), args.trial, args.out)
    except ExportError as exc:
        raise BadInput(str(exc)) from exc
    print(done.line())
    return EXIT_OK


def cmd_predict(args: argparse.Namespace) -> int:
    from search.results.export import ExportError, predict_files

    try:
        results = predict_files(args.export_dir, args.images, k=3)
    except ExportError as exc:
        raise BadInput(str(exc)) from exc
    for path, top in zip(args.images, results, strict=True):
        print(f"{path}: " + "  ".join(f"{name} {p:.3f}" for name, p in top))
    return EXIT_OK


def cmd_schema(args: argparse.Namespace) -> int:
    from search.config import config_markdown, json_schema

    if args.markdown:
        print(config_markdown(), end="")  # docs/config.md, byte for byte
        return EXIT_OK
    print(json.dumps(json_schema(), indent=2))
    return EXIT_OK


def cmd_finetune(args: argparse.Namespace) -> int:
    check_study_name(args.study_name, "STUDY")
    from search.results.confirm import finetune_start
    from search.results.export import ExportError
    from search.results.finetune import finetune, settings
    from search.study.stored import study_config

    device = _device(args.device)
    study = _results_study(args)
    cfg = study_config(study)
    ft = settings(cfg, args.epochs, args.lr_scale, args.patience)
    _use_threads(args, cfg)
    start = finetune_start(study, args.trial)
    print(f"finetune {args.study_name}: starting from {start.reason}", flush=True)
    try:
        res = finetune(
            study,
            cfg,
            device,
            ft,
            args.out,
            trial_number=start.trial,
            started_from=start.reason,
            tensorboard=args.tensorboard,
        )
    except ExportError as exc:
        raise BadInput(str(exc)) from exc
    print(
        f"finetune {args.study_name}: trial {res.trial} val {res.start_val_acc:.4f} -> "
        f"{res.final_val_acc:.4f} (best epoch {res.best_epoch} of {res.epochs_run}); "
        f"test accuracy {res.test.accuracy:.4f} on {res.test.n} images; files in {res.out}"
    )
    return EXIT_OK


def _confirm_table(result: Any) -> list[str]:
    winner = result.winner
    rows = [(r, _format_params(r.params)) for r in result.rows]
    width = max([len("params"), *(len(p) for _, p in rows)])
    lines = [f"{'trial':>5}  {'params':<{width}}  {'study':>6}  {'mean ± std':<15}  {'n':>2}"]
    for r, params in rows:
        mean = "-" if not r.n else f"{r.mean:.4f} ± " + ("-" if r.n < 2 else f"{r.std:.4f}")
        mark = "  <- confirmed winner" if winner is not None and r.trial == winner.trial else ""
        failed = f" ({r.failed} failed)" if r.failed else ""
        cells = f"{r.trial:>5}  {params:<{width}}  {r.study_value:.4f}  {mean:<15}  {r.n:>2}"
        lines.append(cells + failed + mark)
    return lines


def cmd_confirm(args: argparse.Namespace) -> int:
    check_study_name(args.study_name, "STUDY")
    from search.results.confirm import load_for_confirm, run_confirm, settings
    from search.study.workers import StopRequest

    device = _device(args.device)
    study, cfg = load_for_confirm(args.study_name, args.storage)
    s = settings(cfg, args.top, args.seeds, args.folds)
    _use_threads(args, cfg)
    print(f"confirm {args.study_name}: top {s.top} trial(s), {s.describe()} each, on {device}", flush=True)

    def on_run(record: Any, done: int, total: int) -> None:
        what = f"fold {record.fold + 1}/{s.folds}" if record.fold is not None else f"seed {record.seed}"
        value = "failed" if record.value is None else f"val {record.value:.4f}"
        print(
            f"run {done}/{total}: trial {record.trial} {what}: {value} (best epoch {record.best_epoch} "
            f"of {record.epochs_run}, {record.seconds:.1f}s)",
            flush=True,
        )

    stop = StopRequest()
    with stop.installed():
        result = run_confirm(study, cfg, s, device, should_stop=stop, on_run=on_run)
    if result.interrupted:
        print(
            f"confirm {args.study_name}: interrupted with {result.runs_done}/{result.runs_total} runs "
            "recorded; run the same command again to continue"
        )
        return EXIT_INTERRUPTED
    if result.runs_this_call < result.runs_done:
        print(f"({result.runs_done - result.runs_this_call} run(s) were recorded by an earlier confirm)")
    for line in _confirm_table(result):
        print(line)
    print(f"confirm: {result.summary['verdict']}")
    print(f"confirm: {result.csv_path}; summary stored on the study (user attr 'confirm')")
    return EXIT_OK if result.winner is not None else EXIT_FAILED


def cmd_tensorboard(args: argparse.Namespace) -> int:
    from search.engine.tensorboard import TensorBoardError, study_log_dir
    from search.serve.tensorboard import serve_logs

    logdir = args.logdir
    if args.study_name:
        check_study_name(args.study_name, "STUDY")
        logdir = study_log_dir(args.logdir, args.study_name)
    try:
        url = serve_logs(logdir, host=args.host, port=args.port)
    except TensorBoardError as exc:
        raise BadInput(str(exc)) from exc
    print(url, flush=True)
    log.info("serving TensorBoard on %s (Ctrl-C to stop)", logdir)
    _wait_for_stop()
    return EXIT_OK  # Ctrl-C / SIGTERM is how a server normally ends


def cmd_app(args: argparse.Namespace) -> int:
    from search.serve.app import AppError, open_app

    try:
        app = open_app(args.export_dir, host=args.host, port=args.port)
    except AppError as exc:
        raise BadInput(str(exc)) from exc
    print(app.url, flush=True)
    log.info("serving the predictor for %s (Ctrl-C to stop)", args.export_dir)
    try:
        _wait_for_stop()
    finally:
        app.close()
    return EXIT_OK


def _wait_for_stop() -> None:
    """Block until Ctrl-C (SIGINT) or SIGTERM; a server running in another thread keeps serving."""
    import signal
    import threading

    stopped = threading.Event()

    def stop(_signum: int, _frame: Any) -> None:
        stopped.set()

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        while not stopped.wait(0.5):
            pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


# --------------------------------------------------------------------------- parser


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="study config (YAML)")
    p.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="override a config key, e.g. --set train.epochs=2 (repeatable)",
    )


def package_version() -> str:
    """The installed distribution's version; the package's own when it runs from a plain checkout."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(DISTRIBUTION)
    except PackageNotFoundError:
        from search import __version__

        return __version__


def _add_threads_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--threads",
        type=int,
        metavar="N",
        help="torch CPU threads per process (default: train.threads, else free cores // local workers)",
    )


def _add_run_parser(sub: Any) -> None:
    p = sub.add_parser("run", help="create or resume a study and run its trials")
    _add_config_args(p)
    p.add_argument("--study-name", help="study name (default: the config's name)")
    p.add_argument("--storage", help="storage URL (default: the config's storage)")
    p.add_argument("--n-trials", type=int, help="total finished trials the study should reach")
    p.add_argument("--timeout-s", type=float, help="stop starting trials after this many seconds")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default auto)")
    p.add_argument(
        "--dashboard",
        action="store_true",
        help="serve optuna-dashboard on 127.0.0.1 while the study runs (stopped at the end)",
    )
    p.add_argument(
        "--dashboard-port", type=int, metavar="P", help="port for --dashboard (default 8080; implies it)"
    )
    p.add_argument(
        "--fresh",
        action="store_true",
        help="start the study over: an existing study of this name is kept as NAME-old-TIMESTAMP",
    )
    p.add_argument(
        "--tensorboard",
        action="store_true",
        help="TensorBoard logs per trial under storage/tensorboard/STUDY/ (train.tensorboard: true)",
    )
    p.add_argument(
        "--workers", type=int, default=1, help="worker processes on this machine (default 1: in-process)"
    )
    p.add_argument("--warm-start", metavar="STUDY", help="first try the top param sets of this earlier study")
    p.add_argument(
        "--warm-start-storage", metavar="URL", help="the --warm-start study's storage (default: this one)"
    )
    p.add_argument(
        "--warm-start-top", type=int, default=5, metavar="N", help="how many of its best trials (default 5)"
    )
    p.add_argument(
        "--workers-per-gpu", type=int, default=1, help="how many workers may share one GPU (default 1)"
    )
    _add_threads_arg(p)
    p.set_defaults(func=cmd_run)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="search", description="Hyperparameter search for image-classification ConvNets."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {package_version()}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging")
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    _add_run_parser(sub)

    p = sub.add_parser("worker", help="join an existing study and run its trials (any machine)")
    p.add_argument("--study-name", required=True, help="the study to join")
    p.add_argument("--storage", help="the study's storage URL (default: $SEARCH_WORKER_STORAGE)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default auto)")
    p.add_argument("--n-trials", type=int, help="total finished trials (default: the study's config)")
    p.add_argument("--timeout-s", type=float, help="stop starting trials after this many seconds")
    p.add_argument("--worker-index", type=int, help=argparse.SUPPRESS)
    p.add_argument("--shared-gpu", action="store_true", help=argparse.SUPPRESS)  # set by --workers-per-gpu
    p.add_argument("--parent-pid", type=int, help=argparse.SUPPRESS)
    _add_threads_arg(p)
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("validate", help="check a config without running it")
    _add_config_args(p)
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("schema", help="print the config's JSON Schema (study_configs/schema.json)")
    p.add_argument(
        "--markdown", action="store_true", help="print the config reference instead (docs/config.md)"
    )
    p.set_defaults(func=cmd_schema)

    p = sub.add_parser("status", help="list studies: trials per state and the best trial")
    p.add_argument("--storage", default=StudyConfig().storage, help="storage URL")
    p.add_argument("--study-name", help="only this study")
    p.add_argument(
        "--fail-stale",
        action="store_true",
        help="mark stale RUNNING trials (no recent heartbeat) FAIL with reason 'stale' and re-queue them",
    )
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("dashboard", help="serve optuna-dashboard on the study storage (Ctrl-C stops)")
    p.add_argument("--storage", help=f"storage URL (default {StudyConfig().storage})")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8080, help="port (default 8080)")
    p.add_argument(
        "--artifact-dir",
        default=StudyConfig().artifacts_dir,
        help="trials' weights, downloadable from the dashboard (default storage/artifacts)",
    )
    p.add_argument("--exit-with-parent", action="store_true", help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_dashboard)

    _add_results_parsers(sub)
    return parser


def _add_results_parsers(sub: Any) -> None:
    default_storage = StudyConfig().storage
    p = sub.add_parser("report", help="trials table (CSV, Parquet, Markdown, HTML), summary, plots")
    p.add_argument("study_name", metavar="STUDY")
    p.add_argument("--storage", default=default_storage, help="storage URL")
    p.add_argument("--out", help="output folder (default storage/reports/STUDY)")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("export", help="a trial's weights, config.json and model card as one folder")
    p.add_argument("study_name", metavar="STUDY")
    p.add_argument("--storage", default=default_storage, help="storage URL")
    p.add_argument("--trial", type=int, help="trial number (default: the best trial)")
    p.add_argument("--out", help="output folder (default storage/exports/STUDY/trial-N)")
    p.add_argument(
        "--finetuned",
        action="store_true",
        help="the model of `search finetune` instead (default out storage/exports/STUDY/finetuned)",
    )
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("predict", help="top-3 classes per image with an exported model")
    p.add_argument("export_dir", metavar="EXPORT_DIR")
    p.add_argument("images", metavar="IMAGE", nargs="+")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("confirm", help="re-train the top trials over new seeds or folds")
    p.add_argument("study_name", metavar="STUDY")
    p.add_argument("--storage", default=default_storage, help="storage URL")
    p.add_argument("--top", type=int, help="how many of the best trials (default: the study's confirm.top)")
    p.add_argument("--seeds", type=int, help="new seeds per trial (default confirm.seeds)")
    p.add_argument("--folds", type=int, help="F >= 2: F-fold CV of train+val instead (default confirm.folds)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default auto)")
    _add_threads_arg(p)
    p.set_defaults(func=cmd_confirm)

    p = sub.add_parser("finetune", help="fine-tune the best trial from its weights, then test once")
    p.add_argument("study_name", metavar="STUDY")
    p.add_argument("--storage", default=default_storage, help="storage URL")
    p.add_argument("--epochs", type=int, help="maximum epochs (default: the study config's finetune.epochs)")
    p.add_argument("--lr-scale", type=float, help="lr = best trial's lr x this (default finetune.lr_scale)")
    p.add_argument("--patience", type=int, help="early stopping patience (default finetune.patience)")
    p.add_argument(
        "--trial", type=int, help="start from this trial (default: the confirmed winner, else the best trial)"
    )
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default auto)")
    p.add_argument("--out", help="output folder (default storage/finetune/STUDY)")
    p.add_argument(
        "--tensorboard",
        action="store_true",
        help="TensorBoard log of the run under storage/tensorboard/STUDY/finetune/",
    )
    _add_threads_arg(p)
    p.set_defaults(func=cmd_finetune)

    p = sub.add_parser("tensorboard", help="serve TensorBoard on the studies' logs ([tensorboard] extra)")
    p.add_argument("study_name", metavar="STUDY", nargs="?", help="only this study's runs (default: all)")
    p.add_argument("--logdir", default=StudyConfig().tensorboard_dir, help="log root (default %(default)s)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=6006, help="port (default 6006)")
    p.set_defaults(func=cmd_tensorboard)

    p = sub.add_parser("app", help="drawing-pad predictor for an exported model ([app] extra)")
    p.add_argument("export_dir", metavar="EXPORT_DIR", help="a `search export` folder")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    p.set_defaults(func=cmd_app)


INPUT_ERRORS = {
    "search.engine.data": "DataError",
    "search.engine.counts": "DataError",
    "search.store.storage": "StorageError",
    "search.study.resume": "ResumeConflict",
    "search.store.files": "UnwritableFolder",
}


def _input_errors() -> tuple[type[Exception], ...]:
    """The library's bad-input errors, from the modules this command imported: an error cannot
    come from a module never imported, and importing search.engine.data for its class would load torch."""
    return tuple(getattr(sys.modules[m], name) for m, name in INPUT_ERRORS.items() if m in sys.modules)


def main(argv: Sequence[str] | None = None) -> int:
    from search.engine.threads import passive_wait

    passive_wait()  # before anything imports torch (OpenMP reads it then)
    parser = build_parser()
    args = parser.parse_args(argv)
    _setup_logging(-1 if args.quiet else args.verbose, optuna_logs=args.command not in ("validate", "schema"))
    try:
        code: int = args.func(args)
        return code
    except (ConfigError, BadInput) as exc:
        print(f"error: {exc}", file=sys.stderr)
    except Exception as exc:
        failures = sys.modules.get("search.study.failures")  # loaded by any command that trains
        if failures is not None and isinstance(exc, failures.DeviceFailure):
            # the trial is re-queued; a fresh process can resume it
            print(
                f"error: device: {exc}. Fix: the trial was re-queued; run the same command again "
                "(or let the other workers take it), and check the GPU (nvidia-smi) if it repeats",
                file=sys.stderr,
            )
            return EXIT_FAILED
        files = sys.modules.get("search.store.files")  # loaded by any command that writes files
        if files is not None and isinstance(exc, files.StorageFault):
            print(f"error: {exc}", file=sys.stderr)  # a disk filled up (or a folder became read-only)
            return EXIT_FAILED
        if not isinstance(exc, _input_errors()):
            raise
        print(f"error: {exc}", file=sys.stderr)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    return EXIT_BAD_INPUT
