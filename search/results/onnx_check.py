"""``search export --onnx``: the trial's net as ``model.onnx``, checked against torch before it is
written.

:func:`export_onnx` writes the graph (:func:`search.engine.onnx_model.to_onnx`: pixels / 255 in,
logits out, batch size dynamic, float32 weights), then runs the validation images through it with
ONNX Runtime and through the torch net as ``search predict`` runs it, and times one image. The
figures (:class:`OnnxCheck`) go to the export's ``config.json`` (key ``onnx``) and its model card
(:func:`onnx_card`). A graph whose logits differ from torch's float32 ones by more than
:func:`tolerance` is not written (RunFailure, exit 1): an exporter bug, not a rounding.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from search.engine import onnx_model
from search.engine.augment import BatchTransform
from search.engine.device import Precision
from search.engine.inference import predict_logits
from search.errors import RunFailure
from search.study.recipe import RecipeError

log = logging.getLogger(__name__)

ONNX_FILE = "model.onnx"
MAX_CHECK_IMAGES = 2048  # the first this many validation images (all of a small split)
ABS_TOL = 1e-3  # float32 against float32: same ops in another order
REL_TOL = 1e-3


@dataclass(frozen=True)
class OnnxCheck:
    """ONNX Runtime against torch on the validation images, and the graph's batch-1 latency."""

    n_images: int
    agreement: float  # top-1 agreement with torch in float32
    max_logit_diff: float  # largest |ONNX logit - torch float32 logit|
    max_abs_logit: float  # largest |torch float32 logit|: the scale of that difference
    precision: str  # what the net trained in (and `search predict` runs it in)
    agreement_trained: float | None  # with torch in that precision; None when it is fp32
    max_logit_diff_trained: float | None
    latency_ms: float  # batch 1, median of onnx_model.LATENCY_REPEATS runs
    threads: int
    opset: int
    runtime: str  # the ONNX Runtime version

    def to_dict(self) -> dict[str, Any]:
        """config.json's ``onnx`` entry."""
        return {
            "file": ONNX_FILE,
            "input": onnx_model.INPUT_NAME,
            "output": onnx_model.OUTPUT_NAME,
            "weights": "float32",
            **asdict(self),
            "latency_runs": onnx_model.LATENCY_REPEATS,
        }

    def line(self) -> str:
        """What ``search export --onnx`` prints."""
        return onnx_line(self.to_dict())


def tolerance(logits: torch.Tensor) -> float:
    """The largest |logit difference| a correct float32 graph may show against ``logits``."""
    scale = float(logits.abs().max()) if logits.numel() else 0.0
    return ABS_TOL + REL_TOL * scale


def _compare(onnx_logits: torch.Tensor, torch_logits: torch.Tensor) -> tuple[float, float]:
    """(top-1 agreement, largest |logit difference|)."""
    if len(torch_logits) == 0:
        return 1.0, 0.0
    agree = float((onnx_logits.argmax(1) == torch_logits.argmax(1)).float().mean())
    return agree, float((onnx_logits - torch_logits).abs().max())


def export_onnx(
    model: nn.Module,
    transform: BatchTransform,
    images: torch.Tensor,
    precision: Precision,
) -> tuple[bytes, OnnxCheck]:
    """``model`` (on the CPU) as a serialised ONNX graph, checked on uint8 ``images`` (at most
    :data:`MAX_CHECK_IMAGES` of them are used).

    Raises:
        RunFailure: the graph's logits differ from torch's float32 ones beyond :func:`tolerance`.
    """
    images = images[:MAX_CHECK_IMAGES].cpu()
    in_shape = tuple(images.shape[1:])
    graph = onnx_model.to_onnx(model, transform.mean, transform.std, in_shape)
    sess = onnx_model.session(graph)
    got = onnx_model.run(sess, images)
    reference = predict_logits(model, images, transform, batch_size=256, precision="fp32")
    agreement, diff = _compare(got, reference)
    if not diff <= tolerance(reference):  # NaN included
        raise RunFailure(
            f"model.onnx: ONNX Runtime's logits differ from torch's by up to {diff:.3g} on the "
            f"validation images (more than {tolerance(reference):.3g}): the export is wrong, nothing "
            "was written. Fix: report it with the study's config; the export without --onnx works"
        )
    trained: tuple[float | None, float | None] = (None, None)
    if precision != "fp32":
        as_trained = predict_logits(model, images, transform, batch_size=256, precision=precision)
        trained = _compare(got, as_trained)
    fast = onnx_model.session(graph, threads=onnx_model.LATENCY_THREADS)
    check = OnnxCheck(
        n_images=len(images),
        agreement=agreement,
        max_logit_diff=diff,
        max_abs_logit=float(reference.abs().max()) if len(reference) else 0.0,
        precision=precision,
        agreement_trained=trained[0],
        max_logit_diff_trained=trained[1],
        latency_ms=round(onnx_model.latency_ms(fast, in_shape), 4),
        threads=onnx_model.LATENCY_THREADS,
        opset=onnx_model.opset(graph),
        runtime=onnx_model.runtime_version(),
    )
    log.debug("%s", check.line())
    return graph, check


def onnx_line(entry: Mapping[str, Any]) -> str:
    """One line of an export's ``onnx`` entry: the check's figures and the latency."""
    text = (
        f"{entry['file']}: ONNX Runtime against torch (float32) on {entry['n_images']} validation "
        f"images: top-1 agreement {entry['agreement']:.4f}, max |logit difference| "
        f"{entry['max_logit_diff']:.2g} (largest |logit| {entry['max_abs_logit']:.3g})"
    )
    if entry.get("agreement_trained") is not None:
        text += (
            f"; against torch in {entry['precision']} (as trained, as `search predict` runs it): "
            f"agreement {entry['agreement_trained']:.4f}, max |logit difference| "
            f"{entry['max_logit_diff_trained']:.2g}"
        )
    return text + f"; batch-1 latency {_latency(entry)}"


def _latency(entry: Mapping[str, Any]) -> str:
    threads = entry["threads"]
    return (
        f"{entry['latency_ms']:.3f} ms (ONNX Runtime {entry['runtime']}, CPU, {threads} "
        f"thread{'s' if threads != 1 else ''}, median of {entry['latency_runs']} runs)"
    )


def onnx_card(entry: Any, in_shape: Sequence[int], n_classes: int) -> str:
    """The model card's ONNX part (empty when the export has no ``model.onnx``)."""
    if not isinstance(entry, Mapping):
        return ""
    shape = ", ".join(str(v) for v in in_shape)
    trained = ""
    if entry.get("agreement_trained") is not None:
        trained = (
            f"; against torch in {entry['precision']} as trained (how `search predict` runs "
            f"best.pt): agreement {entry['agreement_trained']:.4f}, max abs logit difference "
            f"{entry['max_logit_diff_trained']:.2g}"
        )
    weights = (
        "float32 (the net trained in float32)"
        if entry["precision"] == "fp32"
        else f"float32 (the net trained in {entry['precision']} autocast; the graph computes in float32)"
    )
    return f"""
## ONNX

| | |
| --- | --- |
| file | {entry["file"]} (opset {entry["opset"]}) |
| input | `{entry["input"]}`: float32 [N, {shape}], pixels / 255 in [0, 1]; N (batch size) dynamic; \
the normalisation is inside the graph |
| output | `{entry["output"]}`: float32 [N, {n_classes}] (softmax gives probabilities) |
| weights | {weights} |
| checked | against torch on {entry["n_images"]} validation images: top-1 agreement \
{entry["agreement"]:.4f}, max abs logit difference {entry["max_logit_diff"]:.2g} (torch float32; largest \
abs logit {entry["max_abs_logit"]:.3g}){trained} |
| latency | {_latency(entry)}, batch 1 |

Run it: `search predict FOLDER IMAGE... --onnx`, or with ONNX Runtime:
`onnxruntime.InferenceSession("{entry["file"]}").run(None, {{"{entry["input"]}": pixels}})`.
"""


def onnx_probs(folder: Path, images: torch.Tensor) -> torch.Tensor:
    """Class probabilities [N, n_classes] of uint8 ``images`` through the export folder's
    ``model.onnx`` under ONNX Runtime (OnnxUnavailable without the extra; RecipeError when the
    folder has no graph or it cannot be read)."""
    onnx_model.require_onnx("search predict --onnx", onnx_model.RUN_MODULES)
    path = folder / ONNX_FILE
    try:
        graph = path.read_bytes()
    except FileNotFoundError as exc:
        raise RecipeError(
            f"{folder} has no {ONNX_FILE}. Fix: export it with `search export STUDY --onnx` "
            "(or predict without --onnx)"
        ) from exc
    except OSError as exc:
        raise RecipeError(f"cannot read {path} ({exc.strerror or exc})") from exc
    try:
        sess = onnx_model.session(graph)
        logits = onnx_model.run(sess, images)
    except onnx_model.runtime_errors() as exc:
        first = str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
        raise RecipeError(
            f"{path} cannot be run ({first}). Fix: export it again with `search export STUDY --onnx`"
        ) from exc
    return logits.softmax(1)
