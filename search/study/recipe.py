"""The one recipe that rebuilds a trial: config → model → input transform → weights.

A trial is three things: its study's config with its dotted params applied (``trial_config``),
its params (the five short names and the dotted ones, by Optuna name) and the facts of the data
it trained on (input shape, classes, normalisation: the study's user attr ``data``). From those,
:class:`TrialRecipe` builds its net (``build_model``: any ``model.arch`` and ``model.block``) and
its transforms. Everyone who builds a trial's net goes through it: the objective (a new trial),
``confirm`` (the same trial, new seeds or folds), ``finetune`` and ``export`` (a finished trial,
with :func:`load_trial`: its recipe and its best-epoch weights from the artifact store), and
``predict`` and the app (an export folder: :meth:`TrialRecipe.of_net`). A trial or export that
cannot be rebuilt raises :class:`RecipeError`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.trial import FrozenTrial, TrialState
from torch import nn

from search.config import (
    DEFAULT_SPACE,
    ConfigError,
    ModelConfig,
    ParamSpec,
    SearchConfig,
    StudyConfig,
    trial_config,
)
from search.engine.arch import build_model
from search.engine.augment import BatchTransform, channel_stats
from search.engine.data import Splits
from search.engine.device import PRECISIONS, Precision
from search.engine.model import Widths
from search.engine.weights import InitCounts, load_matching, read_init_state
from search.errors import InputError
from search.store.artifacts import UnreadableFile, WeightStore
from search.store.records import DATA_ATTR, DEVICE_ATTR, PRECISION_ATTR, WEIGHTS_ATTR
from search.study.budgets import best_trial
from search.study.space import ParamValue, params_of
from search.study.stored import study_config


class RecipeError(InputError):
    """A trial or export folder whose model cannot be rebuilt: says which one and what to do."""


# --------------------------------------------------------------------------- the data a trial saw


@dataclass(frozen=True)
class DataFacts:
    """What a study records about its data (user attr ``data``): enough to rebuild a net's input."""

    in_shape: tuple[int, int, int]  # (channels, height, width)
    classes: tuple[str, ...]
    mean: tuple[float, ...]  # per channel, of pixels / 255
    std: tuple[float, ...]
    n_train: int | None = None
    n_val: int | None = None

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    def to_attr(self) -> dict[str, Any]:
        """The user attr's JSON form (lists, as the study has always stored it)."""
        return {
            "in_shape": list(self.in_shape),
            "classes": list(self.classes),
            "mean": list(self.mean),
            "std": list(self.std),
            "n_train": self.n_train,
            "n_val": self.n_val,
        }

    @classmethod
    def of_attr(cls, raw: Mapping[str, Any]) -> DataFacts:
        """The facts from their user attr form (KeyError, TypeError or ValueError when malformed)."""
        c, h, w = (int(v) for v in raw["in_shape"])
        n_train, n_val = raw.get("n_train"), raw.get("n_val")
        return cls(
            (c, h, w),
            tuple(str(v) for v in raw["classes"]),
            tuple(float(v) for v in raw["mean"]),
            tuple(float(v) for v in raw["std"]),
            None if n_train is None else int(n_train),
            None if n_val is None else int(n_val),
        )

    @classmethod
    def of_study(cls, study: optuna.Study) -> DataFacts:
        """The facts ``search run`` stored on ``study`` (RecipeError when there are none)."""
        raw = study.user_attrs.get(DATA_ATTR)
        if isinstance(raw, Mapping):
            try:
                return cls.of_attr(raw)
            except (KeyError, TypeError, ValueError):
                pass
        raise RecipeError(
            f"study {study.study_name!r} has no stored data facts (user_attr {DATA_ATTR!r}). "
            "Fix: create the study with `search run`"
        )


def normalisation(cfg: StudyConfig, splits: Splits) -> tuple[list[float], list[float]]:
    """The configured mean/std, or the training split's own per-channel statistics."""
    channels = splits.in_shape[0]
    if cfg.data.normalize is not None:
        mean, std = list(cfg.data.normalize.mean), list(cfg.data.normalize.std)
        if len(mean) != channels:
            raise ConfigError(
                "data.normalize",
                {"mean": mean, "std": std},
                f"{len(mean)} values given but the images have {channels} channel(s)",
                f"give {channels} value(s) for mean and std",
            )
        return mean, std
    return channel_stats(splits.train.base, index=splits.train.index)  # no copy of a mapped cache


def data_facts(cfg: StudyConfig, splits: Splits) -> DataFacts:
    """The facts of freshly loaded ``splits`` (normalisation: configured, else the train split's)."""
    mean, std = normalisation(cfg, splits)
    return DataFacts(
        splits.in_shape, tuple(splits.classes), tuple(mean), tuple(std), len(splits.train), len(splits.val)
    )


# --------------------------------------------------------------------------- the recipe


@dataclass(frozen=True)
class TrialRecipe:
    """A trial's config, params and data facts; builds its net and its transforms."""

    cfg: StudyConfig  # the trial's config: the study's with the trial's dotted params applied
    params: Mapping[str, ParamValue]  # every parameter by Optuna name (c1, c2, l1, lr, batch_size, dotted)
    data: DataFacts

    @classmethod
    def of(cls, study_cfg: StudyConfig, params: Mapping[str, Any], data: DataFacts) -> TrialRecipe:
        """The recipe of a trial with ``params`` in a study of config ``study_cfg``."""
        return cls(trial_config(study_cfg, params), dict(params), data)

    @classmethod
    def of_net(cls, model: ModelConfig, widths: Sequence[int], data: DataFacts) -> TrialRecipe:
        """The recipe of a net known only by its model options, widths and data (an export folder):
        the default config with that model section and those widths fixed; nothing to train with
        but ``widths``."""
        fixed = dict(zip(("c1", "c2", "l1"), (int(v) for v in widths), strict=True))
        space = {**DEFAULT_SPACE, **{k: ParamSpec(value=v) for k, v in fixed.items()}}
        search = dataclasses.replace(SearchConfig(), space=space)
        return cls(dataclasses.replace(StudyConfig(), model=model, search=search), fixed, data)

    @property
    def widths(self) -> Widths:
        return Widths(int(self.params["c1"]), int(self.params["c2"]), int(self.params["l1"]))

    @property
    def lr(self) -> float:
        return float(self.params["lr"])

    @property
    def batch_size(self) -> int:
        return int(self.params["batch_size"])

    def model(self) -> nn.Module:
        """A fresh net of the trial's family (ConfigError, naming the option, when the input is too
        small for it)."""
        c1, c2, l1 = self.widths
        return build_model(self.cfg.model, c1, c2, l1, self.data.in_shape, self.data.n_classes)

    def initial_model(
        self, state: Mapping[str, torch.Tensor] | None = None
    ) -> tuple[nn.Module, InitCounts | None]:
        """A fresh net as a trial starts training it: with ``model.init_from``, the file's matching
        tensors loaded (``state``: the file already read) and how many; else ``(model(), None)``.
        A sampled family the file does not fit at all (checked before the study: it fits some
        net of the space) starts fresh, ``loaded`` 0.

        Raises:
            InitFromError: the file cannot be read (when ``state`` is not given).
        """
        model = self.model()
        path = self.cfg.model.init_from
        if path is None:
            return model, None
        return model, load_matching(model, state if state is not None else read_init_state(path))

    def transform(self) -> BatchTransform:
        """The training transform: the trial's augmentation and memory format, the data's normalisation."""
        return BatchTransform(
            self.data.mean, self.data.std, self.cfg.data.augment, channels_last=self.cfg.train.channels_last
        )

    def input_transform(self) -> BatchTransform:
        """What a prediction feeds the net: normalisation only (``transform(x, train=False)``)."""
        return BatchTransform(self.data.mean, self.data.std)

    def with_data(self, data: DataFacts) -> TrialRecipe:
        """The same trial on other data facts (confirm's folds: each fold's own normalisation)."""
        return dataclasses.replace(self, data=data)


def trained_precision(trial: FrozenTrial, cfg: StudyConfig) -> Precision:
    """What ``trial`` trained in: its user attr ``precision``; a trial from before it was recorded
    trained in bf16 on CUDA with ``train.amp`` (then the only mixed precision), else in fp32."""
    recorded = trial.user_attrs.get(PRECISION_ATTR)
    for known in PRECISIONS:
        if recorded == known:
            return known
    on_cuda = str(trial.user_attrs.get(DEVICE_ATTR, "")).startswith("cuda")
    return "bf16" if cfg.train.amp and on_cuda else "fp32"


def with_trained_precision(cfg: StudyConfig, trial: FrozenTrial) -> StudyConfig:
    """``cfg`` with ``train.precision`` pinned to what ``trial`` trained in (not ``auto``), so
    whoever rebuilds the trial (confirm, finetune, export, predict) computes as it did."""
    train = dataclasses.replace(cfg.train, precision=trained_precision(trial, cfg))
    return dataclasses.replace(cfg, train=train)


def rebuild(study: optuna.Study, trial: FrozenTrial, cfg: StudyConfig | None = None) -> TrialRecipe:
    """The recipe of finished ``trial``: the study's stored config (or ``cfg``) with
    ``train.precision`` pinned to what the trial trained in (so its evaluation, confirm, finetune,
    export and predict compute as it did), the trial's params (the space's fixed values added)
    and the study's data facts."""
    study_cfg = cfg if cfg is not None else study_config(study)
    return TrialRecipe.of(
        with_trained_precision(study_cfg, trial),
        params_of(trial.params, study_cfg.search.space),
        DataFacts.of_study(study),
    )


# --------------------------------------------------------------------------- a finished trial's weights


def pick_trial(study: optuna.Study, number: int | None) -> FrozenTrial:
    """Trial ``number`` (it must be COMPLETE), or the study's best trial when ``number`` is None."""
    if number is None:
        best = best_trial(study)
        if best is None:
            raise RecipeError(
                f"study {study.study_name!r} has no completed trial. Fix: run more trials first"
            )
        return best
    done = {t.number: t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))}
    if number not in done:
        raise RecipeError(
            f"trial {number} of study {study.study_name!r} is not a completed trial "
            f"(completed: {', '.join(map(str, sorted(done))) or 'none'}). Fix: pick one of those with --trial"
        )
    return done[number]


def trials_with_weights(study: optuna.Study, store: WeightStore) -> list[int]:
    """Numbers of the trials whose weights file is still in the artifact store."""
    return sorted(
        t.number
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if WEIGHTS_ATTR in t.user_attrs and store.exists(t.user_attrs[WEIGHTS_ATTR])
    )


def trial_weights(study: optuna.Study, trial: FrozenTrial, cfg: StudyConfig) -> dict[str, torch.Tensor]:
    """The trial's best-epoch state_dict from the artifact store (RecipeError when it is gone)."""
    store = WeightStore(cfg.artifacts_dir)
    artifact_id = trial.user_attrs.get(WEIGHTS_ATTR)
    if artifact_id is None or not store.exists(artifact_id):
        kept = trials_with_weights(study, store)
        why = (
            "never ranked in the top-k, so its weights were not saved"
            if artifact_id is None
            else f"was beaten out of the top-{cfg.search.keep_top_k} and its weights were deleted"
        )
        raise RecipeError(
            f"trial {trial.number} of study {study.study_name!r} has no weights: it {why} "
            f"(artifact dir {cfg.artifacts_dir}). Trials that still have weights: "
            f"{', '.join(map(str, kept)) or 'none'}. Fix: pick one of those with --trial"
        )
    try:
        return store.load(artifact_id)
    except UnreadableFile as exc:
        raise RecipeError(
            f"the weights of trial {trial.number} of study {study.study_name!r} cannot be used: {exc}. "
            f"Fix: export another trial with --trial (trials with weights: "
            f"{', '.join(map(str, trials_with_weights(study, store))) or 'none'}), or re-run it"
        ) from exc


def load_weights_into(model: nn.Module, state: Any, path: Path | str) -> None:
    """``model.load_state_dict(state)``; RecipeError naming ``path`` when they do not fit."""
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise RecipeError(f"{path} is not a state_dict of tensors. Fix: export the study again")
    try:
        model.load_state_dict(state)
    except (RuntimeError, KeyError, TypeError, ValueError) as exc:
        first = str(exc).splitlines()[0][:300]
        raise RecipeError(
            f"the weights in {path} do not fit the recorded model ({first}). Fix: export the study again"
        ) from exc


@dataclass(frozen=True)
class RebuiltTrial:
    """A finished trial rebuilt: its recipe and its net holding its best-epoch weights."""

    trial: FrozenTrial
    recipe: TrialRecipe
    model: nn.Module  # on the CPU, in training mode, as built
    weights_path: Path  # where the weights came from (the artifact store's file)


def load_trial(
    study: optuna.Study, number: int | None = None, cfg: StudyConfig | None = None
) -> RebuiltTrial:
    """Trial ``number`` (default: the best) rebuilt with its best-epoch weights.

    Raises:
        RecipeError: the trial is not complete, its weights are gone or unreadable, or the study
            has no stored data facts.
    """
    study_cfg = cfg if cfg is not None else study_config(study)
    trial = pick_trial(study, number)
    state = trial_weights(study, trial, study_cfg)
    recipe = rebuild(study, trial, study_cfg)
    model = recipe.model()
    path = WeightStore(study_cfg.artifacts_dir).path(trial.user_attrs[WEIGHTS_ATTR])
    load_weights_into(model, state, path)
    return RebuiltTrial(trial, recipe, model, path)
