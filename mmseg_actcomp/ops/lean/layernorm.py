"""Lean LayerNorm (:class:`LeanLayerNorm`): the normalised input kept quantized.

Stock autograd's ``NativeLayerNormBackward0`` keeps the LayerNorm's full input, and its mean and inverse std
``rstd`` per row (a row: the normalised last dims of one token). Its input gradient reads the normalised
input ``x_hat`` everywhere, whether ``gamma`` trains or not::

    grad_x = rstd * (gw - mean(gw) - x_hat * mean(gw * x_hat)),   gw = grad_y * gamma   (means over a row)

so nothing smaller than ``x_hat`` gives it exactly. :class:`LeanLayerNorm` keeps ``x_hat`` quantized to
``input_bits`` per element (:class:`QuantizedNormalisedLayerNormFunction`) and ``rstd``; the mean is not
needed, since LayerNorm's gradients depend on its input only through ``x_hat`` and ``rstd``.

Why ``x_hat`` and not the input, and why one range per (sample, feature) rather than per row: the
normalisation has already divided each row by its own std, so rows of very different norms (a few tokens
of a ViT carry norms many times the others') all come out on one scale and a range per row buys little; what
is left differs between features: transformer LayerNorm inputs have a few outlier features whose values stay
large after normalisation (Dettmers et al., LLM.int8(), 2022; Bondarenko et al., EMNLP 2021). A range per row
stretches every row's range to its outlier, leaving coarse steps for all other features; a range per
(sample, feature) over the sample's tokens confines the outlier to its own range. It is also cheaper: a
range per (sample, feature) instead of per token. Measured at 2 bits on tokens of 64 features, the relative
error of ``x_hat`` is 0.43 per (sample, feature) and 0.45 per row without outlier features, 0.28 and 0.68
with two; quantizing the input per (sample, feature) instead gives 1.64 and 0.47, since tokens of large norm
set the ranges for all (``tests/test_ops/test_lean/test_layernorm.py``). On such tokens the input gradient
is 4-10 % off stock's at 2 bits, 1-2 % at 4 and 0.1 % at 8 (``gamma``'s, where it trains, 20-50 %, 2-8 % and
under 1 %).
"""
import math
from typing import List, Optional, Tuple

import torch
from torch import Tensor, nn
from torch.autograd.function import Function, once_differentiable

from ...compression import Quantized, dequantize, quantize
from .common import _grad_needed, optional_bits, validated_attribute


def sample_feature_planes(t: Tensor, normalized_ndim: int) -> Tensor:
    """``t: (*rows, *features)`` (``normalized_ndim`` feature dims) as ``(S, D, R)``: ``S`` samples (the first
    row dim when there are several, else 1), ``D`` features, ``R`` rows of a sample (its tokens; the batch for a
    ``(B, D)`` tensor), so that :func:`~mmseg_actcomp.compression.quantize`'s range per ``(b, c)`` plane is a
    range per (sample, feature). A transposed view of ``t`` where its strides allow, else a copy."""
    rows = t.shape[:t.dim() - normalized_ndim]
    samples = rows[0] if len(rows) >= 2 else 1
    features = math.prod(t.shape[t.dim() - normalized_ndim:])
    return t.reshape(samples, -1, features).transpose(1, 2)


def from_sample_feature_planes(planes: Tensor, shape: torch.Size) -> Tensor:
    """Inverse of :func:`sample_feature_planes`: ``planes: (S, D, R)`` back to ``shape``."""
    return planes.transpose(1, 2).reshape(shape)


def layer_norm_backward(grad_output: Tensor, x_hat: Tensor, rstd: Tensor, normalized_shape: List[int],
                        weight: Optional[Tensor], bias: Optional[Tensor],
                        output_mask: Tuple[bool, bool, bool]) -> Tuple[Optional[Tensor], ...]:
    """LayerNorm's gradients from its normalised input and inverse std alone.

    Torch's own ``native_layer_norm_backward`` run on ``x_hat`` with mean 0 and ``rstd`` 1 (where its input is
    already normalised) gives ``grad_gamma = sum grad_y * x_hat`` and ``grad_beta = sum grad_y`` as they are,
    and ``grad_x / rstd``: the input gradient is linear in ``rstd``.

    Args:
        grad_output: ``(*rows, *normalized_shape)``.
        x_hat: like ``grad_output``, the normalised input ``(x - mean) * rstd``.
        rstd: ``(*rows, 1, ..., 1)``, as ``torch.native_layer_norm`` returns it.
        output_mask: which of ``(grad_x, grad_weight, grad_bias)`` to compute (the others are None).

    Returns:
        ``(grad_x, grad_weight, grad_bias)``: like ``grad_output``, ``normalized_shape``, ``normalized_shape``.
    """
    grad_x, grad_weight, grad_bias = torch.ops.aten.native_layer_norm_backward(
        grad_output, x_hat, normalized_shape, torch.zeros_like(rstd), torch.ones_like(rstd), weight, bias,
        list(output_mask))
    if grad_x is not None:
        grad_x = (grad_x * rstd).to(grad_x.dtype)
    return grad_x, grad_weight, grad_bias


class QuantizedNormalisedLayerNormFunction(Function):
    """``F.layer_norm`` keeping its normalised input quantized instead of its whole input.

    ``apply(x, weight, bias, normalized_shape, eps, bits)``; ``weight`` / ``bias`` may be None. The forward is
    ``torch.native_layer_norm``'s (what ``nn.LayerNorm`` runs). Saves ``weight`` and ``bias`` (parameters:
    no memory), ``rstd`` ``(*rows, 1, ..., 1)`` (float32 for float32 and half inputs) and the
    :class:`~mmseg_actcomp.compression.Quantized` ``x_hat`` (``bits`` per element, a range per (sample,
    feature): :func:`sample_feature_planes`). Backward is :func:`layer_norm_backward` on the dequantized
    ``x_hat``: torch's exact gradients for the input ``mean + x_hat' / rstd``, within half a quantization step
    (over ``rstd``) of the true one, with the forward's statistics. ``grad_beta`` is exact.
    """

    @staticmethod
    def forward(ctx, x: Tensor, weight: Optional[Tensor], bias: Optional[Tensor], normalized_shape: List[int],
                eps: float, bits: int) -> Tensor:
        out, mean, rstd = torch.native_layer_norm(x, normalized_shape, weight, bias, eps)
        with torch.no_grad():  # in the dtype the kernel normalised in (float32 under autocast)
            x_hat = ((x - mean) * rstd).to(out.dtype)
            quantized = quantize(sample_feature_planes(x_hat, len(normalized_shape)), bits)
        ctx.normalized_shape = list(normalized_shape)
        ctx.shape = x.shape
        ctx.quantized_meta = quantized[3:]
        ctx.save_for_backward(weight, bias, rstd, *quantized.tensors)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output: Tensor):
        weight, bias, rstd, *quantized = ctx.saved_tensors
        planes = dequantize(Quantized(*quantized, *ctx.quantized_meta))
        x_hat = from_sample_feature_planes(planes, ctx.shape).to(grad_output.dtype)
        grads = layer_norm_backward(grad_output, x_hat, rstd, ctx.normalized_shape, weight, bias,
                                    ctx.needs_input_grad[:3])
        return (*grads, None, None, None)


class LeanLayerNorm(nn.LayerNorm):
    """``nn.LayerNorm`` keeping its normalised input quantized for backward instead of its whole input.

    With ``input_bits`` None it is stock ``nn.LayerNorm`` (keeps its input whole: exact gradients). With
    ``input_bits`` it keeps ``x_hat`` in that many bits per element, a range per (sample, feature), and ``rstd``
    per row (:class:`QuantizedNormalisedLayerNormFunction`): the same forward, bit for bit; input and
    ``gamma`` gradients those of an input within half a quantization step of ``x_hat``; ``beta``'s exact.
    Parameters and state-dict keys are those of ``nn.LayerNorm`` (``elementwise_affine=False`` and
    ``bias=False`` included).

    Args:
        Those of ``nn.LayerNorm``, then ``input_bits`` (None, or one of
        :data:`~mmseg_actcomp.compression.QUANTIZATION_BITS`).
    """

    def __init__(self, normalized_shape, eps: float = 1e-5, elementwise_affine: bool = True, bias: bool = True,
                 device=None, dtype=None, input_bits: Optional[int] = None) -> None:
        super().__init__(normalized_shape, eps, elementwise_affine, bias, device, dtype)
        self.input_bits = input_bits

    input_bits = validated_attribute('input_bits', optional_bits('input_bits'))

    @classmethod
    def from_module(cls, norm: nn.LayerNorm, input_bits: Optional[int] = None) -> 'LeanLayerNorm':
        """A layer with ``norm``'s hyper-parameters and training flag sharing its Parameter objects
        (``new.weight is norm.weight``)."""
        if not isinstance(norm, nn.LayerNorm):
            raise TypeError(f'LeanLayerNorm.from_module expects an nn.LayerNorm, got {type(norm).__name__}')
        # Built on the meta device: its own parameters are replaced right away.
        new = cls(norm.normalized_shape, norm.eps, norm.elementwise_affine, norm.bias is not None,
                  device='meta', input_bits=input_bits)
        for name in list(new._parameters):
            setattr(new, name, getattr(norm, name))
        return new.train(norm.training)

    def extra_repr(self) -> str:
        return f'{super().extra_repr()}, input_bits={self.input_bits}'

    def forward(self, x: Tensor) -> Tensor:
        """x: ``(*rows, *normalized_shape)``, e.g. ``(B, N, C)`` tokens; returns the same shape."""
        if self.input_bits is None or not _grad_needed(x, self.weight, self.bias):
            return super().forward(x)
        return QuantizedNormalisedLayerNormFunction.apply(x, self.weight, self.bias, list(self.normalized_shape),
                                                          self.eps, self.input_bits)
