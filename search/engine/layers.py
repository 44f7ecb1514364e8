"""Two of the ConvNet's layers with the CPU's cost in mind: ``Dropout`` and ``Flatten``.

Both are ``torch.nn``'s layers (subclasses: same name, repr, arguments and no parameters, so a
net built with them has the same ``state_dict`` and prints the same) computing the same function;
on the CPU they avoid two costs measured in the seed net's bf16 training step:

- :class:`Dropout`: ``torch.nn.Dropout`` draws its mask with ``bernoulli_``, which on the CPU took
  about a quarter of the whole training step (~10 ns an element, more than the convolutions'
  share of some layers). Here the mask is drawn as raw random bits, one 16-bit (bf16) or 32-bit
  (fp32) word per element, from the same default generator (``seed_dropout`` re-seeds it each
  epoch, so resumed runs stay exact), and turned into the noise tensor in place: an element is
  kept when its word is below ``round(q * 2**bits)`` (``q = 1 - p``), its noise is ``1 / q`` in the
  input's dtype, exactly what ``torch.nn.Dropout`` multiplies by. Kept with probability ``q``
  rounded to 2**-32 (fp32: a 32-bit uniform draw's resolution) or 2**-16 (bf16: at most
  7.6e-6 off, far below the 0.16 % that bf16 already rounds ``1 / 0.9`` by). CUDA, other dtypes
  and ``torch.compile`` or export (which trace dropout themselves) use ``torch.nn.Dropout``'s own path.
- :class:`Flatten`: flattening a channels_last feature map copies it into (C, H, W) order (the
  order the Linear weights index); ``torch.nn.Flatten``'s backward then hands the layers before
  it gradients in NCHW order while their saved tensors are channels_last, and every elementwise
  backward (ReLU, dropout) and the last conv's backward run on mixed layouts, slowly. This one's
  backward gives the gradient back in the input's own memory format: the same values.

Does not import optuna.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["Dropout", "Flatten", "dropout_noise"]

# float dtype -> the integer dtype of its width: its random words and its bit patterns
_WORDS = {torch.bfloat16: torch.int16, torch.float32: torch.int32}


def dropout_noise(x: torch.Tensor, p: float) -> torch.Tensor:
    """Dropout's noise for ``x`` (bf16 or fp32, dense): 0 with probability ``p``, else
    ``1 / (1 - p)`` in ``x``'s dtype; the same shape and strides as ``x``, drawn from the default
    generator of ``x``'s device."""
    word = _WORDS[x.dtype]
    bits = torch.iinfo(word).bits
    q = 1.0 - p
    n = x.numel()
    per_draw = 64 // bits  # random_ fills int64 words: several dropout words a draw
    draws = torch.empty((n + per_draw - 1) // per_draw, dtype=torch.int64, device=x.device)
    words = draws.random_(-(2**63), None).view(word)  # every bit uniform: words uniform over the dtype
    threshold = round(q * 2**bits) - 2 ** (bits - 1)  # kept: word < threshold (count round(q * 2**bits))
    scale_pattern = int(torch.tensor(1.0 / q, dtype=x.dtype).view(word))
    words.lt_(threshold).mul_(scale_pattern)  # 1 / 0, then the bit pattern of 1 / q or of 0.0
    return words[:n].view(x.dtype).as_strided(x.shape, x.stride())


def _dense(x: torch.Tensor) -> bool:
    """Whether ``x``'s elements fill its storage span without gaps or overlaps, in some order."""
    return x.is_contiguous() or (x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last))


class Dropout(nn.Dropout):
    """``torch.nn.Dropout`` with a cheaper mask on the CPU (see the module docstring)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fast = (
            self.training
            and not self.inplace
            and x.device.type == "cpu"
            and x.dtype in _WORDS
            and 0.0 < self.p < 1.0
            and _dense(x)
            and not torch.compiler.is_compiling()
            and not torch.compiler.is_exporting()
        )
        if not fast:
            return F.dropout(x, self.p, self.training, self.inplace)
        return x * dropout_noise(x, self.p)


class _FlattenKeepFormat(torch.autograd.Function):
    """[N, C, H, W] -> [N, C*H*W] in (C, H, W) order; the gradient comes back in the input's format."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x: torch.Tensor) -> torch.Tensor:
        ctx.shape = x.shape  # type: ignore[attr-defined]
        return x.contiguous().view(x.shape[0], -1)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor) -> torch.Tensor:
        shape: torch.Size = ctx.shape  # type: ignore[attr-defined]
        return grad.reshape(shape).contiguous(memory_format=torch.channels_last)


class Flatten(nn.Flatten):
    """``torch.nn.Flatten``; a channels_last [N, C, H, W] input's gradient comes back channels_last."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        channels_last = (
            input.dim() == 4
            and (self.start_dim, self.end_dim) == (1, -1)
            and not input.is_contiguous()
            and input.is_contiguous(memory_format=torch.channels_last)
        )
        # only where a backward will run, eagerly (compile and export trace torch's own flatten)
        training = input.requires_grad and torch.is_grad_enabled()
        traced = torch.compiler.is_compiling() or torch.compiler.is_exporting()
        if not (channels_last and training) or traced:
            return super().forward(input)
        out: torch.Tensor = _FlattenKeepFormat.apply(input)
        return out
