"""Lean adaptive average pooling (:class:`LeanAdaptiveAvgPool2d`).

Stock autograd's ``AdaptiveAvgPool2DBackward0`` (PSPNet's pyramid pooling) keeps its full input, of which
backward reads only the shape: the lean op keeps the input's shape, dtype, device and memory format, no
tensor. Global average pooling (output size 1) runs as a ``mean``, which keeps nothing full-size already.
"""
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import Function, once_differentiable
from torch.nn.modules.utils import _pair

from .common import _grad_needed, _memory_format

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
