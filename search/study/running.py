"""A study's RUNNING trials as ``search status`` shows them, and failing the stale ones on request.

The grace period and the retry limit come from the config stored on the study (the defaults when it
has none), so ``search status --fail-stale`` treats a trial exactly as the run loop would.
"""

from __future__ import annotations

from dataclasses import dataclass

import optuna
from optuna.storages import RDBStorage

from search.config import SearchConfig, config_from_dict, default_of
from search.store.storage import CONFIG_ATTR, GRACE_PERIOD_S
from search.study.study import RetryStale, RunningTrial, StaleResult, fail_stale_trials, running_trials


@dataclass(frozen=True)
class RunningCheck:
    """What :func:`check_running` found (and did) for one study."""

    grace_s: float  # a trial with no heartbeat for this long is stale
    max_retry: int  # how often one trial is re-queued (search.max_retry)
    trials: list[RunningTrial]
    failed: StaleResult | None = None  # with fail_stale: the stale trials marked FAIL

    @property
    def stale(self) -> list[int]:
        """Numbers of the stale RUNNING trials (before any were failed)."""
        return [r.number for r in self.trials if r.stale]


def check_running(study: optuna.Study, storage: RDBStorage, *, fail_stale: bool = False) -> RunningCheck:
    """The study's RUNNING trials (worker host, pid, device, heartbeat age, stale or not).

    Args:
        study: the study to look at.
        storage: its RDB storage (heartbeats live there).
        fail_stale: also mark the stale trials FAIL (``fail_reason`` "stale") and re-queue them
            (at most ``search.max_retry`` times per trial; the checkpoint of one not re-queued
            is deleted).

    Returns:
        The trials, the grace period and retry limit used, and with ``fail_stale`` what was failed.
    """
    raw = study.user_attrs.get(CONFIG_ATTR)
    cfg = config_from_dict(raw) if isinstance(raw, dict) else None
    grace: float = cfg.search.grace_period_s if cfg else GRACE_PERIOD_S  # as stored: 120 prints "120"
    max_retry: int = cfg.search.max_retry if cfg else default_of(SearchConfig, "max_retry")
    rows = running_trials(study, storage, grace)
    failed = None
    if fail_stale and any(r.stale for r in rows):
        retry = RetryStale(max_retry, cfg.checkpoints_dir if cfg else None)
        failed = fail_stale_trials(study, storage, grace, retry, rows)
    return RunningCheck(grace, max_retry, rows, failed)
