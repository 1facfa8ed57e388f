"""Lean versions of the layers around a compressed convolution: they keep for backward only what the
input gradient (and their own parameter gradients) need, never a full-size activation.

Compressing a convolution's input frees nothing while the layers next to it keep that tensor anyway. One
module per op family, each stating what stock autograd keeps there and what its lean op keeps instead:

* :mod:`.relu`: ``nn.ReLU`` / ``nn.ReLU6`` keep their output; :class:`PackedMaskReLU` a 1-bit mask.
* :mod:`.prelu`: ``nn.PReLU`` keeps its input; :class:`PackedMaskPReLU` a 1-bit mask while its weight is
  frozen.
* :mod:`.batchnorm`: ``nn.BatchNorm2d`` keeps its input; :class:`LeanBatchNorm2d` nothing on running
  statistics with ``gamma`` frozen, a compressed ``x_hat`` with ``gamma`` trainable, the input quantized
  on batch statistics.
* :mod:`.frozen_conv`: a frozen ``nn.Conv2d`` keeps its input; :class:`LeanConv2d` only its weight.
* :mod:`.pooling`: ``nn.AdaptiveAvgPool2d`` keeps its input; :class:`LeanAdaptiveAvgPool2d` its shape.
* :mod:`.dropout`: ``nn.Dropout`` / ``nn.Dropout2d`` keep a mask; :class:`RegeneratedDropout` a seed.
* :mod:`.layernorm`: ``nn.LayerNorm`` keeps its input; :class:`LeanLayerNorm` its normalised input
  quantized, and the inverse std per row.
* :mod:`.gelu`: ``nn.GELU`` keeps its input; :class:`LeanGELU` its derivative quantized.
* :mod:`.make`: :func:`make_lean` swaps all of these into a module tree (:mod:`.common`: shared helpers).

Residual adds (``AddBackward0``), ``torch.cat``, reshapes and transposes, bilinear resizes, global average
pooling (a ``mean``) and drop path (a ``(B, 1, ..., 1)`` factor per sample) keep nothing full-size already.

Pure torch: no mmseg / mmcv imports.
"""
from .batchnorm import (LEAN_METHODS, LeanBatchNorm2d, QuantizedInputBatchNormFunction,
                        RunningStatsBatchNormFunction, channel_inner_products)
from .common import optional_bits, validated_attribute
from .dropout import RegeneratedDropout, RegeneratedDropoutFunction, is_plain_dropout
from .frozen_conv import LeanConv2d, conv_twin, explicit_padding, frozen_weight_conv2d
from .gelu import LeanGELU, QuantizedDerivativeGELUFunction, gelu_derivative
from .layernorm import (LeanLayerNorm, QuantizedNormalisedLayerNormFunction, from_sample_feature_planes,
                        layer_norm_backward, sample_feature_planes)
from .make import make_lean
from .pooling import LeanAdaptiveAvgPool2d, ShapeOnlyAdaptiveAvgPool2dFunction
from .prelu import PackedMaskPReLU, PackedMaskPReLUFunction
from .relu import PackedMaskReLU, PackedMaskReLUFunction, pack_bits, packed_mask_relu, unpack_bits

__all__ = [
    'LEAN_METHODS', 'LeanBatchNorm2d', 'QuantizedInputBatchNormFunction', 'RunningStatsBatchNormFunction',
    'channel_inner_products', 'optional_bits', 'validated_attribute', 'RegeneratedDropout',
    'RegeneratedDropoutFunction', 'is_plain_dropout', 'LeanGELU', 'QuantizedDerivativeGELUFunction',
    'gelu_derivative', 'LeanLayerNorm', 'QuantizedNormalisedLayerNormFunction', 'from_sample_feature_planes',
    'layer_norm_backward', 'sample_feature_planes',
    'LeanConv2d', 'conv_twin', 'explicit_padding', 'frozen_weight_conv2d', 'make_lean', 'LeanAdaptiveAvgPool2d',
    'ShapeOnlyAdaptiveAvgPool2dFunction', 'PackedMaskPReLU', 'PackedMaskPReLUFunction', 'PackedMaskReLU',
    'PackedMaskReLUFunction', 'pack_bits', 'packed_mask_relu', 'unpack_bits'
]
