"""`search app`: the drawing conversion, the served page called through gradio_client on a real
image and a drawn stroke, the page rendered in headless Chromium, bad input and Ctrl-C."""

from __future__ import annotations

import json
import signal
import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from search import cli
from search.config import config_from_dict
from search.results.export import export_trial, predict_files
from search.serve.app import drawing_to_input
from tests.conftest import popen_cli
from tests.serve.test_dashboard import free_port, read_line_with, rendered_text
from tests.studies import build_study, study_config

gradio_client = pytest.importorskip("gradio_client", reason="the [app] extra is not installed")

CANVAS = 280
DIGITS_CONFIG = {"in_shape": [1, 8, 8], "dataset": {"name": "digits"}}


def stroke_canvas(*boxes: tuple[int, int, int, int]) -> np.ndarray:
    """A transparent RGBA canvas (as the sketchpad sends it) with black rectangles (y0, y1, x0, x1)."""
    canvas = np.zeros((CANVAS, CANVAS, 4), dtype=np.uint8)
    for y0, y1, x0, x1 in boxes:
        canvas[y0:y1, x0:x1] = (0, 0, 0, 255)
    return canvas


ONE = stroke_canvas((40, 240, 128, 152))  # a "1": one vertical stroke


# --------------------------------------------------------------------------- drawing conversion


def test_a_dark_stroke_on_a_light_pad_reads_light_on_dark_like_digits() -> None:
    arr = drawing_to_input(ONE, DIGITS_CONFIG)
    assert arr is not None
    assert arr.shape == (1, 8, 8)
    assert arr.dtype == np.uint8
    img = arr[0]
    assert img.max() == 255  # digits' 16 scaled to 0..255 (data.py): the stroke fills the range
    assert img[:, :2].max() == 0 and img[:, 6:].max() == 0  # dark ground either side
    assert img[1:7, 3:5].min() > 200  # the light stroke, centred, spanning the height


def test_polarity_follows_the_pad() -> None:
    light_pad = np.full((CANVAS, CANVAS), 255, dtype=np.uint8)
    light_pad[40:240, 128:152] = 0  # dark ink on white (grayscale, no alpha)
    dark_pad = 255 - light_pad  # light ink on black: already the dataset's polarity
    rgb = np.repeat(light_pad[..., None], 3, axis=2)
    expected = drawing_to_input(ONE, DIGITS_CONFIG)
    for pad in (light_pad, dark_pad, rgb):
        np.testing.assert_array_equal(drawing_to_input(pad, DIGITS_CONFIG), expected)


def test_the_stroke_is_cropped_and_centred_wherever_it_is_drawn() -> None:
    small_corner = stroke_canvas((10, 110, 20, 32))  # half the size, in the top-left corner
    np.testing.assert_allclose(
        drawing_to_input(small_corner, DIGITS_CONFIG).astype(float),  # type: ignore[union-attr]
        drawing_to_input(ONE, DIGITS_CONFIG).astype(float),  # type: ignore[union-attr]
        atol=40,
    )


def test_an_empty_pad_is_no_input() -> None:
    assert drawing_to_input(stroke_canvas(), DIGITS_CONFIG) is None
    assert drawing_to_input(np.full((CANVAS, CANVAS), 255, dtype=np.uint8), DIGITS_CONFIG) is None


def test_mnist_keeps_its_wider_margin() -> None:
    arr = drawing_to_input(ONE, {"in_shape": [1, 28, 28], "dataset": {"name": "mnist"}})
    assert arr is not None and arr.shape == (1, 28, 28)
    rows = np.nonzero(arr[0].max(axis=1))[0]
    assert rows.min() >= 3 and rows.max() <= 24  # about MNIST's 4-pixel border around a 20px digit


# --------------------------------------------------------------------------- a served export


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A digits model trained for a few epochs (val accuracy ~0.95), exported."""
    root = tmp_path_factory.mktemp("app")
    raw = study_config(
        root,
        name="draw",
        train={"epochs": 4, "patience": 4},
        search={
            "n_trials": 1,
            "sampler": {"name": "random"},
            "pruner": {"name": "none"},
            "space": {"c1": 16, "c2": 32, "l1": 64, "lr": 0.005, "batch_size": 32},
        },
    )
    raw["tensorboard_dir"] = str(root / "storage" / "tensorboard")
    study = build_study(raw)
    assert not Path(raw["tensorboard_dir"]).exists()  # train.tensorboard is off: no logs written
    done = export_trial(study, config_from_dict(raw), out=root / "export")
    return done.out


@pytest.fixture(scope="module")
def served(exported: Path) -> Iterator[str]:
    """`search app EXPORT_DIR` on a free loopback port; stopped with Ctrl-C, which must exit 0."""
    port = free_port()
    proc = popen_cli("app", str(exported), "--port", str(port), cwd=exported.parent)
    try:
        url = read_line_with(proc, "http://", timeout_s=120)
        yield url
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err[-3000:]
    assert "Traceback" not in err


def digit_png(folder: Path, label: int) -> tuple[Path, int]:
    """A real digits image (light on dark, as the dataset stores it) the exported model gets right."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    for i in np.nonzero(digits.target == label)[0][:20]:
        pixels = (digits.images[i] * (255.0 / 16.0)).round().astype(np.uint8)
        path = folder / f"digit-{label}-{i}.png"
        Image.fromarray(pixels, mode="L").save(path)
        if predict_files(folder / "export", [path], k=1)[0][0][0] == str(label):
            return path, int(i)
    raise AssertionError(f"the exported model gets none of the first 20 {label}s right")


def client_for(url: str) -> Any:
    return gradio_client.Client(url, verbose=False)


def confidences(label: dict[str, Any]) -> dict[str, float]:
    return {c["label"]: c["confidence"] for c in label["confidences"]}


def test_app_predicts_a_real_image_like_search_predict(served: str, exported: Path) -> None:
    path, _ = digit_png(exported.parent, 3)
    result = client_for(served).predict(gradio_client.handle_file(str(path)), api_name="/predict_image")
    assert result["label"] == "3"
    got = confidences(result)
    assert len(got) == 3  # the top 3
    want = dict(predict_files(exported, [path], k=3)[0])
    assert got.keys() == want.keys()
    for name, p in want.items():
        assert got[name] == pytest.approx(p, abs=1e-5)


def test_app_reads_a_drawn_one(served: str, tmp_path: Path) -> None:
    png = tmp_path / "one.png"
    Image.fromarray(ONE, mode="RGBA").save(png)
    white = tmp_path / "white.png"
    Image.new("RGBA", (CANVAS, CANVAS), (255, 255, 255, 255)).save(white)
    value = {
        "background": gradio_client.handle_file(str(white)),
        "layers": [gradio_client.handle_file(str(png))],
        "composite": gradio_client.handle_file(str(png)),
    }
    result = client_for(served).predict(value, api_name="/predict_drawing")
    assert result["label"] == "1", result
    assert len(result["confidences"]) == 3
    assert confidences(result)["1"] > 0.5


def test_app_page_renders_in_headless_chromium(served: str, exported: Path, tmp_path: Path) -> None:
    config = json.loads((exported / "config.json").read_text())
    text = rendered_text(served, screenshot=tmp_path / "app.png")
    assert f"draw: trial {config['trial']}" in text
    assert "digits" in text
    assert f"validation accuracy {config['val_accuracy']:.4f}" in text
    assert "Draw here" in text
    assert "Or upload an image" in text


def test_app_shows_predicts_message_for_a_file_that_is_not_an_image(
    served: str, exported: Path, tmp_path: Path
) -> None:
    """A text file, an empty file, a PNG header claiming 100000x100000 pixels (issue 26 row 10):
    predict's message in the page through the page's own API, the handler raising gradio's Error;
    the served fixture asserts no traceback on the server's terminal."""
    import gradio

    from search.serve.app import load_predictor
    from tests.engine.test_data import _bomb_png

    text = tmp_path / "notes.txt"
    text.write_text("a shopping list, not an image\n")
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    bomb = _bomb_png(tmp_path / "bomb.png", side=100_000)
    predictor = load_predictor(exported)
    client = client_for(served)
    for path, message in [
        (text, "cannot read image"),
        (empty, "cannot read image"),
        (bomb, "is too large to decode safely"),
    ]:
        with pytest.raises(gradio.Error, match=message) as raised:
            predictor.predict_upload(str(path))
        assert path.name in raised.value.message and "Fix: " in raised.value.message
        with pytest.raises(gradio_client.exceptions.AppError, match=message):
            client.predict(gradio_client.handle_file(str(path)), api_name="/predict_image")


# --------------------------------------------------------------------------- bad input


def app_error(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    """`search app ARGS` in this process: it must exit 2 with one error line; returns that line."""
    code = cli.main(["app", *args])
    out, err = capsys.readouterr()
    assert code == 2, err
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


def test_missing_export_dir_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    line = app_error(capsys, str(tmp_path / "nope"), "--port", str(free_port()))
    assert line == (
        f"error: EXPORT_DIR '{tmp_path / 'nope'}': no such folder. Fix: run `search export STUDY` "
        "and pass the folder it prints"
    )


def test_broken_export_dirs_exit_2(
    exported: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    line = app_error(capsys, str(empty), "--port", str(free_port()))
    assert line.startswith(f"error: EXPORT_DIR '{empty}': {empty} is not an export folder (no config.json)")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text((exported / "config.json").read_text())
    (broken / "best.pt").write_bytes(b"not a checkpoint")
    line = app_error(capsys, str(broken), "--port", str(free_port()))
    assert line.startswith(f"error: EXPORT_DIR '{broken}': ") and "best.pt" in line
    assert "not a plain tensor file" in line and "Fix: export the study again" in line


def test_an_export_without_class_names_is_refused_at_load(
    exported: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """config.json with "classes": [], or another count than the weights (issue 26 row 11)."""
    import shutil

    for name, change, message in [
        ("no-classes", {"classes": []}, "key 'classes' names 0 classes but n_classes is 10"),
        ("three", {"n_classes": 3, "classes": ["a", "b", "c"]}, "key 'n_classes' is 3 but the weights"),
    ]:
        folder = tmp_path / name
        shutil.copytree(exported, folder)
        config = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps({**config, **change}))
        line = app_error(capsys, str(folder), "--port", str(free_port()))
        assert line.startswith(f"error: EXPORT_DIR '{folder}': {folder / 'config.json'}: {message}"), line


def test_port_in_use_exits_2(exported: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        line = app_error(capsys, str(exported), "--port", str(port))
    assert line.startswith(f"error: --port {port}: port already in use on 127.0.0.1 (another server?)")


def test_missing_gradio_exits_2_with_the_extra_named(
    exported: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "gradio", None)  # as if the [app] extra were not installed
    line = app_error(capsys, str(exported), "--port", str(free_port()))
    assert line == (
        "error: search app needs gradio, which is not installed. Fix: pip install 'convnet-search[app]'"
    )


def test_other_addresses_warn() -> None:
    from search.serve.app import exposure_warning

    assert exposure_warning("127.0.0.1", 7860) is None
    assert exposure_warning("localhost", 7860) is None
    warning = exposure_warning("0.0.0.0", 7860)
    assert warning is not None
    assert "all network interfaces" in warning and "ssh -L 7860:127.0.0.1:7860" in warning
