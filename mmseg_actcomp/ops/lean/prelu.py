"""Lean PReLU (:class:`PackedMaskPReLU`): CGNet's activation.

Stock autograd's ``PreluKernelBackward0`` keeps the PReLU's full input, for its input gradient
(``grad`` where ``x > 0``, ``weight * grad`` elsewhere) and its weight gradient (``grad * x`` summed where
``x <= 0``). With the weight frozen (a PReLU in the region of a fine-tuned conv trains nothing) the input
gradient reads only the sign pattern and the weight: :class:`PackedMaskPReLU` keeps the pattern packed 8
per byte (``ceil(numel / 8)`` bytes) and the weight (a Parameter, not activation memory). A trainable
weight needs the input: it then runs torch's own op, which keeps it.
"""
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import Function, once_differentiable

from .common import _grad_needed
from .relu import pack_bits, unpack_bits


def _channel_view(weight: Tensor, x: Tensor) -> Tensor:
    """``weight`` ``(1,)`` or ``(C,)`` shaped to broadcast over ``x`` ``(B, C, ...)`` as ``F.prelu`` does
    (one slope, or one per channel: dimension 1)."""
    if weight.numel() == 1 or x.dim() < 2:
        return weight.reshape(())
    return weight.reshape((1, -1) + (1,) * (x.dim() - 2))


class PackedMaskPReLUFunction(Function):
    """``F.prelu(x, weight)`` keeping the packed mask of ``x > 0`` and the weight, for the input gradient
    only: ``apply(x, weight)`` with ``weight`` not requiring grad (its gradient is not computed). Saves one
    uint8 tensor ``(ceil(numel / 8),)`` besides the weight."""

    @staticmethod
    def forward(x: Tensor, weight: Tensor) -> Tensor:
        return F.prelu(x, weight)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        x, weight = inputs
        ctx.shape = x.shape
        ctx.save_for_backward(pack_bits(x > 0), weight)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output: Tensor):
        packed, weight = ctx.saved_tensors
        positive = unpack_bits(packed, ctx.shape)
        # torch's prelu backward: grad where x > 0, weight * grad elsewhere (NaN input: weight * grad)
        return grad_output.where(positive, grad_output * _channel_view(weight, grad_output)), None


class PackedMaskPReLU(nn.PReLU):
    """``nn.PReLU`` keeping ``ceil(numel / 8)`` bytes for backward instead of its input while its weight is
    frozen; with the weight trainable, the stock op (which keeps the input for the weight gradient).
    The same Parameter under the same state-dict key (``weight``)."""

    @classmethod
    def from_module(cls, module: nn.PReLU) -> 'PackedMaskPReLU':
        """The lean twin of an ``nn.PReLU``, sharing its ``weight``."""
        if type(module) is not nn.PReLU:
            raise TypeError(f'PackedMaskPReLU.from_module expects nn.PReLU, got {type(module).__name__}')
        lean = cls.__new__(cls)
        nn.Module.__init__(lean)
        lean.num_parameters = module.num_parameters
        lean.weight = module.weight
        return lean.train(module.training)

    def forward(self, x: Tensor) -> Tensor:
        """x: ``(B, C, ...)`` (or any shape with one slope); returns the same shape."""
        if self.weight.requires_grad or not _grad_needed(x):
            return F.prelu(x, self.weight)
        return PackedMaskPReLUFunction.apply(x, self.weight)
