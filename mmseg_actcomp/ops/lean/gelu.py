"""Lean GELU (:class:`LeanGELU`): its derivative kept quantized instead of its input.

Stock autograd's ``GeluBackward0`` keeps the GELU's full input: in a transformer MLP the widest tensor of the
block (``(B, N, 4C)``), which neither linear layer around it keeps once they are compressed. The choices:

* recompute it from something kept (the first linear layer's output, or the second's input): impossible
  here, since both linear layers keep only truncated factors of their inputs, and the GELU is not invertible;
* keep it whole: the largest tensor of the region, more than all the factors together;
* keep something quantized, with an approximate gradient. Backward needs only ``GELU'(x)`` element by
  element (``grad_x = grad_y * GELU'(x)``), so :class:`LeanGELU` quantizes the derivative itself rather than
  the input (as Novikov et al., Few-Bit Backward, ICML 2023, do). ``GELU'`` lies in ``[-0.17, 1.13]``
  whatever the input's range and is flat in both tails, where the input is not: its codes spend no level on
  large ``|x|``, while 2 bits of the input leave steps of a third of its range across the interval where
  ``GELU'`` goes from 0 to 1. At the same bits the input gradient of a Linear -> GELU -> Linear MLP is closer
  to the exact one, the more so the wider the pre-activations: relative errors 0.15-0.17 at 2 bits, 0.03-0.05
  at 4, 0.002 at 8, against 0.19-0.32, 0.04-0.07 and 0.002-0.004 with the input quantized per (sample,
  feature) (``tests/test_ops/test_lean/test_gelu.py``).

One range per sample (``quantize``'s ``(b, c)`` plane with one channel): the derivative's range is about the
same for any group large enough to reach both tails, so finer ranges would only cost bytes.
"""
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import Function, once_differentiable

from ...compression import Quantized, dequantize, quantize
from .common import _grad_needed, optional_bits, validated_attribute


def gelu_derivative(x: Tensor, approximate: str) -> Tensor:
    """``GELU'(x)`` for ``approximate`` ``'none'`` or ``'tanh'``, from torch's own ``gelu_backward`` (what
    ``GeluBackward0`` multiplies the output gradient by); like ``x``, in its dtype."""
    return torch.ops.aten.gelu_backward(x.new_ones(()).expand_as(x), x, approximate=approximate)


def _sample_planes(t: Tensor) -> Tensor:
    """``t`` of any shape as ``(B, 1, rest)``: one plane per sample (the first dim; one plane for a 0- or
    1-d ``t``), for :func:`~mmseg_actcomp.compression.quantize`'s range per plane."""
    samples = t.shape[0] if t.dim() >= 2 else 1
    return t.reshape(samples, 1, -1)


class QuantizedDerivativeGELUFunction(Function):
    """``F.gelu`` keeping its derivative quantized instead of its input.

    ``apply(x, approximate, bits)``. Saves the :class:`~mmseg_actcomp.compression.Quantized` ``GELU'(x)``:
    ``bits`` per element and a range per sample (:func:`_sample_planes`). Backward multiplies the output
    gradient by the dequantized derivative: each factor within half a quantization step of the exact one.
    """

    @staticmethod
    def forward(x: Tensor, approximate: str, bits: int) -> Tensor:
        return F.gelu(x, approximate=approximate)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        x, approximate, bits = inputs
        quantized = quantize(_sample_planes(gelu_derivative(x.detach(), approximate)), bits)
        ctx.shape = x.shape
        ctx.quantized_meta = quantized[3:]
        ctx.save_for_backward(*quantized.tensors)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output: Tensor):
        derivative = dequantize(Quantized(*ctx.saved_tensors, *ctx.quantized_meta)).view(ctx.shape)
        return grad_output * derivative, None, None


class LeanGELU(nn.GELU):
    """``nn.GELU`` keeping its derivative quantized for backward instead of its whole input.

    With ``derivative_bits`` None it is stock ``nn.GELU`` (keeps its input: exact gradient). With
    ``derivative_bits`` it keeps ``GELU'(x)`` in that many bits per element and a range per sample
    (:class:`QuantizedDerivativeGELUFunction`): the same forward, bit for bit; the input gradient is the output
    gradient times a derivative within half a quantization step of the exact one. No parameters.

    Args:
        approximate: ``'none'`` or ``'tanh'``, as ``nn.GELU``'s.
        derivative_bits: None, or one of :data:`~mmseg_actcomp.compression.QUANTIZATION_BITS`.
    """

    def __init__(self, approximate: str = 'none', derivative_bits: Optional[int] = None) -> None:
        if approximate not in ('none', 'tanh'):
            raise ValueError(f"approximate={approximate!r} is not one of ['none', 'tanh']")
        super().__init__(approximate)
        self.derivative_bits = derivative_bits

    derivative_bits = validated_attribute('derivative_bits', optional_bits('derivative_bits'))

    @classmethod
    def from_module(cls, module: nn.GELU, derivative_bits: Optional[int] = None) -> 'LeanGELU':
        """The lean twin of an ``nn.GELU`` (same ``approximate`` and training flag)."""
        if not isinstance(module, nn.GELU):
            raise TypeError(f'LeanGELU.from_module expects an nn.GELU, got {type(module).__name__}')
        return cls(module.approximate, derivative_bits).train(module.training)

    def extra_repr(self) -> str:
        return f'{super().extra_repr()}, derivative_bits={self.derivative_bits}'

    def forward(self, x: Tensor) -> Tensor:
        """x: any shape; returns the same shape."""
        if self.derivative_bits is None or not _grad_needed(x):
            return super().forward(x)
        return QuantizedDerivativeGELUFunction.apply(x, self.approximate, self.derivative_bits)
