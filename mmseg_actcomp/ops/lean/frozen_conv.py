"""Lean frozen convolution (:class:`LeanConv2d`) and the conv helpers the custom conv layers build on.

Stock autograd's ``ConvolutionBackward0`` of a frozen conv (e.g. a block's ``downsample``) keeps its full
input, although with the weight frozen only ``grad_input`` (from the weight alone) is wanted:
:func:`frozen_weight_conv2d` keeps only the weight. :func:`conv_twin` (a conv layer sharing another's
parameters) and :func:`explicit_padding` serve the compressed convs (:mod:`mmseg_actcomp.ops.conv`) and the
gradient filter (:mod:`mmseg_actcomp.ops.gradfilt`) too.
"""
from typing import Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...compression import Tucker
from ..functional import autocast_layer_args, compressed_conv2d
from .common import _grad_needed

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
    x, weight, bias = autocast_layer_args(x, conv.weight, conv.bias)
    return compressed_conv2d(x, weight, bias, _NOTHING, conv.stride, conv.padding, conv.dilation, conv.groups)
