"""The objective: a trial retried on another device type resumes from its checkpoint."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from optuna.trial import TrialState

from search.artifacts import CheckpointStore
from search.config import config_from_dict
from search.objective import Objective, TrialInterrupted
from search.study import RetryStale, make_storage, open_study
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
    with caplog.at_level(logging.WARNING, logger="search.train"):
        study.optimize(Objective(cfg, torch.device("cpu"), None), n_trials=1)
    retry = study.trials[-1]
    assert retry.state == TrialState.COMPLETE, retry.user_attrs.get("fail_reason")
    assert retry.user_attrs["resumed_from_trial"] == first.number
    assert retry.user_attrs["resumed_from_epoch"] == 1 and retry.user_attrs["epochs_run"] == 3
    assert "checkpoint written on cuda, resuming on cpu: data order re-seeded" in caplog.text
    assert not list(Path(cfg.checkpoints_dir).rglob("*.pt"))  # finished: its checkpoints are gone
