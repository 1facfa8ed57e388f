"""Helpers the lean ops share: attributes validated on every assignment, whether autograd will record an
op, and a tensor's memory format."""
from typing import Callable, Optional

import torch
from torch import Tensor

def validated_attribute(name: str, validate: Callable) -> property:
    """An attribute whose every assignment goes through ``validate`` (which returns the value to store)."""
    private = f'_{name}'
    return property(lambda self: getattr(self, private),
                    lambda self, value: setattr(self, private, validate(value)))


def _grad_needed(*tensors: Optional[Tensor]) -> bool:
    """Whether autograd will record an op on ``tensors`` (grad mode on and one of them requires grad)."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def _memory_format(x: Tensor) -> torch.memory_format:
    """``torch.channels_last`` for a 4-d channels-last tensor, else ``torch.contiguous_format``."""
    if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format
