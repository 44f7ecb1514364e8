"""Is the best trial really the best? Re-train the top trials with new seeds; warm-start a study.

A study picks its winner from one training run per configuration on one validation split, so a
lucky seed can win. :func:`run_confirm` re-trains each of the top-K COMPLETE trials' full configs
N more times with new seeds, exactly as in the study (same data split, epochs, early stopping,
augmentation; the test split is never loaded), or, with ``folds`` F, F times on seeded,
stratified folds of train+val. Each finished run is recorded on the study at once (user attr
``confirm_run:<trial>:seed<i>`` or ``confirm_run:<trial>:fold<i>of<F>``), so an interrupted
confirm continues where it stopped. The summary (user attr ``confirm``) names the confirmed
winner (highest mean) and says whether the winner's lead exceeds the seed noise. Each run trains
a fresh net from the trial's :class:`TrialRecipe`, as the study's objective did.

:func:`finetune_start` says which trial ``search finetune`` starts from (the confirmed winner).
This module logs; it never prints.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import torch

from search.config import ConfigError, StudyConfig, with_overrides
from search.engine.data import ImageSet, Splits, load_splits, stratified_folds
from search.engine.model import count_parameters
from search.engine.stream import place
from search.engine.train import fit
from search.results.verdict import ConfirmResult, ConfirmRow, summary_attr, write_csv
from search.store.records import CONFIRM_ATTR, CONFIRM_RUN_PREFIX
from search.study.pareto import accuracy
from search.study.recipe import DataFacts, TrialRecipe, data_facts, with_trained_precision
from search.study.space import params_of
from search.study.stored import open_existing, study_config, top_trials

log = logging.getLogger(__name__)

SEED_STRIDE = 1_000_003  # run i of trial t trains with seed cfg.seed + t + SEED_STRIDE * (i + 1)
FOLD_SEED_OFFSET = 7_777  # the folds' own shuffling stream


class ConfirmStopped(Exception):
    """A stop was requested (Ctrl-C, SIGTERM): the running re-training ended after its epoch."""


# --------------------------------------------------------------------------- settings and runs


@dataclass(frozen=True)
class ConfirmSettings:
    top: int
    seeds: int
    folds: int
    folds_from: str = "confirm.folds"  # what set folds: the config field or --folds (its errors name it)

    @property
    def mode(self) -> str:
        return "folds" if self.folds else "seeds"

    @property
    def runs_per_trial(self) -> int:
        return self.folds or self.seeds

    def run_key(self, trial: int, index: int) -> str:
        """The study user attr that records run ``index`` of ``trial``."""
        what = f"fold{index}of{self.folds}" if self.folds else f"seed{index}"
        return f"{CONFIRM_RUN_PREFIX}{trial}:{what}"

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
    return ConfirmSettings(c.top, c.seeds, c.folds, "--folds" if folds is not None else "confirm.folds")


def run_seed(cfg: StudyConfig, trial: int, index: int) -> int:
    """The seed of re-training run ``index`` of ``trial`` (never one a study trial used)."""
    return cfg.seed + trial + SEED_STRIDE * (index + 1)


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


# --------------------------------------------------------------------------- re-training


@dataclass(frozen=True)
class _Data:
    train: ImageSet
    val: ImageSet
    facts: DataFacts  # the training part's normalisation, as the study computed its own


MIN_FOLD_IMAGES = 30  # a fold validating on fewer: its accuracy moves by over 3 points an image


def check_folds(s: ConfirmSettings, labels: torch.Tensor, classes: Sequence[str]) -> None:
    """ConfigError (naming ``--folds`` or ``confirm.folds``) when a class has fewer train+val
    images than folds: some folds would validate without it, and the mean +- std over folds of a
    few images each is noise, for F x top trainings. A warning with the numbers when each fold
    validates on fewer than :data:`MIN_FOLD_IMAGES` images."""
    counts = torch.bincount(labels, minlength=len(classes))
    smallest = int(counts.argmin())
    least = int(counts[smallest])
    if s.folds > least:
        raise ConfigError(
            s.folds_from,
            s.folds,
            f"more folds than the {least} train+val image(s) of class {classes[smallest]!r}: "
            f"{s.folds - least} of the {s.folds} folds would validate without it, on folds of "
            f"{len(labels) // s.folds}-{-(-len(labels) // s.folds)} images",
            (f"use {s.folds_from} {least} or fewer, or 0 for new seeds on the study's split")
            if least >= 2
            else f"use {s.folds_from} 0 (new seeds on the study's split)",
        )
    if len(labels) // s.folds < MIN_FOLD_IMAGES:
        log.warning(
            "%s %d: each fold validates on only %d-%d of the %d train+val images, so one image moves a "
            "fold's accuracy by %.1f points; fewer folds give steadier figures",
            s.folds_from,
            s.folds,
            len(labels) // s.folds,
            -(-len(labels) // s.folds),
            len(labels),
            100 / max(1, len(labels) // s.folds),
        )


def _datasets(cfg: StudyConfig, s: ConfirmSettings, device: torch.device) -> list[_Data]:
    """One train/val pair per run index (seeds: the study's split every time; folds: fold i as val)."""
    splits = load_splits(cfg.data, cfg.seed, with_test=False)  # the test split is never loaded
    budget = cfg.data.device_budget
    if not s.folds:
        return [_Data(*place(splits.train, splits.val, device, budget), data_facts(cfg, splits))]
    base = splits.train.base  # the (mapped) images both splits index: folds index it too, no copy
    rows = torch.cat([part.rows(torch.arange(len(part))) for part in (splits.train, splits.val)])
    labels = torch.cat([splits.train.labels, splits.val.labels])
    check_folds(s, labels, splits.classes)
    out = []
    for val_idx in stratified_folds(labels, s.folds, cfg.seed + FOLD_SEED_OFFSET):
        mask = torch.ones(len(labels), dtype=torch.bool)
        mask[val_idx] = False
        train = ImageSet(base, labels[mask].contiguous(), rows[mask])
        val = ImageSet(base, labels[val_idx].contiguous(), rows[val_idx])
        facts = data_facts(cfg, Splits(train=train, val=val, test=None, classes=splits.classes))
        out.append(_Data(*place(train, val, device, budget), facts))
    return out


def _train_once(
    recipe: TrialRecipe, data: _Data, seed: int, should_stop: Callable[[], bool]
) -> tuple[float | None, int, int, str]:
    """Train one fresh model as the study's objective does; (value, best_epoch, epochs_run, reason)."""
    recipe = recipe.with_data(data.facts)
    torch.manual_seed(seed)
    model, _ = recipe.initial_model()  # model.init_from: the trial started from that file too
    log.debug("confirm model: %d parameters", count_parameters(model))

    def on_epoch(epoch: int, _metrics: Any) -> None:
        if should_stop():
            raise ConfirmStopped(f"stopped after epoch {epoch}")

    result = fit(
        model,
        data.train,
        data.val,
        lr=recipe.lr,
        batch_size=recipe.batch_size,
        cfg=recipe.cfg.train,
        transform=recipe.transform(),
        seed=seed,
        on_epoch=on_epoch,
    )
    value = None if result.failed or result.best_state is None else float(result.best_val_acc)
    return value, result.best_epoch, result.epochs_run, result.stop_reason


@dataclass
class _Progress:
    """The runs recorded so far, by trial and run index, and what this call added."""

    done: dict[int, dict[int, RunRecord]]
    total: int
    ran: int = 0
    interrupted: bool = False

    @property
    def n_done(self) -> int:
        return sum(len(r) for r in self.done.values())


def _run_missing(
    study: optuna.Study,
    cfg: StudyConfig,
    s: ConfirmSettings,
    trials: list[optuna.trial.FrozenTrial],
    progress: _Progress,
    device: torch.device,
    stop: Callable[[], bool],
    on_run: Callable[[RunRecord, int, int], None] | None,
) -> None:
    """Train every run not recorded yet, recording each on the study as it finishes."""
    datasets = _datasets(cfg, s, device)
    for t in trials:
        trained = with_trained_precision(cfg, t)  # its runs train in the trial's precision
        recipe = TrialRecipe.of(trained, params_of(t.params, cfg.search.space), datasets[0].facts)
        for i in (i for i in range(s.runs_per_trial) if i not in progress.done[t.number]):
            seed, started = run_seed(cfg, t.number, i), time.perf_counter()
            try:
                value, best_epoch, epochs_run, reason = _train_once(
                    recipe, datasets[i] if s.folds else datasets[0], seed, stop
                )
            except ConfirmStopped:
                progress.interrupted = True
                return
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
            progress.done[t.number][i] = record
            progress.ran += 1
            if on_run is not None:
                on_run(record, progress.n_done, progress.total)
            if stop():
                progress.interrupted = progress.n_done < progress.total
                return


def _confirmed_trials(study: optuna.Study, s: ConfirmSettings) -> list[optuna.trial.FrozenTrial]:
    """The top ``s.top`` trials within budget (ConfigError when there is none)."""
    trials = top_trials(study, s.top)
    if not trials:
        raise ConfigError(
            "study", study.study_name, "has no completed trial to confirm", "run more trials first"
        )
    if len(trials) < s.top:
        log.warning(
            "study %s has only %d completed trial(s); confirming those", study.study_name, len(trials)
        )
    return trials


def _rows(
    trials: list[optuna.trial.FrozenTrial], cfg: StudyConfig, done: dict[int, dict[int, RunRecord]]
) -> list[ConfirmRow]:
    return [
        ConfirmRow(
            trial=t.number,
            rank=rank,
            params=params_of(t.params, cfg.search.space),
            study_value=float(accuracy(t) or 0.0),
            values=[r.value for _, r in sorted(done[t.number].items()) if r.value is not None],
            failed=sum(r.value is None for r in done[t.number].values()),
        )
        for rank, t in enumerate(trials, start=1)
    ]


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

    Raises:
        ConfigError: the study has no completed trial, or more folds than images.
    """
    trials = _confirmed_trials(study, s)
    done = {t.number: recorded_runs(study, s, t.number) for t in trials}
    progress = _Progress(done, total=len(trials) * s.runs_per_trial)
    log.info(
        "confirm %s: top %d trial(s) x %s = %d runs (%d recorded already, %d to run) on %s",
        study.study_name,
        len(trials),
        s.describe(),
        progress.total,
        progress.n_done,
        progress.total - progress.n_done,
        device,
    )
    if progress.n_done < progress.total:
        _run_missing(study, cfg, s, trials, progress, device, should_stop or (lambda: False), on_run)
    rows = _rows(trials, cfg, progress.done)
    result = ConfirmResult(
        study.study_name, s, rows, progress.n_done, progress.total, progress.ran, progress.interrupted
    )
    if result.interrupted:
        log.warning(
            "confirm %s: interrupted with %d/%d runs recorded", result.study, result.runs_done, progress.total
        )
        return result
    from search.results.report import default_report_dir  # pandas: only where a report folder is named

    folder = Path(out) if out is not None else default_report_dir(study.study_name)
    result.csv_path = write_csv(result, folder / "confirm.csv")
    result.summary = summary_attr(result)
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
