"""Convolution layers and autograd functions that keep compressed activations for backward."""
from .conv import CompressedConv2d, HOSVDConv2d, SVDConv2d
from .functional import CompressedConv2dFunction, compressed_conv2d, conv2d_weight_from_tucker
from .lean import (LeanAdaptiveAvgPool2d, LeanBatchNorm2d, LeanConv2d, PackedMaskReLU, RegeneratedDropout,
                   make_lean, packed_mask_relu)

__all__ = [
    'CompressedConv2d', 'HOSVDConv2d', 'SVDConv2d', 'CompressedConv2dFunction', 'compressed_conv2d',
    'conv2d_weight_from_tucker', 'LeanAdaptiveAvgPool2d', 'LeanBatchNorm2d', 'LeanConv2d', 'PackedMaskReLU',
    'RegeneratedDropout', 'make_lean', 'packed_mask_relu'
]
