"""The Optuna objective: suggest → build → budgets → fit → report/prune → save best weights → user_attrs.

Data are loaded, checked and moved to the device once per process, when the objective is built
(before any study is touched, so a bad dataset or an input too small for the net never leaves a
study behind). A trial's net and transforms come from its :class:`TrialRecipe` (the study's config
with the trial's params, on the data's facts), as every later rebuild of the trial does. No
training loop lives here: that is ``train.fit`` (or the ``fit`` the objective is given).
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import optuna
import torch
from torch import nn

from search.config import (
    ConfigError,
    StudyConfig,
    unused_params,
)
from search.engine.arch import family
from search.engine.augment import BatchTransform
from search.engine.data import load_splits
from search.engine.device import resolve_precision
from search.engine.evaluate import forward_flops, forward_latency_ms
from search.engine.model import count_parameters
from search.engine.stream import place
from search.engine.train import EpochMetrics, FitResult, FitState, StopKind, fit
from search.store.artifacts import CheckpointStore, StorageFault, WeightStore
from search.store.records import (
    BEST_EPOCH_ATTR,
    COMPILE_SECONDS_ATTR,
    CONSTRAINT_ATTR,
    DEVICE_ATTR,
    EPOCHS_RUN_ATTR,
    FAIL_REASON_ATTR,
    FAMILY_ATTR,
    FLOPS_ATTR,
    HOST_ATTR,
    IMAGES_PER_S_ATTR,
    INIT_FROM_LOADED_ATTR,
    INIT_FROM_SHA256_KEY,
    INIT_FROM_SKIPPED_ATTR,
    LATENCY_ATTR,
    N_PARAMS_ATTR,
    PID_ATTR,
    PRECISION_ATTR,
    PRUNED_AT_EPOCH_ATTR,
    RESUMED_FROM_EPOCH_ATTR,
    RESUMED_FROM_TRIAL_ATTR,
    RETRY_HISTORY_SYSTEM_ATTR,
    STOP_REASON_ATTR,
    TRAIN_SECONDS_ATTR,
    UNUSED_PARAMS_ATTR,
    WEIGHTS_ATTR,
)
from search.study.budgets import budget_constraints, over_budget
from search.study.failures import DeviceFailure, describe_failure, free_memory, is_device_fatal
from search.study.fits import read_init_from
from search.study.pareto import accuracy as accuracy_of
from search.study.pareto import cost as cost_of
from search.study.pareto import dominates
from search.study.preflight import check_space_fits
from search.study.pruning import EpochPruning
from search.study.recipe import TrialRecipe, data_facts
from search.study.space import params_of, suggest
from search.study.tally import StudyReader, complete_trials

if TYPE_CHECKING:
    from search.engine.tensorboard import RunLog

log = logging.getLogger(__name__)


class TrialInterrupted(Exception):  # control flow (the loop stops and re-queues): not a SearchError
    """A stop was requested (Ctrl-C, SIGTERM): the trial ended after its current epoch."""


def retry_history(trial: optuna.Trial) -> list[int]:
    """Numbers of the earlier attempts this trial repeats (oldest first; empty for a fresh trial)."""
    # its own record only (the other workers' RUNNING trials are not read)
    own = trial.storage.get_trial(trial._trial_id)
    return [int(n) for n in own.system_attrs.get(RETRY_HISTORY_SYSTEM_ATTR, [])]


def device_label(device: torch.device) -> str:
    """``str(device)``; on CUDA under ``CUDA_VISIBLE_DEVICES`` also the GPU it is (``cuda:0 (GPU 2)``).

    Local workers each see one GPU as ``cuda:0``; the label keeps ``search status`` telling them apart.
    """
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if device.type != "cuda" or visible is None:
        return str(device)
    gpus = [v.strip() for v in visible.split(",") if v.strip()]
    index = device.index or 0
    return f"{device} (GPU {gpus[index]})" if index < len(gpus) else str(device)


FitFn = Callable[..., FitResult]  # ``train.fit``'s signature: the training loop a trial runs


class Objective:
    """Callable for ``study.optimize``; holds the process's data on the training device.

    ``fit`` is the training loop each trial runs (default :func:`search.engine.train.fit`); a
    benchmark or a test passes a stand-in with the same signature instead of patching this module.
    """

    def __init__(
        self,
        cfg: StudyConfig,
        device: torch.device,
        weights: WeightStore | None,
        should_stop: Callable[[], bool] | None = None,
        *,
        release_memory: bool = False,
        fit: FitFn | None = None,
    ) -> None:
        self.cfg = cfg
        self.device = device
        # a GPU shared with other workers: return its cached memory after every trial, so a
        # neighbour's next trial is not refused memory this process only holds in its cache
        self.release_memory = release_memory
        self.weights = weights
        self.should_stop = should_stop or (lambda: False)
        self.fit: FitFn = fit if fit is not None else _default_fit()
        self.pruning = EpochPruning(cfg)  # Optuna's pruner, or the two-objective rule
        # read once, not per trial: a study's checkpoint folder (its key never changes), and a
        # trial's retry history when the run loop's snapshot already holds it (by trial number)
        self._checkpoint_stores: dict[str, CheckpointStore] = {}
        self.known_retry_history: dict[int, list[int]] = {}
        # set by the run loop: counts and COMPLETE trials read without re-reading running trials
        self.reader: StudyReader | None = None
        if cfg.train.tensorboard:
            from search.engine.tensorboard import require_tensorboard

            require_tensorboard()  # a missing extra is bad input, found before any study exists
        splits = load_splits(cfg.data, cfg.seed, with_test=False)
        check_space_fits(cfg, splits.in_shape)
        self.data = data_facts(cfg, splits)
        self.in_shape = self.data.in_shape
        self.n_classes = self.data.n_classes
        self.transform = TrialRecipe(cfg, {}, self.data).transform()  # the study's; trials reuse it
        self.init_state, self.init_sha256 = read_init_from(cfg, self.data)
        self.train, self.val = place(splits.train, splits.val, device, cfg.data.device_budget)

    def data_attrs(self) -> dict[str, Any]:
        """What the study records about its data (to rebuild the model and its input later), and
        the content hash of ``model.init_from`` (a changed file is another experiment on resume)."""
        extra = {} if self.init_sha256 is None else {INIT_FROM_SHA256_KEY: self.init_sha256}
        return {**self.data.to_attr(), **extra}

    def recipe(self, params: dict[str, Any]) -> TrialRecipe:
        """The recipe of the trial with ``params`` (the study's config with its dotted ones applied)."""
        return TrialRecipe.of(self.cfg, params, self.data)

    def __call__(self, trial: optuna.Trial) -> float | tuple[float, float]:
        """One trial; any exception but pruning becomes a FAIL with ``fail_reason``, never a crash.

        Except a broken accelerator context (:func:`is_device_fatal`): then the trial's reason is
        ``device error: ...`` and :class:`DeviceFailure` ends this process's trial loop.
        """
        self._release()  # what a pruned trial left (its traceback held it when it ended)
        try:
            value = self._run_trial(trial)
        except (optuna.TrialPruned, TrialInterrupted):
            raise
        except StorageFault as exc:  # a full or unwritable folder: every next trial would fail too
            trial.set_user_attr(FAIL_REASON_ATTR, f"storage: {exc}"[:300])
            raise  # Optuna records the trial FAIL; the run ends with this error
        except Exception as exc:  # a failing trial must not end the study: record it and go on
            reason = describe_failure(exc, trial.params)
            if is_device_fatal(exc):  # every later CUDA call of this process would fail too
                log.error("trial %d: %s; this process cannot use %s again", trial.number, reason, self.device)
                trial.set_user_attr(FAIL_REASON_ATTR, reason)
                raise DeviceFailure(f"trial {trial.number}: {reason}") from exc
            oom = isinstance(exc, torch.OutOfMemoryError)
            log.warning("trial %d failed: %s", trial.number, reason, exc_info=not oom)
        else:
            self._release()
            return value
        free_memory()  # outside the except block, so the traceback's tensors are already gone
        trial.set_user_attr(FAIL_REASON_ATTR, reason)
        return self._values(float("nan"), None if self.cfg.search.cost is None else float("nan"))

    def params_fit(self, params: dict[str, Any]) -> bool:
        """Whether sampled ``params`` (the space's fixed values added; dotted ones such as
        ``model.stages`` applied as the trial would) build a model within
        ``search.constraints.max_params``; built on the meta device (no memory, no weights)."""
        limit = self.cfg.search.constraints.max_params
        if limit is None:
            return True
        try:
            full = params_of(params, self.cfg.search.space)
        except KeyError:  # a partial proposal: the trial itself is checked once it is complete
            return True
        try:
            with torch.device("meta"):
                model = self.recipe(full).model()
        except ConfigError:  # e.g. an input too small for these params: the trial fails with it
            return True
        return count_parameters(model) <= limit

    def _release(self) -> None:
        if self.release_memory:
            free_memory()

    def _run_trial(self, trial: optuna.Trial) -> float | tuple[float, float]:
        recipe = self.recipe(suggest(trial, self.cfg.search.space))
        cfg, params = recipe.cfg, dict(recipe.params)
        torch.manual_seed(cfg.seed + trial.number)
        model, init = recipe.initial_model(self.init_state)
        n_params = self._record_start(trial, recipe, model)
        self._check_budgets(trial, model, n_params)
        cost = self._cost(trial, model, n_params)  # two objectives: known before any epoch
        if init is not None:
            trial.set_user_attr(INIT_FROM_LOADED_ATTR, init.loaded)
            trial.set_user_attr(INIT_FROM_SKIPPED_ATTR, init.skipped)
        checkpoints = self._checkpoint_store(trial.study)
        earlier = self.known_retry_history.pop(trial.number, None)
        if earlier is None:
            earlier = retry_history(trial)
        resume = self._resume_state(trial, checkpoints, earlier, params)
        board = self._trial_log(trial, params, resume)
        if board is not None:
            board.graph(model, self.in_shape)
        on_epoch, on_checkpoint = self._callbacks(trial, cfg, params, checkpoints, board, cost)
        keep_checkpoint = False
        ended, value = "FAIL", None  # how the trial ended, for its TensorBoard hparams
        try:
            result = self.fit(
                model,
                self.train,
                self.val,
                lr=recipe.lr,
                batch_size=recipe.batch_size,
                cfg=cfg.train,
                transform=self._transform_of(recipe),
                seed=cfg.seed + trial.number,
                on_epoch=on_epoch,
                on_checkpoint=on_checkpoint,
                resume=resume,
            )
            if result.stop.kind is StopKind.PRUNED:
                ended = "PRUNED"
            elif not (result.failed or result.best_state is None):
                ended, value = "COMPLETE", result.best_val_acc
        except (TrialInterrupted, KeyboardInterrupt):
            keep_checkpoint = True  # its retry continues from here
            ended = "INTERRUPTED"
            raise
        except Exception as exc:
            keep_checkpoint = is_device_fatal(exc)  # re-queued: its retry continues from here
            raise
        finally:
            self.pruning.end(trial.number)
            if not keep_checkpoint:
                checkpoints.remove(trial.number, *earlier)
            if board is not None:
                board.finish(ended, value)
        return self._values(self._finish(trial, result, cost), cost)

    def _values(self, accuracy: float, cost: float | None) -> float | tuple[float, float]:
        """What Optuna records: the accuracy, or (accuracy, cost) in a two-objective study."""
        return accuracy if cost is None else (accuracy, cost)

    def _cost(self, trial: optuna.Trial, model: nn.Module, n_params: int) -> float | None:
        """The trial's cost objective (``search.objectives``' second; None with one objective),
        recorded as a user attr too (``n_params``, ``flops``, ``latency_ms``)."""
        name = self.cfg.search.cost
        if name is None:
            return None
        if name == "n_params":
            return float(n_params)
        if name == "latency_ms":
            return self._latency(trial, model)
        known = trial.user_attrs.get(FLOPS_ATTR)  # a retry carries its attempt's count
        flops = int(known) if known is not None else forward_flops(model, self.in_shape)
        trial.set_user_attr(FLOPS_ATTR, flops)
        return float(flops)

    def _latency(self, trial: optuna.Trial, model: nn.Module) -> float:
        """The batch-1 latency the budget and the objective use (measured once per trial: a retry
        of an interrupted trial carries its attempt's figure, Optuna copying its user attrs)."""
        known = trial.user_attrs.get(LATENCY_ATTR)
        if known is not None:
            return float(known)
        value = round(forward_latency_ms(model, self.in_shape, self.device), 4)
        trial.set_user_attr(LATENCY_ATTR, value)
        return value

    def _checkpoint_store(self, study: optuna.Study) -> CheckpointStore:
        store = self._checkpoint_stores.get(study.study_name)
        if store is None:
            store = CheckpointStore.for_study(self.cfg.checkpoints_dir, study)
            self._checkpoint_stores[study.study_name] = store
        return store

    def _transform_of(self, recipe: TrialRecipe) -> BatchTransform:
        """The study's transform, unless the trial searched its augmentation or memory format."""
        cfg = recipe.cfg
        if (
            cfg.data.augment == self.cfg.data.augment
            and cfg.train.channels_last == self.cfg.train.channels_last
        ):
            return self.transform
        return recipe.transform()

    def _callbacks(
        self,
        trial: optuna.Trial,
        cfg: StudyConfig,
        params: dict[str, Any],
        checkpoints: CheckpointStore,
        board: RunLog | None,
        cost: float | None,
    ) -> tuple[Callable[[int, EpochMetrics], bool], Callable[[FitState], None]]:
        """``fit``'s ``on_epoch`` (report, prune, stop) and ``on_checkpoint`` (throttled saves)."""

        def on_epoch(epoch: int, metrics: EpochMetrics) -> bool:
            if board is not None:  # host floats only: no extra sync
                board.epoch(metrics)
            if self.pruning.after_epoch(trial, epoch, metrics.val_acc, cost, self.reader):
                return True  # fit stops here and returns its figures; pruned by _finish
            if self.should_stop():
                trial.set_user_attr(EPOCHS_RUN_ATTR, epoch)
                trial.set_user_attr(FAIL_REASON_ATTR, "interrupted")
                raise TrialInterrupted(f"trial {trial.number} interrupted after epoch {epoch}")
            return False

        last_checkpoint = time.monotonic()

        def on_checkpoint(state: FitState) -> None:
            # Throttled (train.checkpoint_every_s): a save costs tens of ms, so short epochs skip
            # it; a stop request always saves, so an interrupted trial resumes where it stopped.
            nonlocal last_checkpoint
            now = time.monotonic()
            if self.should_stop() or now - last_checkpoint >= cfg.train.checkpoint_every_s:
                checkpoints.save(trial.number, {**state.state_dict(), "params": params})
                last_checkpoint = now

        return on_epoch, on_checkpoint

    def _record_start(self, trial: optuna.Trial, recipe: TrialRecipe, model: nn.Module) -> int:
        """Where and what the trial trains (``search status`` shows host, pid and device; the
        family, and the searched params its arch ignores); returns the model's parameter count."""
        n_params = count_parameters(model)
        trial.set_user_attr(N_PARAMS_ATTR, n_params)
        trial.set_user_attr(FAMILY_ATTR, family(recipe.cfg.model))
        unused = unused_params(recipe.cfg.model, self.cfg.search.space)
        if unused:
            trial.set_user_attr(UNUSED_PARAMS_ATTR, unused)
        trial.set_user_attr(DEVICE_ATTR, device_label(self.device))
        trial.set_user_attr(PRECISION_ATTR, resolve_precision(self.cfg.train, self.device))
        trial.set_user_attr(HOST_ATTR, socket.gethostname())
        trial.set_user_attr(PID_ATTR, os.getpid())
        return n_params

    def _check_budgets(self, trial: optuna.Trial, model: nn.Module, n_params: int) -> None:
        """With ``search.constraints``: store the trial's constraint values; over budget: PRUNED now.

        Over budget, the trial costs no training: it raises TrialPruned before any epoch, with
        user attr ``constraint`` naming the budget and the figures. PRUNED, not FAIL or COMPLETE:
        Optuna keeps constraint values of COMPLETE and PRUNED trials only and its samplers skip
        FAIL ones, so TPE ranks the trial below every feasible one (its infeasibility score) and
        learns to avoid the region; a COMPLETE over-budget trial would need a made-up value and
        would show in every table of completed results. A PRUNED trial counts as finished
        toward ``search.n_trials``, so a study whose every point is over budget still ends.
        GP fits on COMPLETE trials only: it models the budget from the feasible trials' values
        (how far under budget each was), and ``study.TrialSeeded`` replaces its proposals over
        max_params (:meth:`params_fit`), which it would otherwise repeat. Random, QMC and grid
        read no constraints: for them the budget means only that an over-budget trial trains
        nothing and is never the best.
        Values go through ``trial.set_constraint`` (Optuna 5's replacement for the deprecated
        ``constraints_func``), which every sampler reads from the storage; the latency is
        measured only when the parameter count fits (a model far over budget may not fit the
        device at all). In a two-objective study the same holds: an over-budget trial is
        PRUNED, so it is never on the front (``study.best_trials`` takes COMPLETE trials).
        """
        budgets = self.cfg.search.constraints
        if not budgets.enabled:
            return
        # a retry of an interrupted trial carries its attempt's constraint values and latency
        # (Optuna's retry copies system and user attrs): same params, so they are kept
        stored = trial.constraints
        attrs: dict[str, Any] = {N_PARAMS_ATTR: n_params}
        if budgets.max_latency_ms is not None and not over_budget(attrs, budgets):
            attrs[LATENCY_ATTR] = self._latency(trial, model)
        for key, value in budget_constraints(attrs, budgets).items():
            if key not in stored:
                trial.set_constraint(key, value)
        over = over_budget(attrs, budgets)
        if over:
            text = "; ".join(over)
            trial.set_user_attr(CONSTRAINT_ATTR, text)
            # DEBUG: the trial's own line says so (over_budget=...)
            log.debug("trial %d over budget (%s): pruned before training", trial.number, text)
            raise optuna.TrialPruned(f"over budget: {text}")

    def _finish(self, trial: optuna.Trial, result: FitResult, cost: float | None) -> float:
        """Record the fit, then prune, fail (NaN) or keep the weights and return the value."""
        self._record_fit(trial, result)
        if result.stop.kind is StopKind.PRUNED:
            trial.set_user_attr(PRUNED_AT_EPOCH_ATTR, result.stop.epoch)
            last = result.history[-1].val_acc
            raise optuna.TrialPruned(f"pruned at epoch {result.stop.epoch} (val_acc {last:.4f})")
        if result.failed or result.best_state is None:
            trial.set_user_attr(FAIL_REASON_ATTR, result.stop_reason)
            log.warning("trial %d failed: %s", trial.number, result.stop_reason)
            return float("nan")  # Optuna records a NaN objective as FAIL (both values when two)
        self._keep_weights(trial, result.best_val_acc, cost, result.best_state)
        return result.best_val_acc

    def _record_fit(self, trial: optuna.Trial, result: FitResult) -> None:
        """The run's figures, for every trial that trained (complete, pruned or diverged)."""
        trial.set_user_attr(BEST_EPOCH_ATTR, result.best_epoch)
        trial.set_user_attr(EPOCHS_RUN_ATTR, result.epochs_run)
        trial.set_user_attr(STOP_REASON_ATTR, result.stop_reason)
        trial.set_user_attr(TRAIN_SECONDS_ATTR, round(result.train_seconds, 3))
        trial.set_user_attr(IMAGES_PER_S_ATTR, round(result.images_per_s, 1))
        if self.cfg.train.compile:
            trial.set_user_attr(COMPILE_SECONDS_ATTR, round(result.compile_seconds, 3))

    def _trial_log(
        self, trial: optuna.Trial, params: dict[str, Any], resume: dict[str, Any] | None
    ) -> RunLog | None:
        """The trial's TensorBoard run when ``train.tensorboard`` is on (imported only then)."""
        if not self.cfg.train.tensorboard:
            return None
        from search.engine.tensorboard import trial_log

        return trial_log(self.cfg, trial.study.study_name, trial.number, params, resume)

    def _resume_state(
        self,
        trial: optuna.Trial,
        checkpoints: CheckpointStore,
        earlier: list[int],
        params: dict[str, Any],
    ) -> dict[str, Any] | None:
        """The latest checkpoint among the attempts this trial repeats, if any matches its params."""
        for number in reversed(earlier):
            state = checkpoints.load(number)
            if state is None:
                continue
            if state.get("params") != params:
                log.warning("checkpoint of trial %d has other params; not resuming from it", number)
                continue
            trial.set_user_attr(RESUMED_FROM_TRIAL_ATTR, number)
            trial.set_user_attr(RESUMED_FROM_EPOCH_ATTR, int(state["epoch"]))
            log.info("trial %d resumes trial %d after epoch %d", trial.number, number, state["epoch"])
            return state
        return None

    def _keep_weights(
        self, trial: optuna.Trial, value: float, cost: float | None, state: dict[str, torch.Tensor]
    ) -> None:
        """Save this trial's best weights if it ranks in the top-k, and drop the ones it beats.

        In a two-objective study a trial on the Pareto front (with this one) keeps its weights
        too, whatever its rank: every front member can be exported, fine-tuned or confirmed.
        """
        k = self.cfg.search.keep_top_k
        if self.weights is None or k == 0:
            return
        kept = [
            (v, cost_of(t), t.user_attrs[WEIGHTS_ATTR])
            for t in complete_trials(trial.study)
            if WEIGHTS_ATTR in t.user_attrs
            and (v := accuracy_of(t)) is not None
            and self.weights.exists(t.user_attrs[WEIGHTS_ATTR])
        ]
        kept.sort(key=lambda vk: vk[0], reverse=True)
        on_front = cost is not None and not any(dominates((v, c), (value, cost)) for v, c, _ in kept)
        if len(kept) >= k and value <= kept[k - 1][0] and not on_front:
            return
        artifact_id = self.weights.save(trial, state, f"trial-{trial.number}-best.pt")
        trial.set_user_attr(WEIGHTS_ATTR, artifact_id)
        ranked = sorted([*kept, (value, cost, artifact_id)], key=lambda vk: vk[0], reverse=True)
        keep = [a for _, _, a in ranked[:k]]
        if cost is not None:  # the front's members stay, then the rest of the top-k
            keep += [a for v, c, a in ranked[k:] if not any(dominates((w, d), (v, c)) for w, d, _ in ranked)]
        self.weights.keep_top([*keep, *(a for _, _, a in ranked if a not in keep)], len(keep))


def _default_fit() -> FitFn:
    """The module's ``fit``, read when an objective is built."""
    return fit
