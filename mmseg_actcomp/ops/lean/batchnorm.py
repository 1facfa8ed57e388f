r"""Lean versions of the layers around a compressed convolution: they keep for backward only what the
input gradient (and their own parameter gradients) need, never a full-size activation.

Compressing a convolution's input frees nothing while the layers next to it keep that tensor anyway.
Stock autograd, in a fine-tuned ResNet block or mmcv ``ConvModule``, keeps:

* ``ReluBackward0``: the ReLU's full output (the very tensor the next conv reads). Its backward needs
  only the sign pattern: :class:`PackedMaskReLU` keeps it packed 8 per byte (``ceil(numel / 8)`` bytes).
* ``NativeBatchNormBackward0``: the BN's full input, even in eval mode with frozen affine parameters.
  With running statistics BN is the per-channel affine map ``y = x * s + t``: :class:`LeanBatchNorm2d`
  takes the input gradient from ``s`` alone and, only if ``gamma`` is trainable, keeps the normalised
  input ``x_hat`` compressed like the convolutions' inputs.
* ``ConvolutionBackward0`` of a frozen conv (e.g. a block's ``downsample``): its full input, although
  with the weight frozen only ``grad_input`` (from the weight alone) is wanted: :class:`LeanConv2d`.
* ``AdaptiveAvgPool2DBackward0`` (PSPNet's pyramid pooling): its full input, of which backward reads
  only the shape: :class:`LeanAdaptiveAvgPool2d`.
* ``nn.Dropout``: a full-size mask (a byte per element); ``nn.Dropout2d`` (decode heads) a ``(B, C, 1, 1)``
  noise tensor. :class:`RegeneratedDropout` keeps a seed and regenerates the mask in backward.

Residual adds (``AddBackward0``), ``torch.cat``, bilinear resizes and global average pooling (a ``mean``)
keep nothing full-size already.

:func:`make_lean` swaps all of these into a module tree in place, sharing parameters and buffers, so
state-dict keys, optimizers and checkpoints are unaffected. Every input gradient stays exact; only the
trainable ``gamma`` of a lean BN gets the gradient of its compressed ``x_hat`` (exact at ``eps = 1`` or
for method ``'none'``).

Pure torch: no mmseg / mmcv imports.
"""
import math
import warnings
from typing import Callable, Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import Function, once_differentiable
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.utils import _pair

from ...compression import (METHODS, Quantized, Tucker, autocast_disabled, compress, dequantize, mode_product,
                            multi_mode_product, pack_codes, quantize, unpack_codes, validate_bits,
                            validate_explained_variance)
from ..functional import CHANNEL_MODE, autocast_conv_args, compressed_conv2d

#: what a lean BN keeps of ``x_hat`` when ``gamma`` is trainable: a truncated decomposition, or (``'none'``)
#: the whole tensor, as stock BN would.
LEAN_METHODS = ('none',) + tuple(METHODS)


def _validate_method(method: str) -> str:
    if method not in LEAN_METHODS:
        raise ValueError(f'method={method!r} is not one of {list(LEAN_METHODS)}')
    return method


def _validate_input_bits(bits: Optional[int]) -> Optional[int]:
    if bits is None:
        return None
    try:
        return validate_bits(bits)
    except ValueError as e:
        raise ValueError(f'input_bits: {e} (or None to keep the input whole)') from None


def validated_attribute(name: str, validate: Callable) -> property:
    """An attribute whose every assignment goes through ``validate`` (which returns the value to store)."""
    private = f'_{name}'
    return property(lambda self: getattr(self, private),
                    lambda self, value: setattr(self, private, validate(value)))


def _grad_needed(*tensors: Optional[Tensor]) -> bool:
    """Whether autograd will record an op on ``tensors`` (grad mode on and one of them requires grad)."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


# --------------------------------------------------------------------------------------- bit packing


def pack_bits(mask: Tensor) -> Tensor:
    """Pack a boolean tensor 8 elements per byte (any shape and memory format, logical order).

    Returns:
        ``(ceil(numel / 8),)`` uint8: bit ``j`` of byte ``i`` holds element ``8 * i + j``.
    """
    return pack_codes(mask, 1)


def unpack_bits(packed: Tensor, shape: torch.Size) -> Tensor:
    """Inverse of :func:`pack_bits`: the bool tensor of ``shape`` (contiguous) that ``packed`` holds."""
    return unpack_codes(packed, 1, math.prod(shape)).view(torch.bool).view(shape)


# --------------------------------------------------------------------------------------------- ReLU


def _relu(x: Tensor, max_value: Optional[float], inplace: bool) -> Tensor:
    """Exactly what ``nn.ReLU`` (``max_value`` None) or ``nn.ReLU6`` / ``nn.Hardtanh(0, max_value)`` run."""
    if max_value is None:
        return F.relu(x, inplace=inplace)
    return F.hardtanh(x, 0.0, max_value, inplace=inplace)


def _relu_passes(y: Tensor, max_value: Optional[float]) -> Tensor:
    """Where the gradient passes, read off the output ``y``, by torch's own rules: ``threshold_backward``
    zeroes where ``result <= 0`` and ``hardtanh_backward`` where ``x <= min or x >= max``; written as
    negations so that NaN lets the gradient through, as in torch (for ReLU6 only torch's scalar CPU loop
    and CUDA kernel do; its vectorised CPU loop zeroes NaN). On ``y`` = clamp(x) the hardtanh rule gives
    the same set as on ``x``."""
    blocked = y <= 0
    if max_value is not None:
        blocked |= y >= max_value
    return ~blocked


class PackedMaskReLUFunction(Function):
    """ReLU / ReLU6 keeping only the packed mask of where the gradient passes.

    ``apply(x, max_value, inplace)``: ``max_value`` None for ReLU, 6.0 for ReLU6. Saves one uint8 tensor
    ``(ceil(numel / 8),)``. ``inplace`` rectifies ``x`` itself and marks it dirty, as ``F.relu_`` does,
    so autograd rebases ``x``'s history (a view included) and its version counter catches later misuse.
    """

    @staticmethod
    def forward(x: Tensor, max_value: Optional[float], inplace: bool) -> Tensor:
        return _relu(x, max_value, inplace)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        x, max_value, inplace = inputs
        if inplace:
            ctx.mark_dirty(x)
        ctx.shape = output.shape
        ctx.save_for_backward(pack_bits(_relu_passes(output, max_value)))

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output: Tensor):
        packed, = ctx.saved_tensors
        passes = unpack_bits(packed, ctx.shape)
        # masked_fill writes +0 where blocked, as threshold_backward / hardtanh_backward do, and keeps
        # grad_output's memory format.
        return grad_output.masked_fill(~passes, 0), None, None


def packed_mask_relu(x: Tensor, max_value: Optional[float] = None, inplace: bool = False) -> Tensor:
    """``F.relu(x)`` (or ``F.hardtanh(x, 0, max_value)``) with a bit-packed mask kept for backward.

    Args:
        x: any shape, dtype and memory format.
        max_value: None for ReLU, the upper clamp (6.0) for ReLU6.
        inplace: rectify ``x`` in place (not on a leaf that requires grad, as with ``F.relu_``).

    Returns:
        Tensor like ``x`` (``x`` itself when ``inplace``), bit-identical to torch's, whose gradient is
        bit-identical to torch's too.
    """
    if not _grad_needed(x):
        return _relu(x, max_value, inplace)
    return PackedMaskReLUFunction.apply(x, max_value, inplace)


class PackedMaskReLU(nn.Module):
    """Drop-in for ``nn.ReLU`` (``max_value=None``) and ``nn.ReLU6`` (``max_value=6.0``) that keeps
    ``ceil(numel / 8)`` bytes for backward instead of its full output. No parameters or buffers.

    Args:
        inplace: as ``nn.ReLU(inplace=...)``: the output is the input tensor, rectified.
        max_value: None, or the upper clamp (the gradient passes where ``0 < y < max_value``).
    """

    def __init__(self, inplace: bool = False, max_value: Optional[float] = None) -> None:
        super().__init__()
        self.inplace = inplace
        self.max_value = None if max_value is None else float(max_value)

    @classmethod
    def from_module(cls, module: nn.Module) -> 'PackedMaskReLU':
        """The lean twin of an ``nn.ReLU`` or ``nn.ReLU6`` (same ``inplace``)."""
        if type(module) is nn.ReLU:
            return cls(module.inplace)
        if type(module) is nn.ReLU6:
            return cls(module.inplace, module.max_val)
        raise TypeError(f'PackedMaskReLU.from_module expects nn.ReLU or nn.ReLU6, got '
                        f'{type(module).__name__}')

    def forward(self, x: Tensor) -> Tensor:
        return packed_mask_relu(x, self.max_value, self.inplace)

    def extra_repr(self) -> str:
        parts = ['inplace=True'] if self.inplace else []
        if self.max_value is not None:
            parts.append(f'max_value={self.max_value}')
        return ', '.join(parts)


# ---------------------------------------------------------------------------------------- BatchNorm


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


def _memory_format(x: Tensor) -> torch.memory_format:
    """``torch.channels_last`` for a 4-d channels-last tensor, else ``torch.contiguous_format``."""
    if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


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


# ------------------------------------------------------------------------------------- frozen conv

# What a frozen weight needs kept of the input: nothing. CompressedConv2dFunction saves its decomposition
# only when the weight needs a gradient, so an empty one is never stored.
_NOTHING = Tucker(torch.empty(0), ())


class LeanConv2d(nn.Conv2d):
    """``nn.Conv2d`` that, while its weight is frozen, keeps only the weight for backward.

    Stock autograd keeps a convolution's input whenever the input needs a gradient, even though
    ``grad_input`` needs only the weight; a frozen conv inside a fine-tuned region (a ResNet block's
    ``downsample``) would keep a full activation. With ``weight.requires_grad`` False this layer runs
    :func:`~mmseg_actcomp.ops.compressed_conv2d` with no decomposition (exact input and bias gradients);
    with a trainable weight, string padding, a non-zero ``padding_mode`` or no gradient wanted it is stock
    ``nn.Conv2d``.
    Parameters and state-dict keys are those of ``nn.Conv2d``.
    """

    @classmethod
    def from_conv(cls, conv: nn.Conv2d) -> 'LeanConv2d':
        """A layer with ``conv``'s hyper-parameters and training flag sharing its Parameter objects."""
        return conv_twin(cls, conv)

    def forward(self, x: Tensor) -> Tensor:
        """x: ``(B, C, H, W)`` or unbatched ``(C, H, W)``; returns ``(B, O, H', W')`` (resp. unbatched)."""
        return frozen_weight_conv2d(self, x)


def conv_twin(cls: type, conv: nn.Conv2d, **kwargs) -> nn.Conv2d:
    """An instance of ``cls`` (an ``nn.Conv2d`` subclass taking ``kwargs`` besides the conv's own
    arguments) with ``conv``'s hyper-parameters and training flag, sharing its Parameter objects
    (``twin.weight is conv.weight``), so that optimizers and checkpoints see the same tensors."""
    if not isinstance(conv, nn.Conv2d):
        raise TypeError(f'from_conv expects an nn.Conv2d, got {type(conv).__name__}')
    # Built on the meta device: its own parameters are replaced right away, so allocate none.
    twin = cls(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
               conv.dilation, conv.groups, conv.bias is not None, conv.padding_mode, device='meta',
               dtype=conv.weight.dtype, **kwargs)
    twin.weight = conv.weight
    twin.bias = conv.bias
    return twin.train(conv.training)


def explicit_padding(conv: nn.Conv2d, x: Tensor) -> Tuple[Tensor, Tuple[int, int]]:
    """``x: (B, C, H, W)`` padded as far as ``F.conv2d``'s symmetric zero padding cannot do what ``conv``'s
    padding says (string padding resolved to an asymmetric ``'same'``, a non-zero ``padding_mode``: all
    of it, with ``F.pad``, as ``nn.Conv2d`` pads for non-zero modes), and the zero padding
    ``(pad_h, pad_w)`` left for the convolution. For a custom convolution that keeps something derived
    from its (padded) input."""
    w_left, w_right, h_top, h_bottom = conv._reversed_padding_repeated_twice
    if conv.padding_mode == 'zeros' and w_left == w_right and h_top == h_bottom:
        return x, (h_top, w_left)
    mode = 'constant' if conv.padding_mode == 'zeros' else conv.padding_mode
    return F.pad(x, conv._reversed_padding_repeated_twice, mode=mode), (0, 0)


def frozen_weight_conv2d(conv: nn.Conv2d, x: Tensor) -> Tensor:
    """``conv(x)`` keeping only the weight for backward while ``conv.weight`` is frozen (exact input and
    bias gradients); ``nn.Conv2d.forward`` where that cannot help: a trainable weight, no gradient wanted,
    string padding or a non-zero ``padding_mode``.

    Args:
        conv: any ``nn.Conv2d`` (its own ``forward`` is not called).
        x: ``(B, C, H, W)`` or unbatched ``(C, H, W)``.

    Returns:
        ``(B, O, H', W')`` (resp. unbatched), what ``nn.Conv2d.forward`` returns.
    """
    # Non-zero padding modes pad with F.pad first, whose reflect/replicate/circular backward keeps the
    # input anyway; string padding has no numeric form for the input-gradient kernel.
    if (conv.weight.requires_grad or conv.padding_mode != 'zeros' or isinstance(conv.padding, str)
            or not _grad_needed(x, conv.bias)):
        return nn.Conv2d.forward(conv, x)
    if x.dim() == 3:
        return frozen_weight_conv2d(conv, x.unsqueeze(0)).squeeze(0)
    x, weight, bias = autocast_conv_args(x, conv.weight, conv.bias)
    return compressed_conv2d(x, weight, bias, _NOTHING, conv.stride, conv.padding, conv.dilation, conv.groups)


# ------------------------------------------------------------------------------------------ pooling


class ShapeOnlyAdaptiveAvgPool2dFunction(Function):
    """``F.adaptive_avg_pool2d`` keeping only the input's shape, dtype, device and memory format:
    ``_adaptive_avg_pool2d_backward`` reads nothing else of the input, but stock autograd keeps it whole.

    ``apply(x, output_size)``. Saves no tensor. Only for output sizes other than ``(1, 1)`` (torch runs
    those as a ``mean``, which keeps nothing anyway).
    """

    @staticmethod
    def forward(x: Tensor, output_size) -> Tensor:
        return F.adaptive_avg_pool2d(x, output_size)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        x, _ = inputs
        ctx.input_meta = (x.shape, x.dtype, x.device)
        ctx.memory_format = _memory_format(x)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output: Tensor):
        shape, dtype, device = ctx.input_meta
        # The kernel takes the input only for its sizes and memory format: an uninitialised stand-in.
        stand_in = torch.empty(shape, dtype=dtype, device=device, memory_format=ctx.memory_format)
        return torch.ops.aten._adaptive_avg_pool2d_backward(grad_output, stand_in), None


class LeanAdaptiveAvgPool2d(nn.AdaptiveAvgPool2d):
    """``nn.AdaptiveAvgPool2d`` keeping nothing of its input for backward (stock autograd keeps it whole
    for output sizes other than 1, e.g. PSPNet's pyramid pooling at scales 2, 3 and 6). Bit-identical
    output and gradient."""

    @classmethod
    def from_module(cls, module: nn.AdaptiveAvgPool2d) -> 'LeanAdaptiveAvgPool2d':
        return cls(module.output_size).train(module.training)

    def forward(self, x: Tensor) -> Tensor:
        """x: ``(B, C, H, W)`` or ``(C, H, W)``; returns ``(..., h, w)`` of ``output_size``."""
        size = _pair(self.output_size)
        size = tuple(x.shape[-2 + i] if s is None else s for i, s in enumerate(size))
        if size == (1, 1) or not _grad_needed(x):
            return super().forward(x)
        return ShapeOnlyAdaptiveAvgPool2dFunction.apply(x, size)


# ------------------------------------------------------------------------------------------ Dropout


def _draw_seed() -> int:
    """A seed from the global (CPU) torch RNG, so runs stay reproducible from ``torch.manual_seed``."""
    return int(torch.randint(0, 2**62, (), dtype=torch.int64))


def _dropout_noise(shape: torch.Size, dtype: torch.dtype, device: torch.device, p: float,
                   channelwise: bool, seed: int) -> Tensor:
    """Torch's dropout noise ``bernoulli(1 - p) / (1 - p)``, drawn from a generator seeded with ``seed``,
    hence the same tensor on every call with the same arguments.

    Returns:
        ``shape`` for element-wise dropout, ``(B, C, 1, ..., 1)`` for channel-wise (``nn.Dropout2d``,
        torch's ``feature_dropout``), in ``dtype``.
    """
    noise_shape = tuple(shape[:2]) + (1,) * (len(shape) - 2) if channelwise else tuple(shape)
    generator = torch.Generator(device=device).manual_seed(seed)
    noise = torch.empty(noise_shape, dtype=dtype, device=device).bernoulli_(1 - p, generator=generator)
    if p < 1:
        noise.div_(1 - p)
    return noise


class RegeneratedDropoutFunction(Function):
    """``x * noise`` whose backward regenerates ``noise`` from a seed instead of keeping it.

    ``apply(x, p, channelwise, seed, inplace)``. Saves no tensor: the seed, shape, dtype and device are
    plain attributes of the context.
    """

    @staticmethod
    def forward(x: Tensor, p: float, channelwise: bool, seed: int, inplace: bool) -> Tensor:
        noise = _dropout_noise(x.shape, x.dtype, x.device, p, channelwise, seed)
        return x.mul_(noise) if inplace else x * noise

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        x, p, channelwise, seed, inplace = inputs
        if inplace:
            ctx.mark_dirty(x)
        ctx.noise_args = (x.shape, x.dtype, x.device, p, channelwise, seed)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output: Tensor):
        return grad_output * _dropout_noise(*ctx.noise_args), None, None, None, None


class RegeneratedDropout(nn.Module):
    """Drop-in for ``nn.Dropout`` (``channelwise=False``) and ``nn.Dropout2d`` (``channelwise=True``)
    keeping a seed for backward instead of the mask.

    In training each forward draws a seed from the global torch RNG and builds the noise from it with a
    local ``torch.Generator`` on the input's device; backward rebuilds the identical noise. Semantics are
    torch's (zero with probability ``p``, scale the rest by ``1 / (1 - p)``; whole ``(b, c)`` channels for
    ``channelwise``), though not its random stream. Eval mode, or ``p = 0``, returns the input itself.

    Args:
        p: drop probability in ``[0, 1]``.
        channelwise: drop whole channels of ``(B, C, ...)`` inputs, as ``nn.Dropout2d``.
        inplace: scale the input in place, as ``nn.Dropout(inplace=True)``.
    """

    def __init__(self, p: float = 0.5, channelwise: bool = False, inplace: bool = False) -> None:
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f'dropout probability has to be between 0 and 1, but got {p}')
        self.p = float(p)
        self.channelwise = channelwise
        self.inplace = inplace

    @classmethod
    def from_module(cls, module: nn.Module) -> 'RegeneratedDropout':
        """The lean twin of an ``nn.Dropout`` or ``nn.Dropout2d`` (same ``p``, ``inplace``, training flag)."""
        if type(module) not in (nn.Dropout, nn.Dropout2d):
            raise TypeError(f'RegeneratedDropout.from_module expects nn.Dropout or nn.Dropout2d, got '
                            f'{type(module).__name__}')
        new = cls(module.p, type(module) is nn.Dropout2d, module.inplace)
        return new.train(module.training)

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0 or x.numel() == 0:
            return x
        return RegeneratedDropoutFunction.apply(x, self.p, self.channelwise, _draw_seed(), self.inplace)

    def extra_repr(self) -> str:
        return f'p={self.p}, channelwise={self.channelwise}, inplace={self.inplace}'


# ------------------------------------------------------------------------------------------ swapping


def _lean_twin(module: nn.Module, explained_variance: float, method: str,
               input_bits: Optional[int]) -> Optional[nn.Module]:
    """The lean replacement of ``module``, ``module`` itself if it is lean already (its BN settings
    updated), or None if it has none."""
    kind = type(module)
    if kind in (PackedMaskReLU, RegeneratedDropout, LeanConv2d, LeanAdaptiveAvgPool2d):
        return module
    if kind is LeanBatchNorm2d:
        module.explained_variance, module.method, module.input_bits = explained_variance, method, input_bits
        return module
    if kind in (nn.ReLU, nn.ReLU6):
        return PackedMaskReLU.from_module(module)
    if kind in (nn.Dropout, nn.Dropout2d):
        return RegeneratedDropout.from_module(module)
    if kind is nn.BatchNorm2d:
        return LeanBatchNorm2d.from_bn(module, explained_variance, method, input_bits)
    if kind is nn.Conv2d:
        return LeanConv2d.from_conv(module)
    if kind is nn.AdaptiveAvgPool2d:
        return LeanAdaptiveAvgPool2d.from_module(module)
    if isinstance(module, _BatchNorm):
        warnings.warn(f'make_lean: leaving {kind.__name__} as it is (only nn.BatchNorm2d is made lean); '
                      'it keeps its full input for backward', stacklevel=3)
    return None


def make_lean(module: nn.Module, explained_variance: float, method: str,
              input_bits: Optional[int] = None) -> Dict[str, nn.Module]:
    """Replace, in place, every layer inside ``module`` that keeps a full-size activation it does not
    need by its lean twin, sharing parameters and buffers (state-dict keys unchanged):

    ``nn.ReLU`` / ``nn.ReLU6`` -> :class:`PackedMaskReLU`; ``nn.BatchNorm2d`` -> :class:`LeanBatchNorm2d`
    (``explained_variance`` and ``method`` for a trainable ``gamma`` on running statistics, ``input_bits``
    for batch statistics); ``nn.Dropout`` / ``nn.Dropout2d`` ->
    :class:`RegeneratedDropout`; plain ``nn.Conv2d`` -> :class:`LeanConv2d` (lean only while frozen);
    ``nn.AdaptiveAvgPool2d`` -> :class:`LeanAdaptiveAvgPool2d`.
    Subclasses (compressed convs, ``SyncBatchNorm``, ...) are left alone; other ``_BatchNorm`` layers with
    a warning. ``module`` itself is never replaced (it is the region root, e.g. a ResNet block, an mmcv
    ``ConvModule`` or a decode head). A layer registered under several paths gets one twin at all of them.

    Idempotent: lean layers are kept (a lean BN gets ``explained_variance``, ``method`` and ``input_bits``
    updated).

    Returns:
        path (relative to ``module``) -> the lean layer now there, for every lean layer inside it.
    """
    explained_variance = validate_explained_variance(explained_variance)
    _validate_method(method)
    _validate_input_bits(input_bits)
    twins: Dict[int, Optional[nn.Module]] = {}
    lean = {}
    for path, child in list(module.named_modules(remove_duplicate=False)):
        if not path:
            continue
        if id(child) not in twins:
            twins[id(child)] = _lean_twin(child, explained_variance, method, input_bits)
        twin = twins[id(child)]
        if twin is None:
            continue
        if twin is not child:
            module.set_submodule(path, twin)
        lean[path] = twin
    return lean
