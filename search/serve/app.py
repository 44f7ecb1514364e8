"""``search app EXPORT_DIR``: a gradio page that predicts with an exported model (extra ``[app]``).

The page says which model it serves (study, trial, architecture, dataset, validation accuracy)
and shows the top-3 classes with their probabilities for

- a drawing on a sketchpad (grayscale models only), converted the way the dataset looks: a dark
  stroke on the light pad becomes a light stroke on a dark ground (as digits and MNIST store
  them), cropped to the stroke, centred in a square with the dataset's margin, box-averaged down
  to the model's input size and stretched to the full 0..255 range (digits: 8x8, values 0..16
  scaled to 0..255);
- an uploaded image, read exactly as ``search predict`` reads a file (colour mode, resize); a file
  that is not an image, or one too large to decode safely, gets predict's message in the page.

Loopback by default (a warning for other addresses), never a share link, and no network at
launch: gradio's analytics are off and the page uses system fonts only. This module logs; it
never prints.
"""

from __future__ import annotations

import logging
import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from search import serve
from search.errors import InputError
from search.results.export_folder import (
    ExportError,
    architecture,
    export_precision,
    load_export,
    load_images,
    predict_tensor,
)
from search.serve import network

log = logging.getLogger(__name__)

EXTRA_HINT = "pip install 'convnet-search[app]'"
DEFAULT_HOST = serve.DEFAULT_HOST
DEFAULT_PORT = serve.APP_PORT
TOP_K = 3
CANVAS = 280  # sketchpad pixels per side
INK_THRESHOLD = 40  # 0..255: darker-than-the-pad pixels above this count as the stroke
# Empty border around the digit, as a fraction of the digit's box: MNIST centres a 20x20 box in
# 28x28 (4 pixels = 0.2 of it); digits' 8x8 images leave about half a pixel.
MARGINS = {"mnist": 0.2, "fashion_mnist": 0.2}
DEFAULT_MARGIN = 0.07


class AppError(InputError):
    """The app cannot start: the extra is missing, a bad export folder, a port in use."""


# --------------------------------------------------------------------------- drawing conversion


def _gray_on_white(image: np.ndarray) -> np.ndarray:
    """float32 HxW grayscale of an L, RGB or RGBA array, transparent pixels taken as white."""
    arr = np.asarray(image, dtype=np.float32)
    if arr.ndim == 2:
        return arr
    alpha = arr[..., 3:4] / 255.0 if arr.shape[-1] == 4 else np.ones_like(arr[..., :1])
    rgb = arr[..., :3] * alpha + 255.0 * (1.0 - alpha)
    gray: np.ndarray = rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    return gray


def drawing_to_input(image: np.ndarray, config: dict[str, Any]) -> np.ndarray | None:
    """uint8 [1, H, W] model input for a sketchpad drawing; None when nothing is drawn.

    Polarity follows the pad: on a light pad the ink is the darkness (inverted, so the stroke is
    light on dark, like the dataset); on a dark pad it is the lightness.
    """
    from PIL import Image

    c, h, w = (int(v) for v in config["in_shape"])
    if c != 1:
        raise ValueError(f"drawings are for grayscale models; this one takes {c} channels")
    gray = _gray_on_white(image)
    ink = 255.0 - gray if float(np.median(gray)) >= 128 else gray
    ys, xs = np.nonzero(ink > INK_THRESHOLD)
    if ys.size == 0:
        return None
    crop = ink[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
    side = max(crop.shape)
    margin = round(side * MARGINS.get(str(config.get("dataset", {}).get("name")), DEFAULT_MARGIN))
    full = side + 2 * margin
    square = np.zeros((full, full), dtype=np.float32)
    top, left = (full - crop.shape[0]) // 2, (full - crop.shape[1]) // 2
    square[top : top + crop.shape[0], left : left + crop.shape[1]] = crop
    small = Image.fromarray(square, mode="F").resize((w, h), Image.Resampling.BOX)
    out = np.asarray(small, dtype=np.float32)
    peak = float(out.max())
    if peak > 0:
        out = out * (255.0 / peak)  # a thin pen still fills the range the dataset uses
    return np.clip(out.round(), 0, 255).astype(np.uint8)[None]


# --------------------------------------------------------------------------- the page


def page_error(message: str) -> Exception:
    """The error a handler raises to show ``message`` in the page: gradio's ``Error``, without the
    traceback gradio would otherwise print on the server's terminal."""
    import gradio as gr

    return gr.Error(message, print_exception=False)


@dataclass
class Predictor:
    """An exported model and what the page says about it."""

    model: Any
    transform: Any
    config: dict[str, Any]

    @property
    def grayscale(self) -> bool:
        return int(self.config["in_shape"][0]) == 1

    def top(self, images: Any) -> dict[str, float]:
        """``{class: probability}`` of the top-3 classes for one uint8 [1, C, H, W] tensor."""
        probs = predict_tensor(self.model, self.transform, images, export_precision(self.config))[0]
        k = min(TOP_K, probs.shape[0])
        values, indices = probs.topk(k)
        classes = self.config["classes"]
        return {str(classes[int(i)]): float(p) for p, i in zip(values, indices, strict=True)}

    def predict_drawing(self, value: Any) -> dict[str, float]:
        import torch

        image = value.get("composite") if isinstance(value, dict) else value
        if image is None:
            return {}
        arr = drawing_to_input(np.asarray(image), self.config)
        if arr is None:
            return {}
        return self.top(torch.from_numpy(arr)[None])

    def predict_upload(self, path: str | None) -> dict[str, float]:
        """Top-3 for an uploaded file, read as ``search predict`` reads it. A file that is not an
        image, an empty one or one too large to decode safely: a message in the page
        (``gr.Error``), one log line on the server, no traceback."""
        if not path:
            return {}
        try:
            images = load_images([path], self.config)
        except ExportError as exc:
            log.info("upload refused: %s", exc)
            raise page_error(str(exc)) from None
        return self.top(images)

    def description(self) -> str:
        c = self.config
        m, d = c["model"], c.get("dataset", {})
        acc = c.get("val_accuracy")
        acc_text = f"{acc:.4f}" if isinstance(acc, int | float) else "unknown"
        shape = "x".join(str(v) for v in c["in_shape"])
        ft = c.get("finetune")
        tested = ""
        if isinstance(ft, dict) and isinstance(ft.get("test_accuracy"), int | float):
            tested = (
                f"; fine-tuned, test accuracy **{ft['test_accuracy']:.4f}** on {ft.get('n_test', '?')} images"
            )
        return (
            f"### {c.get('study', '?')}: trial {c.get('trial', '?')}{' (fine-tuned)' if ft else ''}\n\n"
            f"{architecture(m, c['in_shape'])} on **{d.get('name', '?')}** "
            f"({len(c['classes'])} classes, input {shape}, colour mode {c.get('color_mode', '?')}); "
            f"validation accuracy **{acc_text}**{tested}."
        )


def load_predictor(export_dir: str | Path) -> Predictor:
    """The export folder's model; AppError when it is missing or broken."""
    folder = Path(export_dir)
    if not folder.is_dir():
        raise AppError(
            f"EXPORT_DIR {str(folder)!r}: no such folder. Fix: run `search export STUDY` and pass "
            "the folder it prints"
        )
    try:
        model, transform, config = load_export(folder)
    except ExportError as exc:
        raise AppError(f"EXPORT_DIR {str(folder)!r}: {exc}") from exc
    except (RuntimeError, KeyError, TypeError, ValueError, EOFError, pickle.UnpicklingError) as exc:
        first = (str(exc).strip().splitlines() or [""])[0]  # torch's messages run over many lines
        raise AppError(
            f"EXPORT_DIR {str(folder)!r}: broken export ({exc.__class__.__name__}: {first}). "
            "Fix: export the study again with `search export STUDY`"
        ) from exc
    return Predictor(model, transform, config)


def build_blocks(predictor: Predictor) -> Any:
    """The gradio page (not launched)."""
    import gradio as gr

    title = f"{predictor.config.get('study', 'model')} predictor"
    with gr.Blocks(title=title, analytics_enabled=False) as blocks:
        gr.Markdown(predictor.description())
        with gr.Row():
            if predictor.grayscale:
                with gr.Column():
                    pad = gr.Sketchpad(
                        label="Draw here (dark on light)",
                        type="numpy",
                        image_mode="RGBA",
                        canvas_size=(CANVAS, CANVAS),
                        fixed_canvas=True,
                        brush=gr.Brush(colors=["#000000"], default_color="#000000", default_size=28),
                        layers=False,
                    )
                    drawn = gr.Label(num_top_classes=TOP_K, label="Top 3 for the drawing")
                    gr.Button("Predict drawing").click(
                        predictor.predict_drawing, pad, drawn, api_name="predict_drawing"
                    )
                    pad.change(predictor.predict_drawing, pad, drawn, api_visibility="private")
            with gr.Column():
                # a file, not gr.Image: gradio would decode it before the handler (a text file, an empty
                # one or a decompression bomb: "Could not preprocess" and a traceback); no file_types:
                # gradio's own refusal prints a traceback too. The handler reads it as predict does.
                upload = gr.File(type="filepath", label="Or upload an image")
                uploaded = gr.Label(num_top_classes=TOP_K, label="Top 3 for the image")
                upload.change(predictor.predict_upload, upload, uploaded, api_name="predict_image")
    return blocks


def exposure_warning(host: str, port: int) -> str | None:
    """The warning to log when ``host`` makes the predictor reachable from other machines, else None."""
    return network.exposure_warning("the predictor", "can use it", host, port)


@dataclass
class App:
    blocks: Any
    url: str

    def close(self) -> None:
        self.blocks.close()


def open_app(export_dir: str | Path, *, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT) -> App:
    """Load the export, bind ``host:port`` and serve the page in a background thread.

    Raises :class:`AppError` before serving anything for a missing extra, a missing or broken
    export folder, or a port that cannot be bound.
    """
    from search.serve.dashboard import DashboardError, check_port

    predictor = load_predictor(export_dir)  # the cheap checks first: gradio takes seconds to import
    try:
        check_port(host, port)
    except DashboardError as exc:
        raise AppError(str(exc).replace("another dashboard?", "another server?")) from exc
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"  # before gradio is imported: no phoning home
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import gradio as gr
    except ImportError as exc:
        raise AppError(f"search app needs gradio, which is not installed. Fix: {EXTRA_HINT}") from exc
    warning = exposure_warning(host, port)
    if warning:
        log.warning("%s", warning)
    blocks = build_blocks(predictor)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # gradio's own start-up requests: not news
    system_fonts = ["ui-sans-serif", "system-ui", "sans-serif"]  # no Google Fonts: no network
    theme = gr.themes.Default(font=system_fonts, font_mono=["ui-monospace", "monospace"])
    _, local_url, _ = blocks.launch(
        server_name=host.strip("[]"),
        server_port=port,
        share=False,
        prevent_thread_lock=True,
        quiet=True,
        show_error=True,
        ssr_mode=False,
        mcp_server=False,
        theme=theme,
    )
    log.info("predictor for %s at %s", export_dir, local_url)
    return App(blocks, str(local_url).rstrip("/"))
