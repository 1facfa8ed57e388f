"""Lean ReLU / ReLU6 (:class:`PackedMaskReLU`) and the bit packing its mask is kept in.

Stock autograd's ``ReluBackward0`` keeps the ReLU's full output (the very tensor the next conv reads). Its
backward needs only the sign pattern: :class:`PackedMaskReLU` keeps it packed 8 per byte
(``ceil(numel / 8)`` bytes), with output and gradient bit-identical to torch's.
"""
import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import Function, once_differentiable

from ...compression import pack_codes, unpack_codes
from .common import _grad_needed

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
