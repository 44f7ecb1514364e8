"""The study: the search (sampler, pruner, budgets, space), fine-tuning, confirm, and
:class:`StudyConfig`, the root every field hangs from."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, ValidationInfo, model_validator
from pydantic.dataclasses import dataclass

from search.config._checks import check_space_mixes, check_study_name, mask_url
from search.config._errors import ALONE, ConfigError
from search.config._fields import BOOKKEEPING, SECTION, field
from search.config._sections import DataConfig, ModelConfig, TrainConfig
from search.config._space import DEFAULT_SPACE, Space, is_int_range
from search.config._types import (
    COSTS,
    MULTI_OBJECTIVE_PRUNERS,
    MULTI_OBJECTIVE_SAMPLERS,
    Bool,
    Float,
    Int,
    ObjectiveName,
    PathStr,
    PrunerName,
    SamplerName,
    Str,
)

MAX_SEED = 2**32 - 1  # numpy's seed range; samplers reduce seed + offset modulo 2**32


@dataclass(frozen=True, config=SECTION)
class SamplerConfig:
    """Optuna's sampler."""

    name: SamplerName = field(default="tpe", doc="the sampler", problem="unknown sampler")
    n_startup_trials: Int | None = field(
        default=None,
        doc="random trials first (nsga2: its population size, the first generation being random)",
        fix="use e.g. 10, or null for the sampler's default",
        ge=0,
    )
    startup: Literal["random", "sobol"] = field(
        default="random",
        doc="how TPE / CMA-ES / GP draw their start-up trials: at random, or as scrambled Sobol points "
        "(QMC, spread evenly over the space)",
        fix="use random or sobol",
        problem="must be random or sobol",
    )


@dataclass(frozen=True, config=SECTION)
class PrunerConfig:
    """Optuna's pruner (stops unpromising trials early)."""

    name: PrunerName = field(default="median", doc="the pruner", problem="unknown pruner")
    n_startup_trials: Int = field(default=5, doc="trials before pruning starts", fix="use e.g. 5", ge=0)
    n_warmup_steps: Int = field(default=2, doc="epochs before a trial can be pruned", fix="use e.g. 2", ge=0)
    percentile: Float = field(default=25.0, doc="percentile pruner's cut", fix="use e.g. 25", gt=0, lt=100)
    min_resource: Int = field(
        default=1, doc="successive halving / hyperband minimum epochs", fix="use 1", ge=1
    )
    reduction_factor: Int = field(
        default=3, doc="successive halving / hyperband reduction factor", fix="use 3", ge=2
    )


MAX_PERIOD_S = 10**9  # heartbeats and grace periods: Optuna's timers overflow far above this


@dataclass(frozen=True, config=SECTION)
class ConstraintsConfig:
    """Budgets the model of a trial must fit: a trial over one is recorded PRUNED before training.

    Not resumable: the trials already in a study were judged (and the samplers learnt) against
    the budgets it started with; a study under other budgets is another experiment.
    """

    max_params: Int | None = field(
        default=None,
        doc="most trainable parameters a trial's model may have (null: no limit)",
        fix="use e.g. 1000000, or null for no limit",
        ge=1,
    )
    max_latency_ms: Float | None = field(
        default=None,
        doc="most milliseconds of a batch-1 forward pass on the trial's device, median after warm-up "
        "(null: no limit, not measured)",
        fix="use e.g. 5.0 (milliseconds), or null for no limit",
        gt=0,
        problem="must be positive",
    )

    @property
    def enabled(self) -> bool:
        """True when at least one budget is set."""
        return self.max_params is not None or self.max_latency_ms is not None


@dataclass(frozen=True, config=SECTION)
class SearchConfig:
    """The search: how many trials, the sampler, the pruner, the space and the budgets."""

    n_trials: Int = field(
        default=20,
        doc="total finished trials over all runs and workers",
        fix="use e.g. 20",
        ge=1,
        resumable=True,
    )
    timeout_s: Float | None = field(
        default=None,
        doc="stop starting trials after this many seconds",
        fix="use null for no limit",
        gt=0,
        problem="must be positive",
        resumable=True,
    )
    sampler: SamplerConfig = field(default_factory=SamplerConfig, doc="the sampler", resumable=True)
    pruner: PrunerConfig = field(default_factory=PrunerConfig, doc="the pruner", resumable=True)
    space: Space = field(
        default_factory=lambda: DEFAULT_SPACE,
        doc="searched parameters: a number (fixed), {choices: [...]}, or {low, high, log, step}",
    )
    enqueue_default: Bool = field(
        default=True,
        doc="a new study's trial 0 is the space's log-midpoint (each of c1/c2/l1/lr/batch_size at its "
        "geometric middle, snapped to its choices or step; lr 1e-4..1e-2 gives 1e-3); not with the grid "
        "sampler or a --warm-start. On by default: it reached the hand grid's best in 0.12-0.13x the grid's "
        "epochs on every benchmark dataset and seed (docs/BENCHMARKS.md)",
        fix="write true or false",
        resumable=True,
    )
    keep_top_k: Int = field(
        default=3, doc="weights kept for the best k trials", fix="use e.g. 3", ge=0, resumable=True
    )
    max_failures: Int | None = field(
        default=None,
        doc="failed trials after which a run stops",
        fix="use e.g. 5, or null (a run stops only after as many failures as search.n_trials)",
        ge=1,
        resumable=True,
    )
    heartbeat_interval_s: Int = field(
        default=20, doc="a running trial's worker writes a heartbeat this often", fix="use e.g. 20", ge=1
    )
    grace_period_s: Int = field(
        default=60, doc="no heartbeat for this long: the trial is stale and retried", fix="use e.g. 60", ge=1
    )
    max_retry: Int = field(
        default=3, doc="how often one trial is re-queued after a killed worker", fix="use e.g. 3", ge=0
    )
    constraints: ConstraintsConfig = field(
        default_factory=ConstraintsConfig,
        doc="budgets (max_params, max_latency_ms): the best model that fits",
    )
    objectives: tuple[ObjectiveName, ...] = field(
        default=("val_accuracy",),
        doc="[val_accuracy] (one objective), or [val_accuracy, COST] with COST one of "
        f"{', '.join(COSTS)}: a two-objective (Pareto) study maximising accuracy and minimising the "
        "built net's cost (docs/pareto.md)",
        fix=f"use [val_accuracy], or [val_accuracy, COST] with COST one of {', '.join(COSTS)}",
        problem="unknown objective",
    )

    @property
    def cost(self) -> str | None:
        """The cost objective of a two-objective study (None: accuracy only)."""
        return self.objectives[1] if len(self.objectives) == 2 else None

    @model_validator(mode="after")
    def _consistent(self) -> SearchConfig:
        for key in ("heartbeat_interval_s", "grace_period_s"):  # Optuna's timers take no more
            if getattr(self, key) > MAX_PERIOD_S:
                raise ConfigError(
                    key, getattr(self, key), f"must be at most {MAX_PERIOD_S} (about 31 years)", "use e.g. 60"
                )
        if self.grace_period_s <= self.heartbeat_interval_s:
            raise ConfigError(
                "grace_period_s",
                self.grace_period_s,
                f"must exceed search.heartbeat_interval_s ({self.heartbeat_interval_s})",
                f"use e.g. {3 * self.heartbeat_interval_s}",
            )
        self._check_objectives()
        if self.sampler.name == "grid":
            for name, spec in self.space.items():
                if not (
                    spec.fixed or spec.choices is not None or is_int_range(spec) or spec.step is not None
                ):
                    raise ConfigError(
                        f"space.{name}",
                        spec.as_yaml(),
                        "the grid sampler needs a finite set of values",
                        "give choices, a fixed value, or a step",
                    )
        return self

    def _check_objectives(self) -> None:
        """[val_accuracy] or [val_accuracy, COST]; a sampler and pruner that handle two objectives."""
        fix = f"use [val_accuracy], or [val_accuracy, COST] with COST one of {', '.join(COSTS)}"
        objectives = list(self.objectives)
        if not objectives or objectives[0] != "val_accuracy" or len(objectives) > 2:
            raise ConfigError("objectives", objectives, "must be val_accuracy, then at most one cost", fix)
        if len(objectives) == 2 and objectives[1] not in COSTS:
            raise ConfigError("objectives", objectives, "the second objective must be a cost", fix)
        population = self.sampler.n_startup_trials
        if self.sampler.name == "nsga2" and population is not None and population < 2:
            raise ConfigError(
                "sampler.n_startup_trials",
                population,
                "nsga2's population (its n_startup_trials) must hold at least 2 trials",
                "use e.g. 8, or null for NSGA-II's default (50)",
            )
        if self.cost is None:
            return
        if self.sampler.name not in MULTI_OBJECTIVE_SAMPLERS:
            raise ConfigError(
                "sampler.name",
                self.sampler.name,
                "this sampler optimises one objective only, and search.objectives has two",
                f"use one of {', '.join(MULTI_OBJECTIVE_SAMPLERS)}, or search.objectives [val_accuracy]",
            )
        if self.pruner.name not in MULTI_OBJECTIVE_PRUNERS:
            raise ConfigError(
                "pruner.name",
                self.pruner.name,
                "this pruner has no rule for two objectives (docs/pareto.md)",
                f"use one of {', '.join(MULTI_OBJECTIVE_PRUNERS)}, or search.objectives [val_accuracy]",
            )


@dataclass(frozen=True, config=SECTION)
class FinetuneConfig:
    """``search finetune``: continue the best trial from its weights, then test once."""

    epochs: Int = field(default=40, doc="maximum fine-tuning epochs", fix="use e.g. 40", ge=1)
    lr_scale: Float = field(
        default=0.8, doc="lr = the best trial's lr x this", fix="use e.g. 0.8", gt=0, le=10
    )
    patience: Int = field(default=6, doc="early-stopping patience (epochs)", fix="use e.g. 6", ge=1)


def _name_in(value: Any) -> Any:
    if isinstance(value, str):
        check_study_name(value, "")
    return value


def _storage_in(value: Any) -> Any:
    if isinstance(value, str) and "://" not in value:  # the rest: search.store.urls.check_storage
        raise ConfigError(
            "",
            mask_url(value),
            "not a database URL but a plain file path" if value else "not a database URL",
            f"use sqlite:///{mask_url(value) or 'storage/studies.db'} (SQLite: sqlite:/// then the path) "
            "or postgresql+psycopg://user:pw@host/db",
        )
    return value


@dataclass(frozen=True, config=SECTION)
class ConfirmConfig:
    """``search confirm``: re-train the top trials with new seeds (or on folds of train+val)."""

    top: Int = field(
        default=3, doc="how many of the best COMPLETE trials to re-train", fix="use e.g. 3", ge=1
    )
    seeds: Int = field(default=3, doc="new seeds per trial (ignored with folds)", fix="use e.g. 3", ge=1)
    folds: Int = field(
        default=0,
        doc="0: new seeds on the study's own split; F >= 2: F-fold cross-validation of train+val",
        fix="use 0, or e.g. 5 for 5-fold cross-validation",
        ge=0,
    )

    @model_validator(mode="after")
    def _not_one_fold(self) -> ConfirmConfig:
        if self.folds == 1:
            raise ConfigError(
                "folds",
                self.folds,
                "must be 0 (new seeds on the study's split) or at least 2",
                "use 0, or e.g. 5 for 5-fold cross-validation",
            )
        return self


@dataclass(frozen=True, config=SECTION)
class StudyConfig:
    """A study: its name, seed, storage, data, model, training, search and fine-tuning."""

    name: Annotated[Str, BeforeValidator(_name_in)] = field(
        default="study", doc="study name (default: the config file's name); names folders", resumable=True
    )
    seed: Int = field(
        default=0,
        doc="seed of splits, sampler and training",
        fix=f"use an integer in [0, {MAX_SEED}]",
        ge=0,
        le=MAX_SEED,
        searchable="it fixes the splits and the sampler (each trial trains with seed + its number)",
    )
    storage: Annotated[Str, BeforeValidator(_storage_in)] = field(
        default="sqlite:///storage/studies.db",
        doc="Optuna storage URL",
        fix="use sqlite:///storage/studies.db",
        resumable=True,
    )
    artifacts_dir: PathStr = field(
        default="storage/artifacts", doc="the best trials' weights", fix="give a folder", resumable=True
    )
    checkpoints_dir: PathStr = field(
        default="storage/checkpoints",
        doc="per-epoch checkpoints of running trials (resume)",
        fix="give a folder",
        searchable=BOOKKEEPING,
    )
    tensorboard_dir: PathStr = field(
        default="storage/tensorboard",
        doc="TensorBoard runs, <study>/trial-<n>/, when train.tensorboard is on",
        fix="give a folder",
        resumable=True,
    )
    data: DataConfig = field(default_factory=DataConfig, doc="the data")
    model: ModelConfig = field(default_factory=ModelConfig, doc="the model")
    train: TrainConfig = field(default_factory=TrainConfig, doc="training")
    search: SearchConfig = field(
        default_factory=SearchConfig, doc="the search", searchable="it configures the search itself"
    )
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig, doc="fine-tuning", resumable=True)
    confirm: ConfirmConfig = field(
        default_factory=ConfirmConfig, doc="`search confirm` defaults", resumable=True
    )

    @model_validator(mode="after")
    def _space_keeps_train_valid(self, info: ValidationInfo) -> StudyConfig:
        if not (info.context and info.context.get(ALONE)):  # a searched value checked alone
            check_space_mixes(self)
        return self
