r"""Gradient Filter (Yang et al., "Efficient On-device Training via Gradient Filtering", CVPR 2023): a
convolution whose backward works on ``R x R`` patches of the output gradient, so that it keeps only its
input summed over the matching patches.

For a convolution with stride ``s`` and patch size ``R``, the output ``(H', W')`` is cut into a grid of
``p_h = ceil(H' / R)`` by ``p_w = ceil(W' / R)`` patches of ``R x R`` output pixels, each of which reads
``(R s_h) x (R s_w)`` input pixels. Both grids are laid centred: the tensor is padded with zeros by
``ceil((p R - size) / 2)`` on top (left) and by the rest at the bottom (right), where a negative pad crops
(:func:`grid_pads`). Assuming the output gradient constant over each patch (its patch mean ``gy_avg``,
partial patches averaged over their valid pixels), every kernel offset sees the same input sum:

* weight gradient: ``dW[o, c, i, j] = sum_{n, patch} gy_avg[n, o, patch] * x_sum[n, c, patch]`` for every
  offset ``(i, j)``, within each group (:func:`grad_weight`); ``x_sum`` (:func:`patch_sum`) is all the
  forward keeps of the input, ``(R s_h)(R s_w)`` times less than the input;
* input gradient (:func:`grad_input`): the gradient of each patch's input sum, broadcast to every input
  pixel of the patch (:func:`patch_broadcast`, the adjoint of :func:`patch_sum`). Per spatial dimension:
  where the dilation ``d`` is below ``R`` (or 1) the kernel's taps fall in one patch and are summed
  (``grad_x_sum[n, c] = sum_o W_sum[o, c] gy_avg[n, o]``); where ``d >= R`` (and ``d > 1``) they fall in
  different patches and are applied at the patch grid's resolution at dilation ``max(1, d // R)`` with
  'same' padding (a transposed convolution of ``gy_avg``), as the paper's code does for dilated convs;
* bias gradient: exact (the sum of the output gradient).

Unlike HOSVD/SVD (:class:`~mmseg_actcomp.ops.CompressedConv2d`), whose input gradients are exact, the
input gradient here is approximate too: it is computed from the patch-averaged output gradient, since the
patch sums are all this layer's backward reads, and it is spread evenly over each patch. With ``R = 1``
a 1x1 stride-1 convolution is exact.

Pure torch: no mmseg / mmcv imports (the layer's registration imports mmengine's registry lazily).
"""
import math
from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import Function, once_differentiable
from torch.nn.grad import conv2d_input, conv2d_weight
from torch.nn.modules.utils import _pair

from ..compression import autocast_disabled
from ..utils.validate import require_integer
from .compressed import register_layers
from .functional import autocast_layer_args
from .lean.common import validated_attribute
from .lean.frozen_conv import conv_twin, explicit_padding, frozen_weight_conv2d

Pair = Tuple[int, int]


def validate_patch_size(patch_size: int) -> int:
    """``patch_size`` if it is an integer >= 1, else ValueError naming the value."""
    require_integer('patch_size', patch_size, 1)
    return patch_size


def patch_grid(output_size: Sequence[int], patch_size: int) -> Pair:
    """``(ceil(H' / R), ceil(W' / R))``: the patches of ``R x R`` that cover an output ``(H', W')``."""
    return tuple(-(-size // patch_size) for size in output_size)


def input_block(patch_size: int, stride: Pair) -> Pair:
    """``(R s_h, R s_w)``: the input pixels one ``R x R`` output patch of a stride-``s`` conv reads."""
    return patch_size * stride[0], patch_size * stride[1]


def grid_pads(size: Sequence[int], block: Pair, grid: Pair) -> Tuple[int, int, int, int]:
    """``F.pad``'s ``(left, right, top, bottom)`` that lay a grid of ``grid`` blocks of ``block`` pixels
    centred over a plane of ``size = (H, W)``: ``ceil((p * b - size) / 2)`` before, the rest after; a
    negative pad crops (the grid is smaller than the plane)."""
    pads = []
    for length, b, p in zip(size, block, grid):
        extra = p * b - length
        before = -(-extra // 2)
        pads.append((before, extra - before))
    (top, bottom), (left, right) = pads
    return left, right, top, bottom


def patch_sum(x: Tensor, block: Pair, grid: Pair) -> Tensor:
    """``x: (B, C, H, W)`` summed over the blocks of a centred grid (:func:`grid_pads`): zero padding
    counts nothing, cropped pixels are left out.

    Returns:
        ``(B, C, p_h, p_w)`` in ``x``'s dtype.
    """
    padded = F.pad(x, grid_pads(x.shape[-2:], block, grid))
    (p_h, p_w), (b_h, b_w) = grid, block
    return padded.unflatten(3, (p_w, b_w)).unflatten(2, (p_h, b_h)).sum((3, 5))


def patch_broadcast(g: Tensor, block: Pair, size: Sequence[int]) -> Tensor:
    """The adjoint of :func:`patch_sum`: ``g: (B, C, p_h, p_w)`` copied to every pixel of its block, then
    cropped (or zero-padded where the grid does not cover the plane) to ``size = (H, W)``.

    Returns:
        ``(B, C, H, W)`` in ``g``'s dtype.
    """
    b_h, b_w = block
    whole = g.repeat_interleave(b_h, dim=2).repeat_interleave(b_w, dim=3)
    left, right, top, bottom = grid_pads(size, block, g.shape[-2:])
    return F.pad(whole, (-left, -right, -top, -bottom))


def patch_mean(g: Tensor, patch_size: int, grid: Pair) -> Tensor:
    """``g: (B, O, H', W')`` averaged over the ``R x R`` patches of a centred grid, each over its pixels
    inside ``g`` (``count_include_pad=False``).

    Returns:
        ``(B, O, p_h, p_w)`` in ``g``'s dtype.
    """
    block = (patch_size, patch_size)
    counts = patch_sum(g.new_ones((1, 1) + tuple(g.shape[-2:])), block, grid)
    return patch_sum(g, block, grid) / counts


def grad_weight(x_sum: Tensor, gy_avg: Tensor, weight_size: Sequence[int], groups: int) -> Tensor:
    """The weight gradient of the filter: ``dW[o, c, i, j] = sum_{n, patch} gy_avg[n, o] x_sum[n, c]`` (input
    channels of ``o``'s group), the same for every kernel offset ``(i, j)``.

    Args:
        x_sum: ``(B, C, p_h, p_w)`` (:func:`patch_sum` of the input).
        gy_avg: ``(B, O, p_h, p_w)`` (:func:`patch_mean` of the output gradient).
        weight_size: ``(O, C / groups, kH, kW)``.
        groups: as in the convolution.

    Returns:
        ``(O, C / groups, kH, kW)`` in ``x_sum``'s dtype.
    """
    per_patch = conv2d_weight(x_sum, tuple(weight_size[:2]) + (1, 1), gy_avg.to(x_sum.dtype), 1, 0, 1, groups)
    return per_patch.expand(tuple(weight_size)).contiguous()


def patch_kernel(weight: Tensor, dilation: Pair, patch_size: int) -> Tuple[Tensor, Pair, Pair]:
    """The kernel the input gradient applies at the patch grid's resolution, with its dilation and the
    'same' padding that keeps the grid's size.

    Per spatial dimension: where ``d >= R`` and ``d > 1`` (the paper's dilated case) the taps stay, at
    dilation ``d' = max(1, d // R)``, padded by ``d' (k - 1) / 2``; elsewhere (``d < R``, or ``d = 1``: the
    taps fall within one patch), or where ``d' (k - 1)`` is odd (an even kernel, whose 'same' padding is
    not symmetric), the taps are summed into one, at dilation 1 with no padding.

    Args:
        weight: ``(O, C / groups, kH, kW)``.

    Returns:
        ``(kernel (O, C / groups, kH or 1, kW or 1), dilation, padding)``.
    """
    kernel, dilations, paddings = weight, [], []
    for dim, (k, d) in enumerate(zip(weight.shape[-2:], dilation)):
        grid_dilation = max(1, d // patch_size)
        if d > 1 and d >= patch_size and grid_dilation * (k - 1) % 2 == 0:
            dilations.append(grid_dilation)
            paddings.append(grid_dilation * (k - 1) // 2)
        else:
            kernel = kernel.sum(2 + dim, keepdim=True)
            dilations.append(1)
            paddings.append(0)
    return kernel, tuple(dilations), tuple(paddings)


def grad_input(gy_avg: Tensor, weight: Tensor, input_size: Sequence[int], patch_size: int, stride: Pair,
               dilation: Pair, groups: int) -> Tensor:
    """The filter's (approximate) input gradient: the transposed convolution of ``gy_avg`` with
    :func:`patch_kernel` at the patch grid's resolution, broadcast to every input pixel of its patch
    (:func:`patch_broadcast`), zero where the grid does not cover the input.

    Args:
        gy_avg: ``(B, O, p_h, p_w)`` (:func:`patch_mean` of the output gradient).
        weight: ``(O, C / groups, kH, kW)``.
        input_size: ``(B, C, H, W)``.
        patch_size: ``R``.
        stride, dilation: pairs, as in the convolution.
        groups: as in the convolution.

    Returns:
        ``(B, C, H, W)`` in ``gy_avg``'s dtype.
    """
    kernel, grid_dilation, padding = patch_kernel(weight.to(gy_avg.dtype), dilation, patch_size)
    grid_size = tuple(input_size[:2]) + tuple(gy_avg.shape[-2:])
    grad_x_sum = conv2d_input(grid_size, kernel, gy_avg, 1, padding, grid_dilation, groups)
    return patch_broadcast(grad_x_sum, input_block(patch_size, stride), input_size[-2:])


class GradFilterConv2dFunction(Function):
    """``F.conv2d`` whose backward is the gradient filter's (see the module docstring).

    ``apply(x, weight, bias, patch_size, stride, padding, dilation, groups)``, numeric zero padding only.
    ``save_for_backward`` receives the weight (only if ``x`` needs a gradient: a Parameter, no activation)
    and ``x_sum: (B, C, p_h, p_w)`` (only if the weight needs one), nothing else of ``x``. Not twice
    differentiable.
    """

    @staticmethod
    def forward(x: Tensor, weight: Tensor, bias: Optional[Tensor], patch_size: int, stride: Pair,
                padding: Pair, dilation: Pair, groups: int) -> Tensor:
        return F.conv2d(x, weight, bias, stride, padding, dilation, groups)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        x, weight, _, patch_size, stride, _, dilation, groups = inputs
        ctx.filter_args = (patch_size, stride, dilation, groups)
        ctx.grid = patch_grid(output.shape[-2:], patch_size)
        ctx.input_shape, ctx.weight_shape = x.shape, weight.shape
        needs_x_grad, needs_weight_grad = ctx.needs_input_grad[:2]
        x_sum = patch_sum(x.detach(), input_block(patch_size, stride), ctx.grid) if needs_weight_grad else None
        ctx.save_for_backward(weight if needs_x_grad else None, x_sum)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output: Tensor):
        weight, x_sum = ctx.saved_tensors
        needs_x_grad, needs_weight_grad, needs_bias_grad = ctx.needs_input_grad[:3]
        patch_size, stride, dilation, groups = ctx.filter_args
        grad_x = grad_weight_ = grad_bias = None
        # A backward called inside an autocast region would otherwise recast the convolutions' arguments.
        with autocast_disabled(grad_output.device.type):
            if needs_x_grad or needs_weight_grad:
                gy_avg = patch_mean(grad_output, patch_size, ctx.grid)
            if needs_x_grad:
                grad_x = grad_input(gy_avg, weight, ctx.input_shape, patch_size, stride, dilation, groups)
            if needs_weight_grad:
                grad_weight_ = grad_weight(x_sum, gy_avg, ctx.weight_shape, groups)
        if needs_bias_grad:
            grad_bias = grad_output.sum((0, 2, 3))
        return grad_x, grad_weight_, grad_bias, None, None, None, None, None


def gradfilt_conv2d(x: Tensor, weight: Tensor, bias: Optional[Tensor], patch_size: int, stride=1, padding=0,
                    dilation=1, groups: int = 1) -> Tensor:
    """``F.conv2d(x, weight, bias, stride, padding, dilation, groups)`` with the gradient filter's backward.

    Args:
        x: ``(B, C, H, W)``.
        weight: ``(O, C / groups, kH, kW)``.
        bias: ``(O,)`` or None.
        patch_size: ``R >= 1``, the side of the output-gradient patches.
        stride, dilation: int or pair.
        padding: int or pair of zero padding (pad explicitly first for anything else).
        groups: number of channel groups.

    Returns:
        ``(B, O, H', W')``; the bias gradient is exact, the weight and input gradients the filter's.
    """
    return GradFilterConv2dFunction.apply(x, weight, bias, validate_patch_size(patch_size), _pair(stride),
                                          _pair(padding), _pair(dilation), groups)


class GradFilterConv2d(nn.Conv2d):
    """``nn.Conv2d`` that, while training, keeps its input summed over patches for the gradient filter's
    backward (see the module docstring): ``(B, C, ceil(H'/R), ceil(W'/R))`` instead of ``(B, C, H, W)``.

    Parameters and state-dict keys are those of ``nn.Conv2d``. The forward is exact. The weight and input
    gradients are approximate (the input gradient too, unlike HOSVD/SVD's: it comes from the
    patch-averaged output gradient, spread evenly over each patch); the bias gradient is exact.

    The filter runs only when the weight gradient is wanted: in training mode, with grad enabled and
    ``weight.requires_grad``. Otherwise, as :class:`~mmseg_actcomp.ops.CompressedConv2d`: in eval mode or
    under ``torch.no_grad()`` the layer is exactly ``nn.Conv2d.forward``; with a frozen weight whose input
    still needs a gradient it keeps only the weight (exact input gradient, as
    :class:`~mmseg_actcomp.ops.LeanConv2d`).

    Padding: numeric symmetric zero padding is passed to the convolution and the patch grid is laid over
    the unpadded input; other padding (string, asymmetric ``'same'``, non-zero modes) is applied with
    ``F.pad`` first and the grid laid over the padded input. Under autocast the input, weight and bias are
    cast as autocast would cast them for a convolution, and ``x_sum`` is kept in that dtype.

    Attributes set by each filtering forward (None before the first):
        last_input_shape: ``(B, C, H, W)`` of the (padded) input.
        last_kept_bytes: bytes of ``x_sum``, ``B * C * ceil(H'/R) * ceil(W'/R)`` elements.
        last_vanilla_bytes: ``B*C*H*W`` times the element size: what ``nn.Conv2d`` would keep.

    Args:
        Those of ``nn.Conv2d``, then
        patch_size: ``R``, an integer >= 1 (the paper uses 2, 4 and 8).

    Other attributes:
        layer_name: names the layer; the class name unless whoever swaps layers in sets it.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0,
                 dilation=1, groups: int = 1, bias: bool = True, padding_mode: str = 'zeros',
                 device=None, dtype=None, patch_size: int = 2) -> None:
        self.patch_size = patch_size
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
                         padding_mode, device, dtype)
        self.layer_name = type(self).__name__
        self.last_input_shape: Optional[Tuple[int, ...]] = None
        self.last_kept_bytes: Optional[int] = None
        self.last_vanilla_bytes: Optional[int] = None

    patch_size = validated_attribute('patch_size', validate_patch_size)

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, patch_size: int = 2) -> 'GradFilterConv2d':
        """A layer with ``conv``'s hyper-parameters and training flag sharing its Parameter objects
        (``new.weight is conv.weight``), so optimizers and checkpoints see the same tensors."""
        return conv_twin(cls, conv, patch_size=patch_size)

    def extra_repr(self) -> str:
        return f'{super().extra_repr()}, patch_size={self.patch_size}'

    def _filters(self, x: Tensor) -> bool:
        """Whether this forward needs the weight gradient, hence the patch sums of ``x``."""
        return self.training and torch.is_grad_enabled() and self.weight.requires_grad and x.numel() > 0

    def forward(self, x: Tensor) -> Tensor:
        """x: ``(B, C, H, W)`` or unbatched ``(C, H, W)``; returns ``(B, O, H', W')`` (resp. unbatched)."""
        if not self._filters(x):
            return frozen_weight_conv2d(self, x)
        if x.dim() == 3:
            return self.forward(x.unsqueeze(0)).squeeze(0)
        x, weight, bias = autocast_layer_args(x, self.weight, self.bias)
        x, padding = explicit_padding(self, x)
        y = gradfilt_conv2d(x, weight, bias, self.patch_size, self.stride, padding, self.dilation, self.groups)
        self.last_input_shape = tuple(x.shape)
        self.last_vanilla_bytes = x.numel() * x.element_size()
        self.last_kept_bytes = (x.shape[0] * x.shape[1] * math.prod(patch_grid(y.shape[-2:], self.patch_size))
                                * x.element_size())
        return y


register_layers(GradFilterConv2d)
