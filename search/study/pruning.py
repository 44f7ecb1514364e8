"""Pruning per epoch: Optuna's pruners in a one-objective study, the cost rule in a two-objective one.

After each epoch the objective asks :class:`EpochPruning` whether to stop the trial.

One objective (``search.objectives: [val_accuracy]``): the epoch's validation accuracy is
reported (``trial.report``) and the configured Optuna pruner decides (``trial.should_prune``),
skipped by :class:`PruneGate` when it cannot say yes yet.

Two objectives (``[val_accuracy, COST]``): Optuna refuses ``trial.report`` there, so the learning
curve is kept in user attr ``val_accuracy_curve`` (rewritten each epoch; the dashboard, the report
and ``search status`` read it) and the rule of :class:`CostRule` decides. The cost is known before
training, so a trial reaches the front only by beating, in accuracy, every finished trial that
costs no more: the pruner's threshold is taken over those trials alone (docs/pareto.md).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState

from search.config import PrunerConfig, StudyConfig
from search.store.records import VAL_CURVE_ATTR
from search.study.budgets import is_feasible
from search.study.pareto import cost
from search.study.tally import StudyReader, complete_trials

Curve = list[float | None]  # val accuracy after epoch e at index e - 1 (None: not recorded)


class PruneGate:
    """Whether ``trial.should_prune()`` could say yes at an epoch: when not, it is not asked.

    Asking reads the trial back and all of the study's COMPLETE trials (about 7 SQL statements and
    a commit on SQLite). The median and percentile pruners never prune before step
    ``n_warmup_steps`` nor while fewer than ``n_startup_trials`` (and at least one) trials are
    COMPLETE, and no pruner never prunes, so those calls are skipped; the answer is the same. The
    COMPLETE count is read (the pruner's own read, without the trial's) only until it is reached:
    it never falls, so from then on every epoch past the warm-up asks the pruner directly.
    Successive halving and hyperband are always asked (their rungs are kept in the storage).
    """

    def __init__(self, pruner: PrunerConfig) -> None:
        self.name = pruner.name
        self.startup = max(1, pruner.n_startup_trials)
        self.warmup = pruner.n_warmup_steps
        self._started: set[str] = set()  # studies known to hold `startup` COMPLETE trials

    def worth_asking(self, study: optuna.Study, step: int, reader: StudyReader | None = None) -> bool:
        if self.name == "none":
            return False
        if self.name not in ("median", "percentile"):
            return True
        if step < self.warmup:
            return False
        if study.study_name not in self._started:
            if reader is not None:  # a count: no trial is read
                n_complete = reader.counts(study.study_name)[TrialState.COMPLETE]
            else:
                n_complete = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
            if n_complete < self.startup:
                return False
            self._started.add(study.study_name)
        return True


def curve_of(trial: FrozenTrial) -> Curve:
    """A trial's per-epoch val accuracy: its stored curve (two objectives) or its intermediate
    values (one objective), index e - 1 holding epoch e."""
    stored = trial.user_attrs.get(VAL_CURVE_ATTR)
    if isinstance(stored, list):
        return [None if v is None else float(v) for v in stored]
    if not trial.intermediate_values:
        return []
    last = max(trial.intermediate_values)
    return [trial.intermediate_values.get(e) for e in range(1, last + 1)]


class CostRule:
    """The two-objective pruning rule (median or percentile pruner; ``none`` never prunes).

    Trial T of cost c after epoch e, its best accuracy so far b: the peers are the study's COMPLETE
    feasible trials of cost <= c. T is pruned when

    - e >= ``n_warmup_steps`` (as Optuna's pruners: the first epoch that may prune is that one),
    - at least ``n_startup_trials`` (and one) peers exist,
    - some peer recorded an accuracy at epoch e, and
    - b is below the threshold of the peers' accuracies at epoch e: their median (``median``), or
      their (100 - ``percentile``)-th percentile (``percentile``: the cut Optuna's
      PercentilePruner makes for a maximised value).

    A trial no peer is cheaper than (or as cheap as) is never pruned: it is on the front whatever
    its accuracy. The interval between checks is one epoch, Optuna's default.
    """

    def __init__(self, pruner: PrunerConfig) -> None:
        self.name = pruner.name
        self.startup = max(1, pruner.n_startup_trials)
        self.warmup = pruner.n_warmup_steps
        self.percentile = 50.0 if pruner.name == "median" else pruner.percentile

    def threshold(self, peers: Sequence[FrozenTrial], epoch: int) -> float:
        """The accuracy at ``epoch`` a trial must reach among ``peers`` (nan: no verdict)."""
        if len(peers) < self.startup:
            return math.nan
        curves = [curve_of(t) for t in peers]
        at_epoch = [c[epoch - 1] for c in curves if len(c) >= epoch and c[epoch - 1] is not None]
        if not at_epoch:
            return math.nan
        return float(np.nanpercentile(np.asarray(at_epoch, dtype=float), 100.0 - self.percentile))

    def should_prune(self, study: optuna.Study, epoch: int, curve: Curve, my_cost: float) -> bool:
        """Whether the trial of cost ``my_cost`` whose curve is ``curve`` (up to ``epoch``) stops now
        (the COMPLETE trials as the run loop's storage keeps them: each read once per process)."""
        if self.name == "none" or epoch < self.warmup:
            return False
        peers = [
            t
            for t in complete_trials(study)
            if (c := cost(t)) is not None and c <= my_cost and is_feasible(t)
        ]
        bar = self.threshold(peers, epoch)
        seen = [v for v in curve if v is not None]
        return bool(seen) and not math.isnan(bar) and max(seen) < bar


class EpochPruning:
    """What the objective does after each epoch of a trial: record, then decide whether to prune."""

    def __init__(self, cfg: StudyConfig) -> None:
        self.gate = PruneGate(cfg.search.pruner)
        self.rule = CostRule(cfg.search.pruner) if cfg.search.cost is not None else None
        self._curves: dict[int, Curve] = {}  # by trial number: this process's running trials

    def after_epoch(
        self,
        trial: optuna.Trial,
        epoch: int,
        val_acc: float,
        my_cost: float | None,
        reader: StudyReader | None,
    ) -> bool:
        """Report (one objective) or store the curve (two), then True to prune the trial."""
        if self.rule is None or my_cost is None:
            trial.report(val_acc, epoch)  # one storage write an epoch; epochs_run at the end
            return self.gate.worth_asking(trial.study, epoch, reader) and trial.should_prune()
        curve = self._curve(trial, epoch)
        curve.append(val_acc)
        trial.set_user_attr(VAL_CURVE_ATTR, curve)
        return self.rule.should_prune(trial.study, epoch, curve, my_cost)

    def end(self, number: int) -> None:
        """Forget a finished trial's curve."""
        self._curves.pop(number, None)

    def _curve(self, trial: optuna.Trial, epoch: int) -> Curve:
        """The curve up to epoch - 1: kept in memory, or (a retry resuming a checkpoint) the
        attempt's stored one, cut to the epochs the checkpoint holds."""
        curve = self._curves.get(trial.number)
        if curve is None:
            stored = trial.user_attrs.get(VAL_CURVE_ATTR) if epoch > 1 else None
            curve = [None if v is None else float(v) for v in stored] if isinstance(stored, list) else []
        curve = curve[: epoch - 1]
        curve += [None] * (epoch - 1 - len(curve))
        self._curves[trial.number] = curve
        return curve
