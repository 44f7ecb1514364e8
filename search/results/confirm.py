"""Is the best trial really the best? Re-train the top trials with new seeds; warm-start a study.

A study picks its winner from one training run per configuration on one validation split, so a
lucky seed can win. :func:`run_confirm` re-trains each of the top-K COMPLETE trials' full configs
N more times with new seeds, exactly as in the study (same data split, epochs, early stopping,
augmentation; the test split is never loaded), or, with ``folds`` F, F times on seeded,
stratified folds of train+val. Each finished run is recorded on the study at once (user attr
``confirm_run:<trial>:seed<i>`` or ``confirm_run:<trial>:fold<i>of<F>``), so an interrupted
confirm continues where it stopped. The summary (user attr ``confirm``) names the confirmed
winner (highest mean) and says whether the winner's lead exceeds the seed noise.

:func:`plan_warm_start` / :func:`apply_warm_start` enqueue another study's top COMPLETE param
sets into a study before any sampling (user attr ``warm_start_from: "<study>#<trial>"``).
This module logs; it never prints.
"""

from __future__ import annotations

import csv
import logging
import math
import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import optuna
import torch

from search.config import (
    PARAM_NAMES,
    ConfigError,
    StudyConfig,
    trial_config,
    with_overrides,
)
from search.engine.data import ImageSet, load_splits
from search.engine.model import count_parameters
from search.engine.train import fit
from search.study.objective import build_model, make_transform, normalisation
from search.study.space import ParamValue, params_of
from search.study.stored import open_existing, study_config, top_trials

log = logging.getLogger(__name__)

CONFIRM_ATTR = "confirm"
RUN_ATTR_PREFIX = "confirm_run:"

SEED_STRIDE = 1_000_003  # run i of trial t trains with seed cfg.seed + t + SEED_STRIDE * (i + 1)
FOLD_SEED_OFFSET = 7_777  # the folds' own shuffling stream
CSV_COLUMNS = ["trial", "study_rank", *PARAM_NAMES, "study_value", "mean", "std", "n", "failed"]
CSV_COLUMNS += ["mode", "values", "winner"]
NOISE_SE = 2.0  # the winner's lead counts as real when it exceeds this many standard errors


class ConfirmStopped(Exception):
    """A stop was requested (Ctrl-C, SIGTERM): the running re-training ended after its epoch."""


# --------------------------------------------------------------------------- settings and runs


@dataclass(frozen=True)
class ConfirmSettings:
    top: int
    seeds: int
    folds: int

    @property
    def mode(self) -> str:
        return "folds" if self.folds else "seeds"

    @property
    def runs_per_trial(self) -> int:
        return self.folds or self.seeds

    def run_key(self, trial: int, index: int) -> str:
        """The study user attr that records run ``index`` of ``trial``."""
        what = f"fold{index}of{self.folds}" if self.folds else f"seed{index}"
        return f"{RUN_ATTR_PREFIX}{trial}:{what}"

    def describe(self) -> str:
        return f"{self.folds}-fold cross-validation" if self.folds else f"{self.seeds} new seed(s)"


def settings(cfg: StudyConfig, top: int | None, seeds: int | None, folds: int | None) -> ConfirmSettings:
    """The study config's ``confirm`` section with any command-line values applied, validated by
    the same model; an error names the flag that was given (``--folds``) or the config field."""
    given = {"top": top, "seeds": seeds, "folds": folds}
    changes = {f"confirm.{k}": v for k, v in given.items() if v is not None}
    try:
        c = with_overrides(cfg, changes).confirm
    except ConfigError as exc:
        key = exc.field.removeprefix("confirm.")
        if given.get(key) is None:
            raise
        raise ConfigError(f"--{key}", exc.value, exc.problem, exc.fix) from None
    return ConfirmSettings(top=c.top, seeds=c.seeds, folds=c.folds)


def run_seed(cfg: StudyConfig, trial: int, index: int) -> int:
    """The seed of re-training run ``index`` of ``trial`` (never one a study trial used)."""
    return cfg.seed + trial + SEED_STRIDE * (index + 1)


def stratified_folds(labels: torch.Tensor, k: int, seed: int) -> list[torch.Tensor]:
    """``k`` disjoint index sets covering ``labels``; each class is spread evenly over them."""
    gen = torch.Generator().manual_seed(seed)
    buckets: list[list[torch.Tensor]] = [[] for _ in range(k)]
    start = 0  # each class continues where the last one stopped, so fold sizes differ by <= 1
    for cls in torch.unique(labels).tolist():
        idx = torch.nonzero(labels == cls).flatten()
        idx = idx[torch.randperm(len(idx), generator=gen)]
        for j in range(k):
            buckets[(start + j) % k].append(idx[j::k])
        start = (start + len(idx)) % k
    return [torch.sort(torch.cat(b)).values for b in buckets]


@dataclass(frozen=True)
class RunRecord:
    """One finished re-training run, as recorded on the study."""

    trial: int
    index: int
    seed: int
    fold: int | None
    value: float | None  # best validation accuracy; None when the run failed (NaN loss)
    best_epoch: int
    epochs_run: int
    stop_reason: str
    seconds: float
    device: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "trial": self.trial,
            "index": self.index,
            "seed": self.seed,
            "fold": self.fold,
            "value": self.value,
            "best_epoch": self.best_epoch,
            "epochs_run": self.epochs_run,
            "stop_reason": self.stop_reason,
            "seconds": self.seconds,
            "device": self.device,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RunRecord:
        value = d.get("value")
        fold = d.get("fold")
        return cls(
            trial=int(d["trial"]),
            index=int(d["index"]),
            seed=int(d["seed"]),
            fold=None if fold is None else int(fold),
            value=None if value is None else float(value),
            best_epoch=int(d.get("best_epoch", 0)),
            epochs_run=int(d.get("epochs_run", 0)),
            stop_reason=str(d.get("stop_reason", "")),
            seconds=float(d.get("seconds", 0.0)),
            device=str(d.get("device", "")),
        )


def recorded_runs(study: optuna.Study, s: ConfirmSettings, trial: int) -> dict[int, RunRecord]:
    """The runs of ``trial`` already recorded for these settings, by run index."""
    attrs = study.user_attrs
    out: dict[int, RunRecord] = {}
    for i in range(s.runs_per_trial):
        raw = attrs.get(s.run_key(trial, i))
        if isinstance(raw, Mapping):
            out[i] = RunRecord.from_dict(raw)
    return out


# --------------------------------------------------------------------------- summary


@dataclass(frozen=True)
class ConfirmRow:
    trial: int
    rank: int  # 1 = the study's best
    params: dict[str, ParamValue]
    study_value: float
    values: list[float]
    failed: int

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values) if self.values else math.nan

    @property
    def std(self) -> float:
        return statistics.stdev(self.values) if len(self.values) >= 2 else math.nan


@dataclass
class ConfirmResult:
    study: str
    settings: ConfirmSettings
    rows: list[ConfirmRow]
    runs_done: int
    runs_total: int
    runs_this_call: int
    interrupted: bool = False
    csv_path: Path | None = None
    summary: dict[str, Any] = field(default_factory=dict)

    @property
    def winner(self) -> ConfirmRow | None:
        """The confirmed winner: the highest mean (ties: the study's better-ranked trial)."""
        rows = [r for r in self.rows if r.n]
        return max(rows, key=lambda r: (r.mean, -r.rank)) if rows else None


def pooled_std(rows: list[ConfirmRow]) -> float:
    """The seed noise of one run: the pooled standard deviation within trials (NaN if unmeasured)."""
    dof = sum(r.n - 1 for r in rows if r.n >= 2)
    if dof == 0:
        return math.nan
    ss = sum((r.n - 1) * r.std**2 for r in rows if r.n >= 2)
    return math.sqrt(ss / dof)


def verdict(rows: list[ConfirmRow], winner: ConfirmRow | None, s: ConfirmSettings) -> dict[str, Any]:
    """Whether the confirmed winner's lead over the runner-up exceeds the measured seed noise.

    The lead counts as real when it exceeds ``NOISE_SE`` standard errors of a difference of two
    means: ``NOISE_SE * noise * sqrt(1/n_winner + 1/n_runner_up)``.
    """
    noise = pooled_std(rows)
    study_best = min(rows, key=lambda r: r.rank).trial if rows else None
    out: dict[str, Any] = {
        "noise_std": None if math.isnan(noise) else round(noise, 6),
        "lead": None,
        "threshold": None,
        "beyond_noise": None,
        "study_best": study_best,
    }
    if winner is None:
        out["verdict"] = "no re-training run finished"
        return out
    what = "folds" if s.folds else "seeds"
    head = (
        f"trial {winner.trial} is the confirmed winner ({winner.mean:.4f} ± "
        f"{_fmt_std(winner.std)} over {winner.n} {what}"
        + ("" if winner.trial == study_best else f"; the study's best was trial {study_best}")
        + ")"
    )
    others = [r for r in rows if r.n and r.trial != winner.trial]
    if not others:
        out["verdict"] = head + "; no other trial to compare it with"
        return out
    runner = max(others, key=lambda r: (r.mean, -r.rank))
    lead = winner.mean - runner.mean
    out["lead"] = round(lead, 6)
    if math.isnan(noise):
        out["verdict"] = (
            head + f"; its lead over trial {runner.trial} is {lead:.4f}, but the seed noise is not "
            "measured with one run per trial (use --seeds 2 or more)"
        )
        return out
    threshold = NOISE_SE * noise * math.sqrt(1 / winner.n + 1 / runner.n)
    beyond = lead > threshold
    out.update(threshold=round(threshold, 6), beyond_noise=beyond)
    noise_name = "the noise between folds" if s.folds else "the seed noise"
    out["verdict"] = (
        f"{head}; the top trials {'differ' if beyond else 'do not differ'} by more than {noise_name}: "
        f"the lead over trial {runner.trial} is {lead:.4f}, {NOISE_SE:g} standard errors are "
        f"{threshold:.4f} (one run's std {noise:.4f})"
    )
    return out


def _fmt_std(v: float) -> str:
    return "-" if math.isnan(v) else f"{v:.4f}"


def _summary(result: ConfirmResult) -> dict[str, Any]:
    """The study user attr ``confirm``: compact (the dashboard cuts attributes at 1024 characters)."""
    s, winner = result.settings, result.winner
    return {
        "mode": s.mode,
        "top": s.top,
        "seeds": s.seeds,
        "folds": s.folds,
        "winner": None if winner is None else winner.trial,
        "winner_mean": None if winner is None else round(winner.mean, 6),
        **verdict(result.rows, winner, s),
        "rows": [
            {
                "trial": r.trial,
                "study_value": round(r.study_value, 6),
                "mean": None if not r.n else round(r.mean, 6),
                "std": None if math.isnan(r.std) else round(r.std, 6),
                "n": r.n,
            }
            for r in result.rows
        ],
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def write_csv(result: ConfirmResult, path: Path) -> Path:
    """``confirm.csv``: one row per confirmed trial (study rank order), its params (the five, then
    the searched config fields) and every run's value."""
    path.parent.mkdir(parents=True, exist_ok=True)
    winner = result.winner
    # the searched config fields (train.optimizer, ...) right after the five names
    dotted = list(dict.fromkeys(k for r in result.rows for k in r.params if k not in PARAM_NAMES))
    at = CSV_COLUMNS.index(PARAM_NAMES[-1]) + 1
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow([*CSV_COLUMNS[:at], *dotted, *CSV_COLUMNS[at:]])
        for r in result.rows:
            w.writerow(
                [
                    r.trial,
                    r.rank,
                    *(r.params[p] for p in PARAM_NAMES),
                    *(r.params.get(p, "") for p in dotted),
                    r.study_value,
                    "" if not r.n else f"{r.mean:.6f}",
                    "" if math.isnan(r.std) else f"{r.std:.6f}",
                    r.n,
                    r.failed,
                    result.settings.mode,
                    ";".join(f"{v:.6f}" for v in r.values),
                    winner is not None and r.trial == winner.trial,
                ]
            )
    return path


# --------------------------------------------------------------------------- re-training


@dataclass(frozen=True)
class _Data:
    train: ImageSet
    val: ImageSet
    mean: list[float]
    std: list[float]


def _datasets(cfg: StudyConfig, s: ConfirmSettings, device: torch.device) -> list[_Data]:
    """One train/val pair per run index (seeds: the study's split every time; folds: fold i as val)."""
    splits = load_splits(cfg.data, cfg.seed, with_test=False)  # the test split is never loaded
    if not s.folds:
        mean, std = normalisation(cfg, splits)
        return [_Data(splits.train.to(device), splits.val.to(device), mean, std)]
    images = torch.cat([splits.train.images, splits.val.images])
    labels = torch.cat([splits.train.labels, splits.val.labels])
    if s.folds > len(labels):
        raise ConfigError("--folds", s.folds, f"more folds than the {len(labels)} images", "use e.g. 5")
    out = []
    folds = stratified_folds(labels, s.folds, cfg.seed + FOLD_SEED_OFFSET)
    for val_idx in folds:
        mask = torch.ones(len(labels), dtype=torch.bool)
        mask[val_idx] = False
        train = ImageSet(images[mask].contiguous(), labels[mask].contiguous())
        val = ImageSet(images[val_idx].contiguous(), labels[val_idx].contiguous())
        fold_splits = type(splits)(train=train, val=val, test=None, classes=splits.classes)
        mean, std = normalisation(cfg, fold_splits)  # as the study did: the training part's own stats
        out.append(_Data(train.to(device), val.to(device), mean, std))
    return out


def _train_once(
    cfg: StudyConfig,
    params: dict[str, ParamValue],
    data: _Data,
    n_classes: int,
    seed: int,
    should_stop: Callable[[], bool],
) -> tuple[float | None, int, int, str]:
    """Train one fresh model as the study's objective does; (value, best_epoch, epochs_run, reason)."""
    cfg = trial_config(cfg, params)  # the trial's dotted params (optimizer, augmentation, ...)
    torch.manual_seed(seed)
    in_shape = tuple(int(v) for v in data.train.images.shape[1:])
    model = build_model(cfg, params, (in_shape[0], in_shape[1], in_shape[2]), n_classes)
    log.debug("confirm model: %d parameters", count_parameters(model))

    def on_epoch(epoch: int, _metrics: Any) -> None:
        if should_stop():
            raise ConfirmStopped(f"stopped after epoch {epoch}")

    result = fit(
        model,
        data.train,
        data.val,
        lr=float(params["lr"]),
        batch_size=int(params["batch_size"]),
        cfg=cfg.train,
        transform=make_transform(cfg, data.mean, data.std),
        seed=seed,
        on_epoch=on_epoch,
    )
    value = None if result.failed or result.best_state is None else float(result.best_val_acc)
    return value, result.best_epoch, result.epochs_run, result.stop_reason


def run_confirm(
    study: optuna.Study,
    cfg: StudyConfig,
    s: ConfirmSettings,
    device: torch.device,
    *,
    should_stop: Callable[[], bool] | None = None,
    on_run: Callable[[RunRecord, int, int], None] | None = None,
    out: str | Path | None = None,
) -> ConfirmResult:
    """Re-train the top trials (runs already recorded on the study are reused, not repeated).

    ``on_run(record, done, total)`` is called after each new run. When ``should_stop`` turns
    true, the running re-training ends after its epoch, is discarded, and the result says
    ``interrupted`` (nothing else is written). Otherwise writes ``confirm.csv`` (into ``out``,
    default ``storage/reports/<study>/``) and the study user attr ``confirm``.
    """
    stop = should_stop or (lambda: False)
    trials = top_trials(study, s.top)
    if not trials:
        raise ConfigError(
            "study", study.study_name, "has no completed trial to confirm", "run more trials first"
        )
    if len(trials) < s.top:
        log.warning(
            "study %s has only %d completed trial(s); confirming those", study.study_name, len(trials)
        )
    done = {t.number: recorded_runs(study, s, t.number) for t in trials}
    total = len(trials) * s.runs_per_trial
    n_done = sum(len(r) for r in done.values())
    log.info(
        "confirm %s: top %d trial(s) x %s = %d runs (%d recorded already, %d to run) on %s",
        study.study_name,
        len(trials),
        s.describe(),
        total,
        n_done,
        total - n_done,
        device,
    )
    interrupted = False
    ran = 0
    if n_done < total:
        datasets = _datasets(cfg, s, device)
        n_classes = len(study.user_attrs.get("data", {}).get("classes", [])) or int(
            torch.unique(datasets[0].train.labels).numel()
        )
        for t in trials:
            params = params_of(t.params, cfg.search.space)
            for i in range(s.runs_per_trial):
                if i in done[t.number]:
                    continue
                seed = run_seed(cfg, t.number, i)
                data = datasets[i] if s.folds else datasets[0]
                started = time.perf_counter()
                try:
                    value, best_epoch, epochs_run, reason = _train_once(
                        cfg, params, data, n_classes, seed, stop
                    )
                except ConfirmStopped:
                    interrupted = True
                    break
                record = RunRecord(
                    trial=t.number,
                    index=i,
                    seed=seed,
                    fold=i if s.folds else None,
                    value=value,
                    best_epoch=best_epoch,
                    epochs_run=epochs_run,
                    stop_reason=reason,
                    seconds=round(time.perf_counter() - started, 3),
                    device=str(device),
                )
                study.set_user_attr(s.run_key(t.number, i), record.to_dict())  # recorded as it finishes
                done[t.number][i] = record
                n_done += 1
                ran += 1
                if on_run is not None:
                    on_run(record, n_done, total)
                if stop():
                    interrupted = n_done < total
                    break
            if interrupted:
                break
    rows = [
        ConfirmRow(
            trial=t.number,
            rank=rank,
            params=params_of(t.params, cfg.search.space),
            study_value=float(t.value or 0.0),
            values=[r.value for _, r in sorted(done[t.number].items()) if r.value is not None],
            failed=sum(r.value is None for r in done[t.number].values()),
        )
        for rank, t in enumerate(trials, start=1)
    ]
    result = ConfirmResult(study.study_name, s, rows, n_done, total, ran, interrupted=interrupted)
    if interrupted:
        log.warning("confirm %s: interrupted with %d/%d runs recorded", study.study_name, n_done, total)
        return result
    from search.results.report import default_report_dir  # pandas: only where a report folder is named

    folder = Path(out) if out is not None else default_report_dir(study.study_name)
    result.csv_path = write_csv(result, folder / "confirm.csv")
    result.summary = _summary(result)
    study.set_user_attr(CONFIRM_ATTR, result.summary)
    log.info("confirm %s: %s", study.study_name, result.summary["verdict"])
    return result


# --------------------------------------------------------------------------- finetune's start


@dataclass(frozen=True)
class StartChoice:
    trial: int | None  # None: the study's best trial
    reason: str


def finetune_start(study: optuna.Study, trial: int | None) -> StartChoice:
    """Which trial `search finetune` starts from: ``--trial``, else the confirmed winner, else the best."""
    if trial is not None:
        return StartChoice(trial, f"trial {trial} (--trial)")
    summary = study.user_attrs.get(CONFIRM_ATTR)
    if isinstance(summary, Mapping) and isinstance(summary.get("winner"), int):
        winner = int(summary["winner"])
        mean = summary.get("winner_mean")
        what = f"{summary.get('folds')} folds" if summary.get("folds") else f"{summary.get('seeds')} seeds"
        mean_text = f", mean {float(mean):.4f} over {what}" if isinstance(mean, int | float) else ""
        return StartChoice(winner, f"trial {winner}, the confirmed winner of `search confirm`{mean_text}")
    return StartChoice(None, "the study's best trial (no `search confirm` yet)")


def load_for_confirm(study_name: str, storage: str) -> tuple[optuna.Study, StudyConfig]:
    """The study and its stored config (StorageError / ConfigError when either is missing)."""
    study = open_existing(study_name, storage)
    return study, study_config(study)
