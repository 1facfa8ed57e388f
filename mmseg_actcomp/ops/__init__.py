"""Convolution and linear layers and autograd functions that keep compressed activations for backward:
HOSVD/SVD factors (:mod:`.conv`, :mod:`.linear`, :mod:`.attention`'s projections, sharing :mod:`.compressed`)
or patch sums (the gradient filter, :mod:`.gradfilt`)."""
from .attention import (AttentionProjection, CompressedProjection, HOSVDProjection, LeanMultiheadAttention,
                        SVDProjection, expose_attention_projections)
from .compressed import CompressedLayer
from .conv import CompressedConv2d, HOSVDConv2d, SVDConv2d
from .functional import (CompressedConv2dFunction, CompressedLinearFunction, compressed_conv2d, compressed_linear,
                         conv2d_weight_from_tucker, linear_weight_from_tucker)
from .gradfilt import GradFilterConv2d, GradFilterConv2dFunction, gradfilt_conv2d
from .linear import CompressedLinear, HOSVDLinear, LinearCompression, SVDLinear
from .lean import (LeanAdaptiveAvgPool2d, LeanBatchNorm2d, LeanConv2d, LeanGELU, LeanLayerNorm, PackedMaskPReLU,
                   PackedMaskReLU, RegeneratedDropout, make_lean, packed_mask_relu)

__all__ = [
    'AttentionProjection', 'CompressedProjection', 'HOSVDProjection', 'LeanMultiheadAttention', 'SVDProjection',
    'expose_attention_projections', 'LinearCompression', 'CompressedLayer', 'CompressedConv2d', 'HOSVDConv2d',
    'SVDConv2d', 'CompressedConv2dFunction', 'compressed_conv2d',
    'conv2d_weight_from_tucker', 'CompressedLinear', 'HOSVDLinear', 'SVDLinear', 'CompressedLinearFunction',
    'compressed_linear', 'linear_weight_from_tucker', 'GradFilterConv2d', 'GradFilterConv2dFunction', 'gradfilt_conv2d',
    'LeanAdaptiveAvgPool2d', 'LeanBatchNorm2d', 'LeanConv2d', 'LeanGELU', 'LeanLayerNorm', 'PackedMaskPReLU',
    'PackedMaskReLU', 'RegeneratedDropout', 'make_lean', 'packed_mask_relu'
]
