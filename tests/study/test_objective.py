"""The objective: a trial retried on another device type resumes from its checkpoint; budgets."""

from __future__ import annotations

import logging
from pathlib import Path

import optuna
import pytest
import torch
from optuna.trial import TrialState

from search.config import config_from_dict
from search.store.artifacts import CheckpointStore
from search.study.objective import Objective, TrialInterrupted
from search.study.run import RunOptions, run_study
from search.study.study import RetryStale, make_storage, open_study
from tests.conftest import tiny_config


def test_a_trial_checkpointed_on_cuda_is_resumed_by_a_cpu_worker(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    raw = tiny_config(
        storage=f"sqlite:///{tmp_path}/s.db",
        checkpoints_dir=str(tmp_path / "ckpt"),
        train={"epochs": 3, "patience": 3, "checkpoint_every_s": 0},
    )
    raw["data"] = {**raw["data"], "cache_dir": str(tmp_path / "cache")}
    cfg = config_from_dict(raw)
    study = open_study(cfg, make_storage(cfg.storage))
    # the first attempt is stopped after epoch 1 (as by Ctrl-C): its checkpoint stays
    with pytest.raises(TrialInterrupted):
        study.optimize(Objective(cfg, torch.device("cpu"), None, should_stop=lambda: True), n_trials=1)
    first = study.trials[0]
    store = CheckpointStore.for_study(cfg.checkpoints_dir, study)
    state = store.load(first.number)
    assert state is not None and state["epoch"] == 1
    # ... as if it had run on a GPU: a CUDA generator state and fused Adam
    state["device"], state["rng"] = "cuda", torch.zeros(16, dtype=torch.uint8)
    for group in state["optimizer"]["param_groups"]:
        group["fused"] = True
    store.save(first.number, state)

    assert RetryStale(max_retry=3).retry(study, first)
    with caplog.at_level(logging.WARNING, logger="search.engine.train"):
        study.optimize(Objective(cfg, torch.device("cpu"), None), n_trials=1)
    retry = study.trials[-1]
    assert retry.state == TrialState.COMPLETE, retry.user_attrs.get("fail_reason")
    assert retry.user_attrs["resumed_from_trial"] == first.number
    assert retry.user_attrs["resumed_from_epoch"] == 1 and retry.user_attrs["epochs_run"] == 3
    assert "checkpoint written on cuda, resuming on cpu: data order re-seeded" in caplog.text
    assert not list(Path(cfg.checkpoints_dir).rglob("*.pt"))  # finished: its checkpoints are gone


# --------------------------------------------------------------------------- budgets


def _budget_study(tmp_path: Path, **search: object) -> tuple[optuna.Study, Objective]:
    raw = tiny_config(storage=f"sqlite:///{tmp_path}/s.db", train={"epochs": 1, "patience": 1})
    raw["search"] = {**raw["search"], **search}
    raw["data"] = {**raw["data"], "cache_dir": str(tmp_path / "cache")}
    cfg = config_from_dict(raw)
    return open_study(cfg, make_storage(cfg.storage)), Objective(cfg, torch.device("cpu"), None)


def test_a_trial_over_max_params_is_pruned_before_training_with_the_reason(tmp_path: Path) -> None:
    # c1=4: 3558 parameters, c1=32: 14954 (digits 8x8, c2=8, l1=16); the grid runs each once
    space = {"c1": {"choices": [4, 32]}, "c2": 8, "l1": 16, "lr": 0.005, "batch_size": 64}
    study, objective = _budget_study(
        tmp_path,
        n_trials=2,
        sampler={"name": "grid"},
        space=space,
        constraints={"max_params": 10_000, "max_latency_ms": 1.0e6},
    )
    study.optimize(objective, n_trials=2)
    by_c1 = {t.params["c1"]: t for t in study.trials}
    over, fits = by_c1[32], by_c1[4]

    assert over.state == TrialState.PRUNED
    assert over.user_attrs["n_params"] == 14954
    assert over.user_attrs["constraint"] == "n_params 14954 > max_params 10000"
    for trained in ("epochs_run", "train_seconds", "best_epoch", "stop_reason", "latency_ms"):
        assert trained not in over.user_attrs  # no training, and no latency for a model over budget
    assert over.intermediate_values == {}
    assert over.constraints == pytest.approx({"max_params": 14954 / 10_000 - 1})

    assert fits.state == TrialState.COMPLETE and fits.user_attrs["epochs_run"] == 1
    assert "constraint" not in fits.user_attrs
    latency = fits.user_attrs["latency_ms"]
    assert latency > 0
    assert fits.constraints == pytest.approx(
        {"max_params": 3558 / 10_000 - 1, "max_latency_ms": latency / 1.0e6 - 1}
    )
    assert study.best_trial.number == fits.number


def test_without_budgets_no_constraint_is_stored_and_no_latency_measured(tmp_path: Path) -> None:
    study, objective = _budget_study(tmp_path, n_trials=1)
    study.optimize(objective, n_trials=1)
    (trial,) = study.trials
    assert trial.state == TrialState.COMPLETE
    assert trial.constraints == {} and "latency_ms" not in trial.user_attrs
    assert trial.user_attrs["n_params"] > 0


def test_the_gp_sampler_reads_the_constraints_and_is_kept_off_points_over_max_params(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # GPSampler reads every COMPLETE trial's constraint values (the same keys on all of them, or
    # it raises); it never sees an over-budget (PRUNED) trial, so after 2 random trials it keeps
    # proposing c1=27 (over budget) unless the run replaces such a proposal
    # (search.study.sampling.TrialSeeded)
    raw = tiny_config(
        storage=f"sqlite:///{tmp_path}/s.db",
        checkpoints_dir=str(tmp_path / "ckpt"),
        artifacts_dir=str(tmp_path / "art"),
        train={"epochs": 1, "patience": 1},
    )
    raw["data"] = {**raw["data"], "cache_dir": str(tmp_path / "cache")}
    raw["search"] = {
        **raw["search"],
        "n_trials": 5,
        "sampler": {"name": "gp", "n_startup_trials": 2},
        "space": {"c1": {"low": 4, "high": 32}, "c2": 8, "l1": 16, "lr": 0.005, "batch_size": 64},
        "constraints": {"max_params": 8000, "max_latency_ms": 1.0e6},
    }
    cfg = config_from_dict(raw)
    with caplog.at_level(logging.DEBUG, logger="search.study.sampling"):
        result = run_study(cfg, RunOptions(device="cpu"))
    assert result.finished == 5
    assert "the sampler proposed params over max_params; sampled at random" in caplog.text
    study = optuna.load_study(study_name=cfg.name, storage=cfg.storage)
    assert {t.state for t in study.trials} <= {TrialState.COMPLETE, TrialState.PRUNED}
    for t in study.trials:
        if t.state == TrialState.COMPLETE:
            assert set(t.constraints) == {"max_params", "max_latency_ms"}
            assert t.user_attrs["n_params"] <= 8000 and all(v <= 0 for v in t.constraints.values())
        else:
            assert t.user_attrs["n_params"] > 8000 and t.constraints["max_params"] > 0
    assert result.best is not None and result.best.user_attrs["n_params"] <= 8000


@pytest.mark.parametrize("name", ["median", "percentile"])
def test_prune_gate_skips_only_calls_the_pruner_answers_no(name: str) -> None:
    """Where PruneGate skips ``should_prune``, the pruner itself would not prune (any step, any count)."""
    import optuna
    from optuna.distributions import FloatDistribution

    from search.config import PrunerConfig
    from search.study.pruning import PruneGate
    from search.study.study import make_pruner

    pruning = {"name": name, "n_startup_trials": 2, "n_warmup_steps": 2}
    cfg = config_from_dict(tiny_config(search={**tiny_config()["search"], "pruner": pruning}))
    pc, pruner = cfg.search.pruner, make_pruner(cfg)
    study = optuna.create_study(direction="maximize", pruner=pruner)
    gate, skipped, asked = PruneGate(pc), 0, 0
    for n_complete in range(4):
        curve = {step: 0.0 for step in range(5)}  # a hopeless trial: pruned wherever pruning may act
        for step in curve:
            frozen = optuna.trial.create_trial(
                state=TrialState.RUNNING,
                params={"x": 0.5},
                intermediate_values=dict(list(curve.items())[: step + 1]),
                distributions={"x": FloatDistribution(0, 1)},
            )
            if gate.worth_asking(study, step):
                asked += 1
            else:
                skipped += 1
                assert not pruner.prune(study, frozen), (n_complete, step)
        study.add_trial(
            optuna.trial.create_trial(
                value=1.0,
                params={"x": 0.5},
                distributions={"x": FloatDistribution(0, 1)},
                intermediate_values={s: 1.0 for s in range(5)},
            )
        )
    assert skipped and asked and not PruneGate(PrunerConfig(name="none")).worth_asking(study, 9)
