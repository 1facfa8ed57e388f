r"""Uniform quantization of an activation, one range per ``(sample, channel)`` plane, codes bit-packed.

What a layer keeps when it needs its input element by element (a BatchNorm on batch statistics: its
input gradient ``s * (g - mean(g) - x_hat * mean(g * x_hat))`` reads ``x_hat`` everywhere) but can live
with a small, bounded error in it: ``bits`` per element instead of 16 or 32, plus two numbers per plane.
Round to nearest: the error of each element is at most half a step, ``(max - min) / (2 ** bits - 1) / 2``
of its plane. ActNN (Chen et al., ICML 2021) keeps BN inputs this way (2 bits, per group, stochastic
rounding); 8 bits make the error negligible for the gradient (docs/finetune.md).

Pure torch: no mmseg / mmcv imports.
"""
import math
from typing import NamedTuple, Tuple

import torch
from torch import Tensor

#: bit widths a quantized tensor can use: they pack a whole number of codes per byte
QUANTIZATION_BITS = (1, 2, 4, 8)
_BYTE = 8


def validate_bits(bits: int) -> int:
    """``bits`` if it is one of :data:`QUANTIZATION_BITS`, else a ValueError naming it."""
    if isinstance(bits, bool) or bits not in QUANTIZATION_BITS:
        raise ValueError(f'bits={bits!r} is not one of {list(QUANTIZATION_BITS)}')
    return int(bits)


def pack_codes(codes: Tensor, bits: int) -> Tensor:
    """Pack unsigned integer codes below ``2 ** bits`` ``8 // bits`` per byte.

    Args:
        codes: uint8 (or bool for ``bits=1``), any shape and memory format, any device. Elements are taken
            in logical (row-major) order.
        bits: one of :data:`QUANTIZATION_BITS`.

    Returns:
        ``(ceil(numel * bits / 8),)`` uint8; code ``j`` of byte ``i`` (element ``i * 8 // bits + j``) sits at
        bits ``[j * bits, (j + 1) * bits)``; the unused high bits of the last byte are 0.
    """
    per_byte = _BYTE // validate_bits(bits)
    flat = codes.reshape(-1)
    if flat.dtype == torch.bool:  # stored as one byte holding 0 or 1: reinterpret instead of converting
        flat = flat.view(torch.uint8)
    if per_byte == 1:
        return flat.clone() if flat.data_ptr() == codes.data_ptr() else flat
    padding = -flat.numel() % per_byte
    if padding:
        flat = torch.cat([flat, flat.new_zeros(padding)])
    shifts = torch.arange(0, _BYTE, bits, dtype=torch.uint8, device=codes.device)
    # The shifted codes occupy disjoint bits, so their sum is their bitwise or.
    return (flat.view(-1, per_byte) << shifts).sum(1, dtype=torch.uint8)


def unpack_codes(packed: Tensor, bits: int, numel: int) -> Tensor:
    """Inverse of :func:`pack_codes`: ``(numel,)`` uint8 codes."""
    if validate_bits(bits) == _BYTE:
        return packed[:numel]
    shifts = torch.arange(0, _BYTE, bits, dtype=torch.uint8, device=packed.device)
    return ((packed.unsqueeze(1) >> shifts) & (2 ** bits - 1)).view(-1)[:numel]


class Quantized(NamedTuple):
    """A ``(B, C, ...)`` tensor quantized per ``(b, c)`` plane: ``x ~ low + code * step``.

    Attributes:
        packed: ``(ceil(numel * bits / 8),)`` uint8, the codes in ``x``'s logical order.
        low: ``(B, C)`` float32, each plane's minimum.
        step: ``(B, C)`` float32, each plane's ``(max - min) / (2 ** bits - 1)`` (1 for a constant plane).
        shape: ``x.shape``.
        dtype: ``x.dtype``, which :func:`dequantize` returns.
        bits: code width.
    """
    packed: Tensor
    low: Tensor
    step: Tensor
    shape: torch.Size
    dtype: torch.dtype
    bits: int

    @property
    def tensors(self) -> Tuple[Tensor, Tensor, Tensor]:
        """What to ``save_for_backward``."""
        return self.packed, self.low, self.step

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors)


def quantize(x: Tensor, bits: int) -> Quantized:
    """Quantize ``x`` uniformly to ``bits`` per element, one ``[min, max]`` range per ``(b, c)`` plane,
    rounding to nearest (error at most half a step).

    Args:
        x: ``(B, C, ...)`` floating point, finite, any memory format. Not differentiated through.
        bits: one of :data:`QUANTIZATION_BITS`.

    Returns:
        :class:`Quantized` of ``ceil(numel * bits / 8) + 8 * B * C`` bytes.
    """
    validate_bits(bits)
    if x.dim() < 2 or not x.is_floating_point():
        raise ValueError(f'quantize expects a floating (B, C, ...) tensor, got {x.dtype} of shape '
                         f'{tuple(x.shape)}')
    with torch.no_grad():
        planes = x.detach().reshape(x.shape[0], x.shape[1], -1)
        if planes.shape[2]:
            low, high = (t.float() for t in torch.aminmax(planes, dim=2))
        else:
            low = high = planes.new_zeros(x.shape[:2], dtype=torch.float32)
        step = (high - low) / (2 ** bits - 1)
        step = torch.where(step > 0, step, torch.ones_like(step))
        # one float temporary, rounded and clamped in place (clamping absorbs the float32 rounding of step)
        codes = planes.float().sub(low.unsqueeze(2)).div_(step.unsqueeze(2)).round_().clamp_(0, 2 ** bits - 1)
        return Quantized(pack_codes(codes.to(torch.uint8), bits), low, step, x.shape, x.dtype, bits)


def dequantize(q: Quantized) -> Tensor:
    """The ``q.shape`` tensor (contiguous, ``q.dtype``) that ``q`` holds: ``low + code * step``."""
    numel = math.prod(q.shape)
    codes = unpack_codes(q.packed, q.bits, numel).view(q.shape[0], q.shape[1], -1)
    planes = torch.addcmul(q.low.unsqueeze(2), codes.float(), q.step.unsqueeze(2))
    return planes.to(q.dtype).view(q.shape)
