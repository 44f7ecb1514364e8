"""A trained net as an ONNX graph, and running one with ONNX Runtime.

The graph takes what a camera or an image library gives: ``images``, float32 ``[N, C, H, W]``
pixels / 255 in [0, 1], batch size N dynamic; the normalisation (``(x - mean) / std`` per
channel, as :class:`search.engine.augment.BatchTransform` does it for ``train=False``) is inside
the graph, so ``logits`` (float32 ``[N, n_classes]``) come out with nothing to add. Weights are
float32 whatever precision the net trained in.

The exporter is torch's own ``torch.onnx.export(..., dynamo=True)`` (the ``torch.export``-based
one, torch's default since 2.9): the TorchScript exporter (``dynamo=False``) is deprecated, warns
on every call and is to be removed, so a working export would break on a torch upgrade. It needs
the ``onnx`` and ``onnxscript`` packages, and running a graph needs ``onnxruntime``: the ``[onnx]``
extra. They are imported here only inside functions, so nothing else pays for them.
"""

from __future__ import annotations

import contextlib
import io
import logging
import statistics
import time
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from search.errors import InputError

log = logging.getLogger(__name__)

EXTRA_HINT = "pip install 'convnet-search[onnx]'"
INPUT_NAME = "images"
OUTPUT_NAME = "logits"
LATENCY_THREADS = 1  # batch-1 latency: one intra-op thread (a figure that does not depend on the load)
LATENCY_WARMUP = 5
LATENCY_REPEATS = 50
QUIET_LOGGERS = ("onnxscript", "onnx_ir", "torch.onnx", "torch.export", "torch._dynamo")


class OnnxUnavailable(InputError):
    """The ``[onnx]`` extra is not installed (exit 2, naming it)."""


EXPORT_MODULES = ("onnx", "onnxscript", "onnxruntime")  # writing and checking a graph
RUN_MODULES = ("onnxruntime",)  # running one


def require_onnx(what: str, modules: Sequence[str] = EXPORT_MODULES) -> None:
    """OnnxUnavailable naming ``what`` (e.g. ``search export --onnx``) and the extra unless every
    one of ``modules`` imports."""
    missing = []
    for module in modules:
        try:
            __import__(module)
        except ImportError:
            missing.append(module)
    if missing:
        raise OnnxUnavailable(
            f"{what} needs {', '.join(missing)}, which {'is' if len(missing) == 1 else 'are'} not "
            f"installed. Fix: {EXTRA_HINT}"
        )


class Normalized(nn.Module):
    """``net((x - mean) / std)``: pixels / 255 in, logits out (the graph :func:`to_onnx` writes)."""

    def __init__(self, net: nn.Module, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.net = net
        self.mean: torch.Tensor
        self.std: torch.Tensor
        self.register_buffer("mean", torch.tensor([float(v) for v in mean]).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor([float(v) for v in std]).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.net((x - self.mean) / self.std)
        return out


def to_onnx(net: nn.Module, mean: Sequence[float], std: Sequence[float], in_shape: Sequence[int]) -> bytes:
    """The ONNX model (serialised) of ``net`` in eval mode, in float32 on the CPU, normalisation
    inside, batch size dynamic. ``net`` itself is left as it was (a copy is exported)."""
    import copy

    wrapped = Normalized(copy.deepcopy(net).float().cpu().eval(), mean, std).eval()
    example = (torch.rand((2, *(int(v) for v in in_shape))),)  # 2: torch.export specialises 0 and 1
    batch = torch.export.Dim("batch", min=1)
    for name in QUIET_LOGGERS:  # their INFO lines narrate every optimisation pass
        logging.getLogger(name).setLevel(max(logging.WARNING, logging.getLogger(name).level))
    noise = io.StringIO()
    with warnings.catch_warnings(record=True) as caught, contextlib.redirect_stdout(noise):
        warnings.simplefilter("always")
        program = torch.onnx.export(
            wrapped,
            example,
            dynamo=True,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_shapes=({0: batch},),
            verbose=False,
        )
    for w in caught:
        log.debug("torch.onnx.export: %s", w.message)
    if noise.getvalue().strip():
        log.debug("torch.onnx.export: %s", noise.getvalue().strip())
    if program is None:  # only the TorchScript exporter returns None
        raise RuntimeError("torch.onnx.export returned no program")
    data: bytes = program.model_proto.SerializeToString()
    return data


def opset(model: bytes) -> int:
    """The default-domain opset version the serialised ``model`` uses."""
    import onnx

    proto = onnx.load_from_string(model)
    return next((int(o.version) for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)


def session(model: bytes, threads: int | None = None) -> Any:
    """An ONNX Runtime CPU session of the serialised ``model`` (``threads`` intra-op threads; None:
    torch's count in this process). Runtime warnings stay out of the terminal."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads if threads is not None else torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only
    return ort.InferenceSession(model, sess_options=options, providers=["CPUExecutionProvider"])


def run(sess: Any, images_u8: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """float32 logits ``[N, n_classes]`` of uint8 images ``[N, C, H, W]`` through ``sess`` (fed as
    pixels / 255 in [0, 1], ``batch_size`` at a time)."""
    outs = []
    for start in range(0, len(images_u8), batch_size):
        chunk = images_u8[start : start + batch_size].cpu().numpy().astype(np.float32) / np.float32(255.0)
        outs.append(torch.from_numpy(np.asarray(sess.run([OUTPUT_NAME], {INPUT_NAME: chunk})[0])))
    return torch.cat(outs) if outs else torch.empty(0)


def latency_ms(
    sess: Any, in_shape: Sequence[int], *, warmup: int = LATENCY_WARMUP, repeats: int = LATENCY_REPEATS
) -> float:
    """Median milliseconds of one batch-1 run of ``sess`` on an all-zero image (``warmup`` runs
    first), as :func:`search.engine.evaluate.forward_latency_ms` times a torch net."""
    x = np.zeros((1, *(int(v) for v in in_shape)), dtype=np.float32)
    times = []
    for i in range(warmup + repeats):
        start = time.perf_counter()
        sess.run([OUTPUT_NAME], {INPUT_NAME: x})
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000.0


def runtime_version() -> str:
    """The installed ONNX Runtime's version."""
    import onnxruntime as ort

    return str(ort.__version__)


def runtime_errors() -> tuple[type[Exception], ...]:
    """The exceptions ONNX Runtime raises for a graph it cannot load or run (its own classes,
    which derive from Exception alone), plus the Python ones its bindings raise."""
    from onnxruntime.capi import onnxruntime_pybind11_state as state

    names = ("Fail", "InvalidArgument", "InvalidProtobuf", "InvalidGraph", "NoSuchFile", "RuntimeException")
    own = tuple(
        c for n in names if isinstance(c := getattr(state, n, None), type) and issubclass(c, Exception)
    )
    return (*own, RuntimeError, ValueError)
