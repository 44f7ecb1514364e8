"""Every architecture family through the whole path: a study searching them (family and
parameter count recorded, budgets known before training), export, model card, predict, the app,
finetune and confirm."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import optuna
import pytest
from optuna.trial import TrialState
from PIL import Image

from search.cli import main
from search.engine.model import count_parameters
from search.results.export import load_export
from search.serve.app import load_predictor
from search.study.recipe import rebuild
from search.study.stored import study_config
from tests.studies import build_study, db_url
from tests.studies import study_config as raw_config

BLOCKS = ["plain", "residual", "depthwise", "inception"]
SYNTHETIC = {"dataset": "synthetic", "synthetic": {"shape": [3, 16, 16], "n_classes": 3, "n_samples": 120}}


def _config(root: Path, name: str, space: dict[str, object], **search: object) -> dict[str, object]:
    raw = raw_config(root, name=name, data=SYNTHETIC, train={"epochs": 1, "patience": 1})
    raw["model"] = {"padding": 1, "batchnorm": True}
    raw["search"] = {
        "n_trials": 4,
        "sampler": {"name": "grid"},
        "pruner": {"name": "none"},
        "keep_top_k": 4,
        "space": {"c1": 8, "c2": 16, "l1": 16, "lr": 0.003, "batch_size": 32, **space},
        **search,
    }
    return raw


@pytest.fixture(scope="module")
def families(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, optuna.Study, optuna.Study]:
    """Two studies in one storage: the four blocks (grid), and convnet vs ResNet-18 (grid)."""
    root = tmp_path_factory.mktemp("families")
    blocks = build_study(_config(root, "blocks", {"model.block": {"choices": BLOCKS}}))
    archs = _config(root, "archs", {"model.arch": {"choices": ["convnet", "resnet18"]}}, n_trials=2)
    archs["search"]["space"] = {
        **archs["search"]["space"],
        "c1": {"choices": [8]},
    }  # searched, unused by resnet18
    return root, blocks, build_study(archs)


def _images(folder: Path, n: int = 2) -> list[Path]:
    rng = np.random.default_rng(0)
    folder.mkdir(exist_ok=True)
    paths = [folder / f"{i}.png" for i in range(n)]
    for path in paths:
        Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(path)
    return paths


def test_a_study_over_the_blocks_records_each_family_and_its_size(
    families: tuple[Path, optuna.Study, optuna.Study],
) -> None:
    _, study, _ = families
    trials = study.get_trials(states=(TrialState.COMPLETE,))
    assert sorted(t.params["model.block"] for t in trials) == sorted(BLOCKS)
    cfg = study_config(study)
    sizes = {}
    for t in trials:
        assert t.user_attrs["family"] == f"convnet/{t.params['model.block']}"
        model = rebuild(study, t, cfg).model()
        assert t.user_attrs["n_params"] == count_parameters(model)
        sizes[t.params["model.block"]] = t.user_attrs["n_params"]
    assert sizes["depthwise"] < sizes["plain"] < sizes["residual"]  # the 1x1 shortcuts add weights


def test_each_family_exports_predicts_and_serves(
    families: tuple[Path, optuna.Study, optuna.Study], capsys: pytest.CaptureFixture[str]
) -> None:
    root, blocks, archs = families
    images = _images(root / "images")
    for study in (blocks, archs):
        for t in study.get_trials(states=(TrialState.COMPLETE,)):
            out = root / "exports" / f"{study.study_name}-{t.number}"
            args = ["export", study.study_name, "--storage", db_url(root), "--trial", str(t.number)]
            assert main([*args, "--out", str(out)]) == 0
            config = json.loads((out / "config.json").read_text())
            card = (out / "README.md").read_text()
            assert f"| family | {t.user_attrs['family']} |" in card
            assert f"| parameters | {t.user_attrs['n_params']:,} |" in card
            model, _, _ = load_export(out)
            assert count_parameters(model) == t.user_attrs["n_params"]
            if t.user_attrs["family"] == "resnet18":
                assert config["model"]["arch"] == "resnet18"
                assert "ResNet-18 (torchvision), small-input stem" in card
            capsys.readouterr()
            assert main(["predict", str(out), *map(str, images)]) == 0
            assert len([line for line in capsys.readouterr().out.splitlines() if line.strip()]) >= 2
            predictor = load_predictor(out)
            assert t.user_attrs["family"].split("/")[0] in predictor.description().lower().replace(
                "resnet-18", "resnet18"
            )


def test_resnet18_trials_record_the_widths_they_ignore(
    families: tuple[Path, optuna.Study, optuna.Study],
) -> None:
    _, _, study = families
    by_arch = {t.params["model.arch"]: t for t in study.get_trials(states=(TrialState.COMPLETE,))}
    assert by_arch["resnet18"].user_attrs["family"] == "resnet18"
    assert by_arch["resnet18"].user_attrs["unused_params"] == ["c1"]
    assert "unused_params" not in by_arch["convnet"].user_attrs
    assert by_arch["resnet18"].user_attrs["n_params"] > 10 * by_arch["convnet"].user_attrs["n_params"]


@pytest.mark.parametrize("name", ["blocks", "archs"])
def test_finetune_and_confirm_rebuild_every_family(
    families: tuple[Path, optuna.Study, optuna.Study], name: str, workdir: Path
) -> None:
    root, *_ = families
    url = db_url(root)
    study = optuna.load_study(study_name=name, storage=url)
    for t in study.get_trials(states=(TrialState.COMPLETE,)):
        out = workdir / f"ft-{t.number}"
        args = ["finetune", name, "--storage", url, "--device", "cpu", "--trial", str(t.number)]
        assert main([*args, "--epochs", "1", "--out", str(out)]) == 0
        card = (out / "README.md").read_text()
        assert f"| family | {t.user_attrs['family']} |" in card and "## Fine-tuning" in card
        assert (out / "filters.png").is_file()  # the first conv's filters, whatever the family
    assert main(["confirm", name, "--storage", url, "--device", "cpu", "--top", "2", "--seeds", "1"]) == 0


def test_budgets_know_each_familys_size_before_training(tmp_path: Path) -> None:
    raw = _config(tmp_path, "budget", {"model.block": {"choices": BLOCKS}})
    # between depthwise's size and the plain net's: plain, residual (and inception?) are over
    sizes = {}
    for block in BLOCKS:
        one = _config(tmp_path, f"size-{block}", {"model.block": block}, n_trials=1)
        one["model"] = {**raw["model"], "block": block}
        sizes[block] = build_study(one).trials[0].user_attrs["n_params"]
    limit = (sizes["depthwise"] + sizes["plain"]) // 2
    raw["search"]["constraints"] = {"max_params": limit}
    study = build_study(raw)
    assert {t.state for t in study.trials} == {TrialState.PRUNED, TrialState.COMPLETE}
    for t in study.trials:
        block = t.params["model.block"]
        assert t.user_attrs["n_params"] == sizes[block]
        if sizes[block] > limit:
            assert t.state == TrialState.PRUNED and "epochs_run" not in t.user_attrs
            assert t.user_attrs["constraint"] == f"n_params {sizes[block]} > max_params {limit}"
        else:
            assert t.state == TrialState.COMPLETE


def test_the_bundled_families_study_crosses_the_four_blocks_with_resnet18() -> None:
    from search.config import check_inputs, load_config
    from search.study.space import grid_size
    from tests.conftest import REPO

    cfg = load_config(REPO / "study_configs" / "families.yaml")
    check_inputs(cfg)  # what validate and run check first
    space = cfg.search.space
    assert space["model.block"].choices == tuple(BLOCKS)
    assert space["model.arch"].choices == ("convnet", "resnet18")
    assert cfg.search.sampler.name == "grid" and grid_size(space) == cfg.search.n_trials == 8
    assert cfg.data.dataset == "imagefolder" and Path(cfg.data.root).name == "cifar10-sample"
