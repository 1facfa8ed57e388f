"""Lean versions of the layers around a compressed convolution (see :mod:`.batchnorm` for now, which holds
every op family until they are split into a module each)."""
from .batchnorm import (LEAN_METHODS, LeanAdaptiveAvgPool2d, LeanBatchNorm2d, LeanConv2d, PackedMaskReLU,
                        PackedMaskReLUFunction, QuantizedInputBatchNormFunction, RegeneratedDropout,
                        RegeneratedDropoutFunction, RunningStatsBatchNormFunction,
                        ShapeOnlyAdaptiveAvgPool2dFunction, channel_inner_products, conv_twin, explicit_padding,
                        frozen_weight_conv2d, make_lean, pack_bits, packed_mask_relu, unpack_bits,
                        validated_attribute)

__all__ = [
    'LEAN_METHODS', 'LeanAdaptiveAvgPool2d', 'LeanBatchNorm2d', 'LeanConv2d', 'PackedMaskReLU',
    'PackedMaskReLUFunction', 'QuantizedInputBatchNormFunction', 'RegeneratedDropout', 'RegeneratedDropoutFunction',
    'RunningStatsBatchNormFunction', 'ShapeOnlyAdaptiveAvgPool2dFunction', 'channel_inner_products', 'conv_twin',
    'explicit_padding', 'frozen_weight_conv2d', 'make_lean', 'pack_bits', 'packed_mask_relu', 'unpack_bits',
    'validated_attribute'
]
