"""The precision a trial trained in: refused contradictions through the CLI, the user attr of
every trial, the recipe that pins it for whoever rebuilds the trial, and the export's model card."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
from optuna.trial import TrialState, create_trial

from search.config import config_from_dict, to_dict
from search.engine.device import native_bf16_cpu
from search.store.records import DEVICE_ATTR, PRECISION_ATTR
from search.study.recipe import rebuild, trained_precision
from search.study.resume import config_diff
from tests.conftest import run_cli, tiny_config, write_config
from tests.studies import build_study, db_url, study_config


def test_amp_false_with_bf16_exits_2_naming_both_and_writes_nothing(tmp_path: Path) -> None:
    cfg = write_config(
        tmp_path / "c.yaml", tiny_config(train={"epochs": 1, "amp": False, "precision": "bf16"})
    )
    for command in ("validate", "run"):
        proc = run_cli(command, str(cfg), cwd=tmp_path, check=2)
        assert "train.amp: false" in proc.stderr and "train.precision: bf16" in proc.stderr
        assert "Fix:" in proc.stderr
    assert not (tmp_path / "storage").exists()


def test_each_trial_records_its_precision_and_the_export_card_shows_it(tmp_path: Path) -> None:
    space = {**tiny_config()["search"]["space"], "c1": {"choices": [4]}}
    raw = study_config(
        tmp_path,
        train={"epochs": 1, "patience": 1, "precision": "bf16"},
        search={"n_trials": 2, "space": space},
    )
    study = build_study(raw)
    trials = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(trials) == 2 and {t.user_attrs[PRECISION_ATTR] for t in trials} == {"bf16"}
    # whoever rebuilds the trial (confirm, finetune, export, predict) computes in bf16
    assert rebuild(study, study.best_trial).cfg.train.precision == "bf16"

    run_cli("export", "tiny", "--storage", db_url(tmp_path), cwd=tmp_path, check=0)
    folder = tmp_path / "storage" / "exports" / "tiny" / f"trial-{study.best_trial.number}"
    config = json.loads((folder / "config.json").read_text())
    assert config["precision"] == "bf16" and config["config"]["train"]["precision"] == "bf16"
    card = (folder / "README.md").read_text()
    assert "| precision | bf16 (bf16 autocast: trained, validated and predicted in it) |" in card


def test_amp_false_trains_in_fp32_and_auto_follows_the_machine(tmp_path: Path) -> None:
    auto = "bf16" if native_bf16_cpu() else "fp32"  # this CPU's native bf16 units (amx, avx512_bf16)
    for name, train, expected in (("off", {"amp": False}, "fp32"), ("auto", {}, auto)):
        raw = study_config(
            tmp_path, name=name, train={"epochs": 1, "patience": 1, **train}, search={"n_trials": 1}
        )
        study = build_study(raw)
        assert [t.user_attrs[PRECISION_ATTR] for t in study.trials] == [expected]


def test_a_trial_from_before_the_attr_trained_in_bf16_only_on_cuda_with_amp() -> None:
    cfg = config_from_dict({})
    off = config_from_dict({"train": {"amp": False}})

    def old(device: str) -> optuna.trial.FrozenTrial:
        return create_trial(value=0.5, user_attrs={DEVICE_ATTR: device})

    assert trained_precision(old("cpu"), cfg) == "fp32"
    assert trained_precision(old("cuda:0 (GPU 2)"), cfg) == "bf16"
    assert trained_precision(old("cuda:0"), off) == "fp32"
    assert trained_precision(create_trial(value=0.5, user_attrs={PRECISION_ATTR: "bf16"}), off) == "bf16"


def test_a_study_from_before_the_field_resumes_with_precision_pinned_but_amp_may_not_change() -> None:
    stored = to_dict(config_from_dict({}))
    del stored["train"]["precision"]  # a study created before train.precision existed
    assert config_diff(stored, to_dict(config_from_dict({"train": {"precision": "fp32"}}))) == []
    assert config_diff(stored, to_dict(config_from_dict({"train": {"precision": "bf16"}}))) == []
    assert config_diff(stored, to_dict(config_from_dict({"train": {"amp": False}}))) == [
        "train.amp: stored true, now false"
    ]
