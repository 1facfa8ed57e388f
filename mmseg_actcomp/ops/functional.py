r"""Convolution and linear layer whose backward takes the weight gradient from a compressed copy of
their input.

``grad_input`` needs only the weight and ``grad_output``, and ``grad_bias`` only ``grad_output``; only
``grad_weight`` needs the input. So the forward runs the exact convolution (linear map) and keeps, instead
of ``x: (B, C, H, W)`` (``x: (..., C)``), a truncated Tucker decomposition of it (see
:mod:`mmseg_actcomp.compression`).

Convolution. The weight gradient ``dW = sum_b corr(x_b, g_b)`` is bilinear in the input and ``grad_output``, which lets
two factors of the decomposition be applied to the (small) gradient rather than expanded into the input:

* batch factor ``U_1: (B, r1)``: ``sum_b corr(sum_j U_1[b, j] Z_j, g_b) = sum_j corr(Z_j, (U_1^T g)_j)``, so
  the correlation runs over ``r1`` pseudo-samples ``Z = core x_2 U_2 x_3 U_3 x_4 U_4`` instead of ``B``;
* channel factor ``U_2: (C, r2)``, when ``groups == 1``: every output channel sees every input channel,
  so ``dW[o, c] = sum_s U_2[c, s] dW'[o, s]`` with ``dW'`` the correlation of the channel-reduced
  ``Z' = core x_3 U_3 x_4 U_4: (r1, r2, H, W)``; the correlation shrinks by ``C / r2``. With grouped
  convolutions ``U_2`` mixes channels across groups, so it is expanded instead.

The spatial factors are expanded (a correlation shifts along H and W, so they do not commute with it).

Linear layer. ``dW = sum_p g[p]^T x[p]`` over the leading positions ``p`` is bilinear too, and with no shift
every factor commutes with it: the leading (batch, token, spatial) factors are applied to ``g`` and the
channel factor to the small product last (:func:`linear_weight_from_tucker`); nothing is expanded.
"""
from typing import Optional, Sequence, Tuple

import torch
from torch import Tensor
from torch.autograd.function import Function, once_differentiable
from torch.nn.grad import conv2d_input, conv2d_weight
from torch.nn.modules.utils import _pair

from ..compression import Tucker, autocast_disabled, mode_cross, mode_product, multi_mode_product

#: the channel mode of an NCHW activation (its Tucker factor is the channel basis)
CHANNEL_MODE = 1
_SPATIAL_MODES = (2, 3)


def autocast_layer_args(x: Tensor, weight: Tensor, bias: Optional[Tensor]
                        ) -> Tuple[Tensor, Tensor, Optional[Tensor]]:
    """``(x, weight, bias)`` cast as autocast casts a convolution's or a linear layer's arguments (both are on
    its lower-precision list; unchanged outside autocast), so that a custom layer's backward meets the
    dtypes its forward ran in. Shapes unchanged."""
    if x.is_floating_point() and torch.is_autocast_enabled(x.device.type):
        dtype = torch.get_autocast_dtype(x.device.type)
        return x.to(dtype), weight.to(dtype), None if bias is None else bias.to(dtype)
    return x, weight, bias


def conv2d_weight_from_tucker(tucker: Tucker, weight_size: Sequence[int], grad_output: Tensor,
                              stride: Tuple[int, int], padding: Tuple[int, int],
                              dilation: Tuple[int, int], groups: int) -> Tensor:
    r"""``torch.nn.grad.conv2d_weight(reconstruct(tucker), weight_size, grad_output, ...)`` without
    reconstructing the whole input (see the module docstring).

    Args:
        tucker: decomposition of the input ``(B, C, H, W)`` along any subset of its modes.
        weight_size: ``(O, C / groups, kH, kW)``.
        grad_output: ``(B, O, H', W')``.
        stride, padding, dilation: pairs, as in the forward convolution (numeric padding only).
        groups: as in the forward convolution.

    Returns:
        ``(O, C / groups, kH, kW)`` in the dtype of ``tucker.core``.
    """
    core, (batch_basis, channel_basis, *_) = tucker.core, tucker.factors
    if core.numel() == 0:
        # Rank 0: the input was all zero, and so is its weight gradient.
        return core.new_zeros(weight_size)
    grad_output = grad_output.to(core.dtype)
    if batch_basis is not None:
        grad_output = mode_product(grad_output, batch_basis.mT, 0)
    push_channels = groups == 1 and channel_basis is not None
    expand = {n: tucker.factors[n] for n in _SPATIAL_MODES if tucker.factors[n] is not None}
    if channel_basis is not None and not push_channels:
        expand[CHANNEL_MODE] = channel_basis
    pseudo_input = multi_mode_product(core, expand)
    if not push_channels:
        return conv2d_weight(pseudo_input, weight_size, grad_output, stride, padding, dilation, groups)
    reduced_size = (weight_size[0], channel_basis.shape[1]) + tuple(weight_size[2:])
    reduced = conv2d_weight(pseudo_input, reduced_size, grad_output, stride, padding, dilation, groups)
    return mode_product(reduced, channel_basis, CHANNEL_MODE)


def save_weight_and_tucker(ctx, weight: Tensor, tucker: Tucker) -> None:
    """What a compressed layer's autograd function keeps: the weight only if its input needs a gradient
    (``grad_input`` reads nothing else), the tensors of ``tucker`` only if the weight needs one, nothing
    derived from the input otherwise, so ``torch.autograd.graph.saved_tensors_hooks`` see exactly what is
    kept. Read back by :func:`saved_weight_and_tucker`."""
    needs_x_grad, needs_weight_grad = ctx.needs_input_grad[:2]
    ctx.weight_shape = weight.shape
    ctx.tucker_modes = tucker.modes
    kept_tucker = tucker.tensors if needs_weight_grad else ()
    ctx.save_for_backward(weight if needs_x_grad else None, *kept_tucker)


def saved_weight_and_tucker(ctx) -> Tuple[Optional[Tensor], Optional[Tucker]]:
    """``(weight, tucker)`` as :func:`save_weight_and_tucker` kept them (None where not kept)."""
    weight, *tucker_tensors = ctx.saved_tensors
    return weight, Tucker.from_tensors(tucker_tensors, ctx.tucker_modes) if tucker_tensors else None


class CompressedConv2dFunction(Function):
    """``F.conv2d`` saving a :class:`Tucker` decomposition of the input instead of the input.

    ``apply(x, weight, bias, tucker, stride, padding, dilation, groups)``; ``tucker`` decomposes ``x``
    and is computed by the caller (under no_grad). Saves what :func:`save_weight_and_tucker` says. Not
    twice differentiable.
    """

    @staticmethod
    def forward(x: Tensor, weight: Tensor, bias: Optional[Tensor], tucker: Tucker,
                stride: Tuple[int, int], padding: Tuple[int, int], dilation: Tuple[int, int],
                groups: int) -> Tensor:
        return torch.nn.functional.conv2d(x, weight, bias, stride, padding, dilation, groups)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        x, weight, _, tucker, stride, padding, dilation, groups = inputs
        ctx.conv_args = (stride, padding, dilation, groups)
        ctx.input_shape = x.shape
        save_weight_and_tucker(ctx, weight, tucker)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output: Tensor):
        weight, tucker = saved_weight_and_tucker(ctx)
        needs_x_grad, needs_weight_grad, needs_bias_grad = ctx.needs_input_grad[:3]
        grad_x = grad_weight = grad_bias = None
        if needs_x_grad:
            grad_x = conv2d_input(ctx.input_shape, weight, grad_output, *ctx.conv_args)
        if needs_weight_grad:
            # A backward called inside an autocast region would otherwise recast the factors.
            with autocast_disabled(grad_output.device.type):
                grad_weight = conv2d_weight_from_tucker(tucker, ctx.weight_shape, grad_output,
                                                        *ctx.conv_args)
        if needs_bias_grad:
            grad_bias = grad_output.sum((0, 2, 3))
        return grad_x, grad_weight, grad_bias, None, None, None, None, None


def compressed_conv2d(x: Tensor, weight: Tensor, bias: Optional[Tensor], tucker: Tucker, stride=1,
                      padding=0, dilation=1, groups: int = 1) -> Tensor:
    """``F.conv2d(x, weight, bias, stride, padding, dilation, groups)`` that keeps ``tucker`` for backward.

    Args:
        x: ``(B, C, H, W)``.
        weight: ``(O, C / groups, kH, kW)``.
        bias: ``(O,)`` or None.
        tucker: decomposition of ``x`` (e.g. :func:`mmseg_actcomp.compression.hosvd`); the weight gradient
            is that of its reconstruction, exact for ``x`` when it is exact.
        stride, dilation: int or pair.
        padding: int or pair of zero padding (pad explicitly first for anything else).
        groups: number of channel groups.

    Returns:
        ``(B, O, H', W')``; input and bias gradients are exact.
    """
    return CompressedConv2dFunction.apply(x, weight, bias, tucker, _pair(stride), _pair(padding),
                                          _pair(dilation), groups)


def linear_weight_from_tucker(tucker: Tucker, grad_output: Tensor) -> Tensor:
    r"""The weight gradient of ``F.linear(reconstruct(tucker), W)``, ``dW = sum_p g[p]^T x_hat[p]`` over the
    leading positions ``p``, from the factors, without reconstructing ``x_hat``.

    With ``x_hat = S x_0 U_0 ... x_{L-1} U_{L-1} x_L U_C`` (``L`` the last, channel, mode; a mode kept whole
    has no factor) every factor commutes with the sum over ``p``:

        ``dW = (G'_(L) S_(L)^T) U_C^T``,  ``G' = g x_0 U_0^T ... x_{L-1} U_{L-1}^T``

    ``g: (I_0, ..., I_{L-1}, O)`` -> ``G': (r_0, ..., r_{L-1}, O)`` (the leading factors applied to the
    gradient, as :func:`conv2d_weight_from_tucker` applies the batch one) -> ``G'_(L) S_(L)^T: (O, r_C)``
    (a contraction over the small core, :func:`~mmseg_actcomp.compression.mode_cross`) -> ``(O, C)``.
    Kept whole (no factor anywhere), it is ``g``'s and ``x``'s own ``G_(L) X_(L)^T``.

    Args:
        tucker: decomposition of the input ``(I_0, ..., I_{L-1}, C)`` (``L >= 1``) along any subset of its
            modes.
        grad_output: ``(I_0, ..., I_{L-1}, O)``.

    Returns:
        ``(O, C)`` in the dtype of ``tucker.core``.
    """
    core, factors = tucker.core, tucker.factors
    channel = core.dim() - 1
    if core.numel() == 0:
        # Rank 0: the input was all zero, and so is its weight gradient.
        return core.new_zeros(grad_output.shape[-1], tucker.shape[channel])
    leading = {n: u.mT for n, u in enumerate(factors[:channel]) if u is not None}
    reduced = multi_mode_product(grad_output.to(core.dtype), leading)  # G': (r_0, ..., r_{L-1}, O)
    grad_weight = mode_cross(reduced, core, channel)  # (O, r_C)
    channel_basis = factors[channel]
    return grad_weight if channel_basis is None else grad_weight @ channel_basis.mT.to(core.dtype)


class CompressedLinearFunction(Function):
    """``F.linear`` saving a :class:`Tucker` decomposition of the input instead of the input.

    ``apply(x, weight, bias, tucker)``; ``tucker`` decomposes ``x: (..., C)`` and is computed by the
    caller (under no_grad). Saves what :func:`save_weight_and_tucker` says. Input and bias gradients are
    exact (``grad_output @ W``, ``sum_p grad_output[p]``), the weight gradient is
    :func:`linear_weight_from_tucker`'s. Not twice differentiable.
    """

    @staticmethod
    def forward(x: Tensor, weight: Tensor, bias: Optional[Tensor], tucker: Tucker) -> Tensor:
        out = torch.nn.functional.linear(x, weight, bias)
        # F.linear returns the (B*N, C') product viewed as (B, N, C') for a 3-d input: autograd forbids
        # modifying a custom Function's view output in place (mmdet's FFN: ReLU(inplace=True) after it)
        return out.clone() if out._is_view() else out

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        _, weight, _, tucker = inputs
        save_weight_and_tucker(ctx, weight, tucker)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output: Tensor):
        weight, tucker = saved_weight_and_tucker(ctx)
        needs_x_grad, needs_weight_grad, needs_bias_grad = ctx.needs_input_grad[:3]
        grad_x = grad_weight = grad_bias = None
        if needs_x_grad:
            grad_x = grad_output @ weight
        if needs_weight_grad:
            # A backward called inside an autocast region would otherwise recast the factors.
            with autocast_disabled(grad_output.device.type):
                grad_weight = linear_weight_from_tucker(tucker, grad_output)
        if needs_bias_grad:
            grad_bias = grad_output.sum(tuple(range(grad_output.dim() - 1)))
        return grad_x, grad_weight, grad_bias, None


def compressed_linear(x: Tensor, weight: Tensor, bias: Optional[Tensor], tucker: Tucker) -> Tensor:
    """``F.linear(x, weight, bias)`` that keeps ``tucker`` for backward.

    Args:
        x: ``(..., C)`` with at least one leading mode: ``(B, C)``, ``(B, N, C)``, ``(B, H, W, C)``.
        weight: ``(O, C)``.
        bias: ``(O,)`` or None.
        tucker: decomposition of ``x``; the weight gradient is that of its reconstruction, exact for ``x``
            when it is exact.

    Returns:
        ``(..., O)``; input and bias gradients are exact.
    """
    return CompressedLinearFunction.apply(x, weight, bias, tucker)
