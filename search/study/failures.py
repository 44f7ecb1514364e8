"""Failed trials: name the reason, free the memory, and stop a run only after too many.

A trial that diverges, runs out of GPU memory or raises anything else is recorded as FAIL with a
user attribute ``fail_reason`` and the study goes on. Reasons read:

- ``nan_loss at epoch 3, lr=0.87`` (set by ``train.fit``),
- ``oom (batch_size=512)`` for ``torch.OutOfMemoryError`` (CUDA or other accelerators),
- ``<ExceptionType>: <message>`` for anything else.

A broken accelerator context (``torch.AcceleratorError``: a device-side assert, an illegal memory
access) is not a failed trial: every later CUDA call of the process fails too. The objective
raises :class:`DeviceFailure` instead; the trial is recorded FAIL with ``fail_reason``
``device error: ...`` (not counted against the budget), re-queued with its checkpoint, and the
worker process exits 1, so the retry runs in a fresh process (this one or another worker).

``search.max_failures`` (default null: never) stops the run through :class:`FailureBudget`.
"""

from __future__ import annotations

import gc
import logging
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from search.errors import RunFailure
from search.store.records import FAIL_REASON_ATTR as FAIL_REASON_ATTR  # noqa: PLC0414 (run.py imports it here)

log = logging.getLogger(__name__)

MAX_MESSAGE_CHARS = 300
DEVICE_ERROR_PREFIX = "device error: "


class DeviceFailure(RunFailure):
    """The accelerator context of this process is broken: end the worker, retry the trial elsewhere.

    ``str(exc)`` is the line ``search`` prints after ``error: ``: ``device: MESSAGE. Fix: HINT``.
    """

    hint = (
        "the trial was re-queued; run the same command again (or let the other workers take it), "
        "and check the GPU (nvidia-smi) if it repeats"
    )

    def __init__(self, message: str) -> None:
        self.detail = message
        super().__init__(f"device: {message}. Fix: {self.hint}")


def is_device_fatal(exc: BaseException) -> bool:
    """True for errors after which the process's CUDA context is unusable (not out-of-memory)."""
    import torch

    if isinstance(exc, torch.OutOfMemoryError):
        return False
    accelerator_error = getattr(torch, "AcceleratorError", None)  # torch >= 2.8
    if accelerator_error is not None and isinstance(exc, accelerator_error):
        return True
    # older torch raises a plain RuntimeError for the same CUDA errors
    return isinstance(exc, RuntimeError) and str(exc).lstrip().startswith("CUDA error:")


def describe_failure(exc: BaseException, params: Mapping[str, Any]) -> str:
    """The ``fail_reason`` text for an exception raised inside a trial."""
    import torch  # here, not at the top: `search dashboard` and `status` load this module without torch

    if isinstance(exc, torch.OutOfMemoryError):
        batch = params.get("batch_size")
        return f"oom (batch_size={batch})" if batch is not None else "oom"
    if is_device_fatal(exc):
        return DEVICE_ERROR_PREFIX + _exception_text(exc)
    return _exception_text(exc)


def _exception_text(exc: BaseException) -> str:
    message = " ".join(str(exc).split())
    if len(message) > MAX_MESSAGE_CHARS:
        message = message[: MAX_MESSAGE_CHARS - 3] + "..."
    name = type(exc).__name__
    return f"{name}: {message}" if message else name


def free_memory() -> None:
    """Collect garbage and return cached accelerator memory, so the next trial starts clean."""
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


class FailureBudget:
    """Study callback: ``study.stop()`` once this run has seen ``max_failures`` FAIL trials.

    Counts only the trials this process finished (a resumed run starts from zero). With
    ``max_failures=None`` it only counts.
    """

    #: fail reasons that are not the trial's fault: they never count against the budget
    NOT_COUNTED = frozenset({"surplus", "interrupted"})  # and any "device error: ..." reason

    def __init__(self, max_failures: int | None, *, fallback: int | None = None) -> None:
        self.max_failures = max_failures
        self.limit = max_failures if max_failures is not None else fallback
        self.failures = 0
        self.tripped = False

    @classmethod
    def for_run(cls, max_failures: int | None, n_trials: int) -> FailureBudget:
        """The budget of one run: ``max_failures``, or with null as many failures as ``n_trials``.

        Failed trials are replaced until the study holds ``n_trials`` finished ones, so without
        some limit a study whose every trial fails would never end.
        """
        return cls(max_failures, fallback=n_trials)

    def stop_message(self) -> str:
        setting = (
            f"search.max_failures={self.max_failures}"
            if self.max_failures is not None
            else "as many as search.n_trials; set search.max_failures to choose"
        )
        return f"stopped after {self.failures} failed trials ({setting})"

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        reason = str(trial.user_attrs.get(FAIL_REASON_ATTR, ""))
        not_counted = reason in self.NOT_COUNTED or reason.startswith(DEVICE_ERROR_PREFIX)
        if trial.state != TrialState.FAIL or not_counted:
            return
        self.failures += 1
        if self.limit is not None and self.failures >= self.limit and not self.tripped:
            self.tripped = True
            log.error(
                "stopping study %s: %s; last: %s",
                study.study_name,
                self.stop_message(),
                trial.user_attrs.get(FAIL_REASON_ATTR, "no reason recorded"),
            )
            study.stop()


def fail_summary(trials: Iterable[FrozenTrial], limit: int = 5) -> list[tuple[str, int]]:
    """The most common fail reasons among ``trials`` as (reason, count), most common first.

    FAIL trials without a recorded reason (e.g. a killed worker's) count as ``no reason recorded``.
    """
    counts = Counter(
        str(t.user_attrs.get(FAIL_REASON_ATTR, "no reason recorded"))
        for t in trials
        if t.state == TrialState.FAIL
    )
    return counts.most_common(limit)
