"""``search export --onnx`` and ``search predict --onnx`` through the CLI: model.onnx agrees with
torch on the validation images for every family (seed net, residual, depthwise and inception
blocks, ResNet-18), on grayscale and RGB images, trained in fp32 and in bf16; its batch size is
dynamic; predict gives the same answers with it; without the [onnx] extra both exit 2."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pytest
import torch
from optuna.trial import TrialState
from PIL import Image

from search.cli import main
from search.engine.data import load_splits
from search.results.export import load_export
from search.study.stored import study_config
from tests.studies import build_study, db_url
from tests.studies import study_config as raw_config

EXTRA = "Fix: pip install 'convnet-search[onnx]'"


def _synthetic(n: int) -> dict[str, Any]:
    return {"dataset": "synthetic", "synthetic": {"shape": [3, 16, 16], "n_classes": 3, "n_samples": n}}


def _grid(root: Path, name: str, space: dict[str, Any], precision: str, **sections: Any) -> dict[str, Any]:
    """A grid study over ``space`` (every other width fixed), 1 epoch per trial in ``precision``,
    all weights kept."""
    train = {"epochs": 1, "patience": 1, "precision": precision}
    raw = raw_config(root, name=name, train=train, **sections)
    raw["search"] = {
        "n_trials": 2,
        "sampler": {"name": "grid"},
        "pruner": {"name": "none"},
        "keep_top_k": 2,
        "space": {"c1": 8, "c2": 16, "l1": 32, "lr": 0.01, "batch_size": 64, **space},
    }
    return raw


@pytest.fixture(scope="module")
def studies(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[optuna.Study]]:
    """Grayscale digits in fp32: the seed net and a residual net. RGB images in bf16: depthwise and
    inception blocks (batchnorm, max pool, global-average head). RGB in fp32: ResNet-18."""
    pytest.importorskip("onnxruntime", reason="the [onnx] extra is not installed")
    root = tmp_path_factory.mktemp("onnx")
    seed = _grid(root, "seed", {"model.block": {"choices": ["plain", "residual"]}}, "fp32")
    blocks = _grid(
        root,
        "blocks",
        {"model.block": {"choices": ["depthwise", "inception"]}},
        "bf16",
        data=_synthetic(240),
        model={"batchnorm": True, "pool": "max", "head": "global_avg"},
    )
    resnet = _grid(
        root, "resnet", {"batch_size": 32}, "fp32", data=_synthetic(80), model={"arch": "resnet18"}
    )
    resnet["search"] = {**resnet["search"], "n_trials": 1, "sampler": {"name": "random"}}
    return root, [build_study(raw) for raw in (seed, blocks, resnet)]


def _trials(studies: tuple[Path, list[optuna.Study]]) -> list[tuple[optuna.Study, int]]:
    return [(s, t.number) for s in studies[1] for t in s.get_trials(states=(TrialState.COMPLETE,))]


def _export(root: Path, study: optuna.Study, number: int, *flags: str, out: Path | None = None) -> int:
    out = out or root / "exports" / f"{study.study_name}-{number}"
    args = ["export", study.study_name, "--storage", db_url(root), "--trial", str(number), "--out", str(out)]
    return main([*args, *flags])


def test_every_family_exports_an_onnx_graph_that_agrees_with_torch(
    studies: tuple[Path, list[optuna.Study]], capsys: pytest.CaptureFixture[str]
) -> None:
    root = studies[0]
    families = set()
    for study, number in _trials(studies):
        assert _export(root, study, number, "--onnx") == 0
        printed = capsys.readouterr().out.splitlines()
        out = root / "exports" / f"{study.study_name}-{number}"
        config = json.loads((out / "config.json").read_text())
        families.add(config["family"])
        cfg = study_config(study)
        val = load_splits(cfg.data, cfg.seed).val.images
        model, transform, _ = load_export(out)
        with torch.no_grad():
            want = model(transform(val, train=False)).numpy()
        _check_figures(out, config, len(val), float(np.abs(want).max()), printed[1])
        _check_graph(out, val, want, max(1.0, config["onnx"]["max_abs_logit"]))
    assert families == {
        "convnet/plain",
        "convnet/residual",
        "convnet/depthwise",
        "convnet/inception",
        "resnet18",
    }


def _check_figures(out: Path, config: dict[str, Any], n_val: int, largest: float, printed: str) -> None:
    """config.json's onnx entry, the printed line and the card: the figures of the whole val split."""
    import onnxruntime as ort

    entry = config["onnx"]
    assert entry["n_images"] == n_val and entry["file"] == "model.onnx"
    assert entry["max_abs_logit"] == pytest.approx(largest, rel=1e-5)
    assert entry["agreement"] == 1.0 and entry["max_logit_diff"] <= 1e-5 * max(1.0, largest)
    assert entry["latency_ms"] > 0 and entry["threads"] == 1 and entry["precision"] == config["precision"]
    trained = (
        ""
        if config["precision"] == "fp32"
        else f"; against torch in bf16 (as trained, as `search predict` runs it): agreement "
        f"{entry['agreement_trained']:.4f}, max |logit difference| {entry['max_logit_diff_trained']:.2g}"
    )
    assert printed == (
        f"model.onnx: ONNX Runtime against torch (float32) on {n_val} validation images: top-1 agreement "
        f"1.0000, max |logit difference| {entry['max_logit_diff']:.2g} (largest |logit| {largest:.3g})"
        f"{trained}; batch-1 latency {entry['latency_ms']:.3f} ms (ONNX Runtime {ort.__version__}, CPU, "
        "1 thread, median of 50 runs)"
    )
    card = (out / "README.md").read_text()
    assert f"top-1 agreement 1.0000, max abs logit difference {entry['max_logit_diff']:.2g}" in card
    assert "| weights | float32" in card and f"{entry['latency_ms']:.3f} ms" in card
    if config["precision"] == "bf16":  # the check also ran torch as it trained: bf16 differs
        assert 0.0 <= entry["agreement_trained"] <= 1.0
        assert entry["max_logit_diff_trained"] > entry["max_logit_diff"]
        assert "trained in bf16 autocast; the graph computes in float32" in card
    else:
        assert entry["agreement_trained"] is None and "as trained" not in card


def _check_graph(out: Path, images: torch.Tensor, want: np.ndarray, scale: float) -> None:
    """Independently of the tool's figures: the graph on raw pixels / 255 against the exported torch
    net, at batch sizes 1, 7 and the whole split (the batch axis is dynamic)."""
    import onnx
    import onnxruntime as ort

    batch_axis = onnx.load(str(out / "model.onnx")).graph.input[0].type.tensor_type.shape.dim[0]
    assert batch_axis.dim_param and not batch_axis.dim_value
    sess = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    pixels = images.numpy().astype(np.float32) / 255.0
    for n in sorted({1, min(7, len(pixels)), len(pixels)}):
        got = sess.run(None, {"images": pixels[:n]})[0]
        assert got.shape == (n, want.shape[1])
        np.testing.assert_allclose(got, want[:n], rtol=0, atol=1e-5 * scale)


def _pngs(folder: Path, images: torch.Tensor) -> list[str]:
    folder.mkdir(exist_ok=True)
    paths = []
    for i, image in enumerate(images.numpy()):
        array = image[0] if image.shape[0] == 1 else image.transpose(1, 2, 0)
        paths.append(str(folder / f"{i}.png"))
        Image.fromarray(array).save(paths[-1])
    return paths


@pytest.fixture(scope="module")
def seed_onnx(studies: tuple[Path, list[optuna.Study]]) -> Path:
    """The seed study's best trial exported with --onnx (read-only for the tests below)."""
    root, (seed, _, _) = studies
    out = root / "exports" / "seed-onnx"
    assert _export(root, seed, seed.best_trial.number, "--onnx", out=out) == 0
    return out


def test_predict_with_onnx_gives_the_same_answers(
    studies: tuple[Path, list[optuna.Study]], seed_onnx: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root, (seed, _, _) = studies
    out = str(seed_onnx)
    cfg = study_config(seed)
    paths = _pngs(root / "digits", load_splits(cfg.data, cfg.seed).val.images[:12])
    capsys.readouterr()
    assert main(["predict", out, *paths]) == 0
    with_torch = capsys.readouterr().out.splitlines()
    assert main(["predict", out, *paths, "--onnx"]) == 0
    with_onnx = capsys.readouterr().out.splitlines()
    assert len(with_onnx) == len(paths)

    def parsed(lines: list[str]) -> list[tuple[str, list[str], list[float]]]:
        rows = []
        for line in lines:
            path, rest = line.split(": ")
            fields = rest.split()
            rows.append((path, fields[0::2], [float(p) for p in fields[1::2]]))
        return rows

    for (p1, labels1, probs1), (p2, labels2, probs2) in zip(
        parsed(with_torch), parsed(with_onnx), strict=True
    ):
        assert p1 == p2 and labels1[0] == labels2[0]
        assert np.allclose(probs1, probs2, atol=0.0015)


def test_export_without_onnx_drops_a_stale_graph_and_predict_onnx_says_so(
    studies: tuple[Path, list[optuna.Study]], seed_onnx: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root, (seed, _, _) = studies
    out = root / "exports" / "stale"
    shutil.copytree(seed_onnx, out)
    assert (out / "model.onnx").is_file()
    assert _export(root, seed, seed.best_trial.number, out=out) == 0
    assert not (out / "model.onnx").exists() and "onnx" not in json.loads((out / "config.json").read_text())
    assert "## ONNX" not in (out / "README.md").read_text()
    capsys.readouterr()
    image = _pngs(root / "one", torch.zeros((1, 1, 8, 8), dtype=torch.uint8))
    assert main(["predict", str(out), *image, "--onnx"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"error: {out} has no model.onnx. Fix: export it with `search export STUDY --onnx` "
        "(or predict without --onnx)"
    )


def test_a_graph_that_disagrees_with_torch_is_not_written(
    studies: tuple[Path, list[optuna.Study]],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An exporter fault, injected: the graph's logits 10 % off torch's. Exit 1, no folder."""
    from search.engine.onnx_model import Normalized

    def skewed(self: Normalized, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.net((x - self.mean) / self.std) * 1.1
        return out

    monkeypatch.setattr(Normalized, "forward", skewed)
    root, (seed, _, _) = studies
    out = root / "exports" / "wrong"
    assert _export(root, seed, seed.best_trial.number, "--onnx", out=out) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: model.onnx: ONNX Runtime's logits differ from torch's by up to ")
    assert err.endswith(
        "the export is wrong, nothing was written. Fix: report it with the study's config; "
        "the export without --onnx works"
    )
    assert not out.exists()


def _storage(root: Path) -> str:
    """A storage holding an empty study ``tiny``: the refusals below come before it is read."""
    (root / "storage").mkdir()
    optuna.create_study(study_name="tiny", storage=db_url(root))
    return db_url(root)


def test_the_fine_tuned_model_exports_with_onnx_too(
    studies: tuple[Path, list[optuna.Study]], capsys: pytest.CaptureFixture[str]
) -> None:
    root, (seed, _, _) = studies
    url, tuned, out = db_url(root), root / "tuned", root / "exports" / "tuned"
    assert (
        main(["finetune", "seed", "--storage", url, "--device", "cpu", "--epochs", "1", "--out", str(tuned)])
        == 0
    )
    capsys.readouterr()
    assert main(["export", "seed", "--storage", url, "--finetuned", "--onnx", "--out", str(out)]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith("exported the fine-tuned model of trial") and printed[1].startswith(
        "model.onnx: "
    )
    config = json.loads((out / "config.json").read_text())
    assert "finetune" in config and config["onnx"]["agreement"] == 1.0
    assert not (tuned / "model.onnx").exists()  # the fine-tune folder itself is left as it was
    model, transform, _ = load_export(out)
    cfg = study_config(seed)
    val = load_splits(cfg.data, cfg.seed).val.images
    with torch.no_grad():
        want = model(transform(val, train=False)).numpy()
    assert config["onnx"]["max_abs_logit"] == pytest.approx(float(np.abs(want).max()), rel=1e-5)
    _check_graph(out, val, want, max(1.0, config["onnx"]["max_abs_logit"]))
    card = (out / "README.md").read_text()
    assert "## Fine-tuning" in card and "## ONNX" in card


def test_without_the_extra_onnx_exits_2_naming_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """As if onnxruntime were not installed (an import of it fails): nothing trains, nothing is written."""
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    out = tmp_path / "out"
    assert main(["export", "tiny", "--storage", _storage(tmp_path), "--out", str(out), "--onnx"]) == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1] == (
        f"error: search export --onnx needs onnxruntime, which is not installed. {EXTRA}"
    )
    assert not out.exists()
    (tmp_path / "image.png").write_bytes(b"")
    assert main(["predict", str(tmp_path), str(tmp_path / "image.png"), "--onnx"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"error: search predict --onnx needs onnxruntime, which is not installed. {EXTRA}"
    )
