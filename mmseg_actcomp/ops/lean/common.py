"""Helpers the lean ops share: attributes validated on every assignment, bit widths that may be None,
whether autograd will record an op, and a tensor's memory format."""
from typing import Callable, Optional

import torch
from torch import Tensor

from ...compression import validate_bits

def validated_attribute(name: str, validate: Callable) -> property:
    """An attribute whose every assignment goes through ``validate`` (which returns the value to store)."""
    private = f'_{name}'
    return property(lambda self: getattr(self, private),
                    lambda self, value: setattr(self, private, validate(value)))


def optional_bits(name: str) -> Callable[[Optional[int]], Optional[int]]:
    """The validator of attribute ``name``: None (keep the tensor whole, as stock torch does) or one of
    :data:`~mmseg_actcomp.compression.QUANTIZATION_BITS`, else a ValueError naming ``name`` and the value."""
    def validate(bits: Optional[int]) -> Optional[int]:
        if bits is None:
            return None
        try:
            return validate_bits(bits)
        except ValueError as e:
            raise ValueError(f'{name}: {e} (or None to keep the input whole)') from None
    return validate


def _grad_needed(*tensors: Optional[Tensor]) -> bool:
    """Whether autograd will record an op on ``tensors`` (grad mode on and one of them requires grad)."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def _memory_format(x: Tensor) -> torch.memory_format:
    """``torch.channels_last`` for a 4-d channels-last tensor, else ``torch.contiguous_format``."""
    if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format
