"""Swapping the lean ops into a module tree (:func:`make_lean`).

:func:`make_lean` replaces the layers of a fine-tuned region by their lean twins in place, sharing
parameters and buffers, so state-dict keys, optimizers and checkpoints are unaffected. Input gradients stay
exact except through the ops that keep their input (or derivative) quantized: BNs on batch statistics and
LayerNorms (``input_bits``), GELUs (``gelu_bits``); the trainable ``gamma`` of a lean BN on running statistics
gets the gradient of its compressed ``x_hat`` (exact at ``eps = 1`` or for method ``'none'``).
"""
import warnings
from typing import Dict, Optional

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from ...compression import validate_explained_variance
from .batchnorm import LeanBatchNorm2d, _validate_input_bits, _validate_method
from .common import optional_bits
from .dropout import RegeneratedDropout, is_plain_dropout
from .frozen_conv import LeanConv2d
from .gelu import LeanGELU
from .layernorm import LeanLayerNorm
from .pooling import LeanAdaptiveAvgPool2d
from .prelu import PackedMaskPReLU
from .relu import PackedMaskReLU

def _lean_twin(module: nn.Module, explained_variance: float, method: str, input_bits: Optional[int],
               gelu_bits: Optional[int]) -> Optional[nn.Module]:
    """The lean replacement of ``module``, ``module`` itself if it is lean already (its settings updated), or
    None if it has none."""
    kind = type(module)
    if kind in (PackedMaskReLU, PackedMaskPReLU, RegeneratedDropout, LeanConv2d, LeanAdaptiveAvgPool2d):
        return module
    if kind is LeanBatchNorm2d:
        module.explained_variance, module.method, module.input_bits = explained_variance, method, input_bits
        return module
    if kind is LeanLayerNorm:
        module.input_bits = input_bits
        return module
    if kind is LeanGELU:
        module.derivative_bits = gelu_bits
        return module
    if kind in (nn.ReLU, nn.ReLU6):
        return PackedMaskReLU.from_module(module)
    if kind is nn.PReLU:
        return PackedMaskPReLU.from_module(module)
    if is_plain_dropout(module):
        return RegeneratedDropout.from_module(module)
    if kind is nn.BatchNorm2d:
        return LeanBatchNorm2d.from_bn(module, explained_variance, method, input_bits)
    if kind is nn.LayerNorm:
        return LeanLayerNorm.from_module(module, input_bits)
    if kind is nn.GELU:
        return LeanGELU.from_module(module, gelu_bits)
    if kind is nn.Conv2d:
        return LeanConv2d.from_conv(module)
    if kind is nn.AdaptiveAvgPool2d:
        return LeanAdaptiveAvgPool2d.from_module(module)
    if isinstance(module, _BatchNorm):
        warnings.warn(f'make_lean: leaving {kind.__name__} as it is (only nn.BatchNorm2d is made lean); '
                      'it keeps its full input for backward', stacklevel=3)
    return None


def make_lean(module: nn.Module, explained_variance: float, method: str, input_bits: Optional[int] = None,
              gelu_bits: Optional[int] = None) -> Dict[str, nn.Module]:
    """Replace, in place, every layer inside ``module`` that keeps a full-size activation it does not
    need by its lean twin, sharing parameters and buffers (state-dict keys unchanged):

    ``nn.ReLU`` / ``nn.ReLU6`` -> :class:`PackedMaskReLU`; ``nn.PReLU`` -> :class:`PackedMaskPReLU` (lean
    only while its weight is frozen); ``nn.BatchNorm2d`` -> :class:`LeanBatchNorm2d`
    (``explained_variance`` and ``method`` for a trainable ``gamma`` on running statistics, ``input_bits``
    for batch statistics); ``nn.LayerNorm`` -> :class:`LeanLayerNorm` (``input_bits`` for its normalised
    input); ``nn.GELU`` -> :class:`LeanGELU` (``gelu_bits`` for its derivative); ``nn.Dropout`` /
    ``nn.Dropout2d`` (and subclasses keeping their ``forward``: mmcv's ``Dropout``) ->
    :class:`RegeneratedDropout`; plain ``nn.Conv2d`` -> :class:`LeanConv2d` (lean only while frozen);
    ``nn.AdaptiveAvgPool2d`` -> :class:`LeanAdaptiveAvgPool2d`.
    Subclasses (compressed convs, ``SyncBatchNorm``, ...) are left alone; other ``_BatchNorm`` layers with
    a warning. ``module`` itself is never replaced (it is the region root, e.g. a ResNet block, an mmcv
    ``ConvModule``, a transformer layer's MLP or a decode head). A layer registered under several paths gets
    one twin at all of them. Drop path (mmcv's ``DropPath``), residual adds and reshapes keep nothing
    full-size and are left alone.

    Idempotent: lean layers are kept (a lean BN gets ``explained_variance``, ``method`` and ``input_bits``
    updated, a lean LayerNorm ``input_bits``, a lean GELU ``gelu_bits``).

    Returns:
        path (relative to ``module``) -> the lean layer now there, for every lean layer inside it.
    """
    explained_variance = validate_explained_variance(explained_variance)
    _validate_method(method)
    _validate_input_bits(input_bits)
    optional_bits('gelu_bits')(gelu_bits)
    twins: Dict[int, Optional[nn.Module]] = {}
    lean = {}
    for path, child in list(module.named_modules(remove_duplicate=False)):
        if not path:
            continue
        if id(child) not in twins:
            twins[id(child)] = _lean_twin(child, explained_variance, method, input_bits, gelu_bits)
        twin = twins[id(child)]
        if twin is None:
            continue
        if twin is not child:
            module.set_submodule(path, twin)
        lean[path] = twin
    return lean
