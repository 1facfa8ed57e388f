"""Lean dropout (:class:`RegeneratedDropout`).

Stock ``nn.Dropout`` keeps a full-size mask (a byte per element); ``nn.Dropout2d`` (decode heads) a
``(B, C, 1, 1)`` noise tensor. :class:`RegeneratedDropout` keeps a seed and regenerates the mask in backward.

Drop path (stochastic depth: mmcv's ``DropPath``, timm's ``drop_path``) multiplies each sample by one
random number: it keeps a ``(B, 1, ..., 1)`` tensor, nothing full-size, and is left as it is.
"""
import torch
from torch import Tensor, nn
from torch.autograd.function import Function, once_differentiable

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


def is_plain_dropout(module: nn.Module) -> bool:
    """Whether ``module`` is an ``nn.Dropout`` or ``nn.Dropout2d``, or a subclass running their own
    ``forward`` (mmcv's ``Dropout``, which only renames ``p`` to ``drop_prob``)."""
    return any(isinstance(module, kind) and type(module).forward is kind.forward
               for kind in (nn.Dropout, nn.Dropout2d))


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
        """The lean twin of an ``nn.Dropout`` or ``nn.Dropout2d`` (same ``p``, ``inplace``, training flag), or
        of a subclass that keeps their ``forward`` (:func:`is_plain_dropout`: mmcv's ``Dropout``)."""
        if not is_plain_dropout(module):
            raise TypeError(f'RegeneratedDropout.from_module expects nn.Dropout or nn.Dropout2d, got '
                            f'{type(module).__name__}')
        new = cls(module.p, isinstance(module, nn.Dropout2d), module.inplace)
        return new.train(module.training)

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0 or x.numel() == 0:
            return x
        return RegeneratedDropoutFunction.apply(x, self.p, self.channelwise, _draw_seed(), self.inplace)

    def extra_repr(self) -> str:
        return f'p={self.p}, channelwise={self.channelwise}, inplace={self.inplace}'
