"""``search run``'s terminal: a line per finished trial above a progress bar (an optional dashboard),
the warm-start line, how the run ended and the commands to try next."""

from __future__ import annotations

import contextlib
import shlex
import sys
from collections.abc import Iterator
from typing import Any

from search.cli.common import DEFAULT_STORAGE
from search.cli.lines import format_params, trial_line, value_text
from search.config import StudyConfig, mask_url
from search.errors import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK


class Progress:
    """The run's progress bar and trial lines; with ``dashboard_port``, a background dashboard."""

    def __init__(self, cfg: StudyConfig, dashboard_port: int | None) -> None:
        self.cfg = cfg
        self.dashboard_port = dashboard_port
        self.bar: Any = None
        if dashboard_port is not None:
            from search.serve.dashboard import DEFAULT_HOST, check_port

            check_port(DEFAULT_HOST, dashboard_port, "--dashboard-port")  # before anything is created

    @contextlib.contextmanager
    def around(self, study: Any) -> Iterator[None]:
        """Entered once the study is open: the bar (and the dashboard) for the rest of the run."""
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
                self._print_dashboard(url)
            try:
                yield
            finally:
                self.bar.close()

    def _print_dashboard(self, url: str) -> None:
        from search.serve.dashboard import study_url
        from search.study.study import make_storage

        storage = make_storage(self.cfg.storage, create=False, heartbeat=False)
        page = study_url(url, storage.get_study_id_from_name(self.cfg.name))
        self.bar.write(f"dashboard: {page}", file=sys.stdout)
        sys.stdout.flush()

    def on_trial(self, trial: Any) -> None:
        """Print a finished trial's line above the bar; a COMPLETE or PRUNED one moves the bar."""
        self.bar.write(trial_line(trial, self.cfg.search.cost), file=sys.stdout)
        sys.stdout.flush()
        if trial.state.name in ("COMPLETE", "PRUNED"):
            self.bar.update(1)


def print_warm_start(source: str, ws: Any) -> None:
    print(
        f"warm start from {source}: enqueued {len(ws.enqueued)} trial(s)"
        + (f" ({', '.join(f'#{n}' for n in ws.enqueued)})" if ws.enqueued else "")
        + (f", {len(ws.already)} enqueued by an earlier run" if ws.already else "")
        + (f", skipped {len(ws.skipped)} outside this space" if ws.skipped else ""),
        flush=True,
    )


def print_outcome(result: Any) -> int:
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
    best, front = result.best, result.front
    which = "" if front is None else " (the front's most accurate)"
    print(
        f"study {name}: {result.finished}/{n} trials finished in "
        f"{elapsed:.1f}s; best trial {best.number}{which} value={value_text(best, result.cost_name)} "
        f"{format_params(best.params)}"
    )
    if front is not None:
        print("\n".join(front.lines()))
    return EXIT_OK


def next_steps(cfg: StudyConfig) -> str:
    """The commands to try after a study completed, with its name (and ``--storage`` when not the
    default; a password in the URL is masked)."""
    study = shlex.quote(cfg.name)
    storage = "" if cfg.storage == DEFAULT_STORAGE else f" --storage {shlex.quote(mask_url(cfg.storage))}"
    steps = [
        (f"search report {study}{storage}", f"tables and plots under storage/reports/{cfg.name}"),
        (f"search export {study}{storage}", "the best trial's weights, for search predict / search app"),
        (f"search finetune {study}{storage}", "continue the best weights, then test once"),
    ]
    width = max(len(command) for command, _ in steps)
    lines = [f"{command:<{width}} ({why})" for command, why in steps]
    return "next: " + "\n      ".join(lines)
