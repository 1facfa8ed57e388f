"""Lean BatchNorm (:class:`LeanBatchNorm2d`), on running statistics and on batch statistics.

Stock autograd's ``NativeBatchNormBackward0`` keeps the BN's full input, even in eval mode with frozen
affine parameters. With running statistics BN is the per-channel affine map ``y = x * s + t``:
:class:`LeanBatchNorm2d` takes the input gradient from ``s`` alone (:class:`RunningStatsBatchNormFunction`)
and, only if ``gamma`` is trainable, keeps the normalised input ``x_hat`` compressed like the convolutions'
inputs (``gamma``'s gradient is exact at ``eps = 1`` or for method ``'none'``). With batch statistics the
exact gradients need the whole input: it is kept quantized to ``input_bits``
(:class:`QuantizedInputBatchNormFunction`), or whole, as stock BN keeps it.
"""
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import Function, once_differentiable

from ...compression import (METHODS, Quantized, Tucker, autocast_disabled, compress, dequantize, mode_product,
                            multi_mode_product, quantize, validate_explained_variance)
from ..functional import CHANNEL_MODE
from .common import _grad_needed, _memory_format, optional_bits, validated_attribute

#: what a lean BN keeps of ``x_hat`` when ``gamma`` is trainable: a truncated decomposition, or (``'none'``)
#: the whole tensor, as stock BN would.
LEAN_METHODS = ('none',) + tuple(METHODS)


def _validate_method(method: str) -> str:
    if method not in LEAN_METHODS:
        raise ValueError(f'method={method!r} is not one of {list(LEAN_METHODS)}')
    return method


_validate_input_bits = optional_bits('input_bits')


def channel_inner_products(tucker: Tucker, grad: Tensor) -> Tensor:
    r"""``sum_{b, h, w} grad[b, c, h, w] * reconstruct(tucker)[b, c, h, w]`` for every channel ``c``,
    without reconstructing: the batch and spatial factors project ``grad`` down
    (``grad x_n U_n^T``), and only the channel factor expands the core.

    Args:
        tucker: decomposition of a ``(B, C, H, W)`` tensor along any subset of its modes.
        grad: ``(B, C, H, W)``, any dtype (computed in the core's dtype).

    Returns:
        ``(C,)`` in the core's dtype.
    """
    core, factors = tucker.core, tucker.factors
    if core.numel() == 0:  # rank 0: the decomposed tensor was all zero
        return core.new_zeros(tucker.shape[CHANNEL_MODE])
    projections = {n: u.mT for n, u in enumerate(factors) if u is not None and n != CHANNEL_MODE}
    reduced_grad = multi_mode_product(grad.to(core.dtype), projections)
    if factors[CHANNEL_MODE] is not None:
        core = mode_product(core, factors[CHANNEL_MODE], CHANNEL_MODE)
    sum_dims = tuple(n for n in range(core.dim()) if n != CHANNEL_MODE)
    return (reduced_grad * core).sum(sum_dims)


def _channel_view(v: Tensor, dim: int) -> Tensor:
    """``(C,)`` -> ``(1, C, 1, ..., 1)`` broadcasting against a ``dim``-d ``(B, C, ...)`` tensor."""
    return v.view((1, -1) + (1,) * (dim - 2))


class RunningStatsBatchNormFunction(Function):
    """``F.batch_norm`` with running statistics (``training=False``) keeping nothing of its input.

    ``apply(x, weight, bias, running_mean, running_var, eps, normalised)``. ``normalised`` is a
    :class:`Tucker` of ``x_hat = (x - mean) / sqrt(var + eps)`` (computed by the caller, under no_grad),
    or None when ``weight`` needs no gradient. Saves: ``weight`` and ``running_var`` (a parameter and a
    buffer; only if ``x`` needs a gradient, which is ``grad_y * weight / sqrt(var + eps)``) and the
    tensors of ``normalised`` (only if ``weight`` needs its gradient ``sum grad_y * x_hat``).
    ``grad_bias = sum grad_y`` needs nothing. Saving the parameter and buffer themselves instead of the
    scale they make costs no memory, and their version counters catch an in-place update before backward.
    """

    @staticmethod
    def forward(x: Tensor, weight: Optional[Tensor], bias: Optional[Tensor], running_mean: Tensor,
                running_var: Tensor, eps: float, normalised: Optional[Tucker]) -> Tensor:
        return F.batch_norm(x, running_mean, running_var, weight, bias, False, 0.0, eps)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        x, weight, _, _, running_var, eps, normalised = inputs
        needs_x_grad, needs_weight_grad = ctx.needs_input_grad[:2]
        ctx.eps = eps
        ctx.dim = x.dim()
        ctx.has_weight = weight is not None
        ctx.normalised_modes = normalised.modes if needs_weight_grad else ()
        kept_scale = (weight, running_var) if needs_x_grad else (None, None)
        kept_normalised = normalised.tensors if needs_weight_grad else ()
        ctx.save_for_backward(*kept_scale, *kept_normalised)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output: Tensor):
        weight, running_var, *normalised = ctx.saved_tensors
        needs_x_grad, needs_weight_grad, needs_bias_grad = ctx.needs_input_grad[:3]
        grad_x = grad_weight = grad_bias = None
        sum_dims = tuple(n for n in range(ctx.dim) if n != CHANNEL_MODE)
        if needs_x_grad:
            scale = torch.rsqrt(running_var + ctx.eps)
            if ctx.has_weight:
                scale = scale * weight
            grad_x = (grad_output * _channel_view(scale, ctx.dim)).to(grad_output.dtype)
        if needs_weight_grad:
            tucker = Tucker.from_tensors(normalised, ctx.normalised_modes)
            with autocast_disabled(grad_output.device.type):
                grad_weight = channel_inner_products(tucker, grad_output)
        if needs_bias_grad:
            grad_bias = grad_output.sum(sum_dims)
        return grad_x, grad_weight, grad_bias, None, None, None, None


class QuantizedInputBatchNormFunction(Function):
    """``F.batch_norm`` on batch statistics (running statistics updated as torch does) keeping its input
    quantized instead of whole.

    ``apply(x, weight, bias, running_mean, running_var, momentum, eps, bits)``; ``running_mean`` /
    ``running_var`` may be None (no tracked statistics). Saves the :class:`Quantized` input (``bits`` per
    element plus a range per ``(b, c)`` plane), the batch mean and inverse std ``(C,)`` and ``weight`` (a
    parameter: no memory). Backward is torch's own ``native_batch_norm_backward`` run on the dequantized
    input, so every gradient is torch's exact one for an input within half a quantization step of the
    true one: ``grad_beta`` is exact, ``grad_x`` and ``grad_gamma`` approximate.
    """

    @staticmethod
    def forward(ctx, x: Tensor, weight: Optional[Tensor], bias: Optional[Tensor],
                running_mean: Optional[Tensor], running_var: Optional[Tensor], momentum: float, eps: float,
                bits: int) -> Tensor:
        out, mean, invstd = torch.native_batch_norm(x, weight, bias, running_mean, running_var, True,
                                                    momentum, eps)
        ctx.eps = eps
        ctx.quantized_meta = (x.shape, x.dtype, bits)
        ctx.memory_format = _memory_format(x)
        ctx.save_for_backward(weight, mean, invstd, *quantize(x, bits).tensors)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output: Tensor):
        weight, mean, invstd, *quantized = ctx.saved_tensors
        x = dequantize(Quantized(*quantized, *ctx.quantized_meta)).contiguous(memory_format=ctx.memory_format)
        grad_x, grad_weight, grad_bias = torch.ops.aten.native_batch_norm_backward(
            grad_output, x, weight, None, None, mean, invstd, True, ctx.eps, list(ctx.needs_input_grad[:3]))
        return grad_x, grad_weight, grad_bias, None, None, None, None, None


class LeanBatchNorm2d(nn.BatchNorm2d):
    """``nn.BatchNorm2d`` that, with running statistics, keeps no full-size activation for backward.

    With running statistics (eval mode, tracked statistics) BN is ``y = x * s + t`` per channel,
    ``s = gamma / sqrt(var + eps)``, ``t = beta - mean * s``: the input gradient ``grad_y * s`` is exact
    from ``gamma`` and ``running_var`` alone. The forward output is ``F.batch_norm``'s own.

    * ``gamma`` frozen: nothing of ``x`` is kept.
    * ``gamma`` trainable: ``grad_gamma = sum_{b,h,w} grad_y * x_hat`` needs ``x_hat = (x - mean) /
      sqrt(var + eps)``: kept as a truncated decomposition by ``method`` and ``explained_variance``, like
      the convolutions' inputs (``'none'``: ``x_hat`` whole, as much as stock BN keeps).
      ``grad_beta = sum grad_y`` is exact and needs nothing.

    With batch statistics (train mode, or no running statistics) the exact input gradient needs the whole
    normalised input. With ``input_bits`` None the layer is then stock ``nn.BatchNorm2d`` and keeps it;
    with ``input_bits`` it keeps the input quantized to that many bits per element
    (:class:`QuantizedInputBatchNormFunction`: same forward and running-statistics update, gradients
    within half a quantization step of the input). Put the layer in eval mode (``norm_eval``, or the
    hook's re-application after each ``model.train()``) for the running-statistics path.

    Attributes set by each forward that keeps ``x_hat`` compressed (None before the first):
        last_ranks: ranks of the decomposition of ``x_hat`` (``()`` for ``'none'``).
        last_kept_bytes: bytes of its core and factors.
        last_vanilla_bytes: ``x.numel() * x.element_size()``: what stock BN keeps.

    Args:
        Those of ``nn.BatchNorm2d``, then ``explained_variance`` (``eps`` of the decomposition, in
        ``(0, 1]``), ``method`` (one of :data:`LEAN_METHODS`) and ``input_bits`` (None, or one of
        :data:`~mmseg_actcomp.compression.QUANTIZATION_BITS`).
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: Optional[float] = 0.1,
                 affine: bool = True, track_running_stats: bool = True, device=None, dtype=None,
                 explained_variance: float = 0.8, method: str = 'hosvd',
                 input_bits: Optional[int] = None) -> None:
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device, dtype)
        self.explained_variance = explained_variance
        self.method = method
        self.input_bits = input_bits
        self.layer_name = type(self).__name__
        self.last_ranks: Optional[Tuple[int, ...]] = None
        self.last_kept_bytes: Optional[int] = None
        self.last_vanilla_bytes: Optional[int] = None

    explained_variance = validated_attribute('explained_variance', validate_explained_variance)
    method = validated_attribute('method', _validate_method)
    input_bits = validated_attribute('input_bits', _validate_input_bits)

    @classmethod
    def from_bn(cls, bn: nn.BatchNorm2d, explained_variance: float = 0.8, method: str = 'hosvd',
                input_bits: Optional[int] = None) -> 'LeanBatchNorm2d':
        """A layer with ``bn``'s hyper-parameters and training flag sharing its Parameter and buffer
        objects (``new.weight is bn.weight``, ``new.running_mean is bn.running_mean``, ...)."""
        if not isinstance(bn, nn.BatchNorm2d):
            raise TypeError(f'from_bn expects an nn.BatchNorm2d, got {type(bn).__name__}')
        # Built on the meta device: its own parameters and buffers are replaced right away.
        new = cls(bn.num_features, bn.eps, bn.momentum, bn.affine, bn.track_running_stats,
                  device='meta', explained_variance=explained_variance, method=method,
                  input_bits=input_bits)
        for name in list(new._parameters):
            setattr(new, name, getattr(bn, name))
        for name in list(new._buffers):
            setattr(new, name, getattr(bn, name))
        return new.train(bn.training)

    def extra_repr(self) -> str:
        return (f'{super().extra_repr()}, explained_variance={self.explained_variance}, method={self.method}, '
                f'input_bits={self.input_bits}')

    def _uses_running_stats(self) -> bool:
        # _BatchNorm.forward's rule: batch statistics in training mode or without running statistics.
        return not self.training and self.running_mean is not None and self.running_var is not None

    def _normalised(self, x: Tensor) -> Tucker:
        """The decomposition of ``x_hat: (B, C, H, W)`` to keep (``x_hat`` whole for ``'none'``)."""
        with torch.no_grad():
            invstd = torch.rsqrt(self.running_var + self.eps)
            x_hat = ((x - _channel_view(self.running_mean, x.dim())) * _channel_view(invstd, x.dim()))
            x_hat = x_hat.to(x.dtype)
        if self.method == 'none':
            tucker = Tucker(x_hat, (None,) * x.dim())
        else:
            tucker = compress(x_hat, self.explained_variance, METHODS[self.method], name=self.layer_name)
        self.last_ranks = tucker.ranks
        self.last_kept_bytes = tucker.nbytes
        self.last_vanilla_bytes = x.numel() * x.element_size()
        return tucker

    def _batch_stats_forward(self, x: Tensor) -> Tensor:
        """Batch statistics, keeping the input quantized (stock BN, keeping it whole, without
        ``input_bits``)."""
        if self.input_bits is None:
            return super().forward(x)
        self._check_input_dim(x)
        # The momentum and counter logic of _BatchNorm.forward (train mode, batch statistics).
        momentum = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:
                momentum = 1.0 / float(self.num_batches_tracked)
        # Here running statistics are either tracked and in training mode (updated) or absent (None).
        return QuantizedInputBatchNormFunction.apply(x, self.weight, self.bias, self.running_mean,
                                                     self.running_var, momentum, self.eps, self.input_bits)

    def forward(self, x: Tensor) -> Tensor:
        """x: ``(B, C, H, W)``; returns ``(B, C, H, W)``."""
        if not _grad_needed(x, self.weight, self.bias):
            return super().forward(x)
        if not self._uses_running_stats():
            return self._batch_stats_forward(x)
        self._check_input_dim(x)
        weight_grad = _grad_needed(self.weight)
        normalised = self._normalised(x) if weight_grad else None
        return RunningStatsBatchNormFunction.apply(x, self.weight, self.bias, self.running_mean,
                                                   self.running_var, self.eps, normalised)
