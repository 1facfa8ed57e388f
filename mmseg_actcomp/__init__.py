"""mmseg-actcomp: compress the activations convolutions and linear layers keep for backward (SVD / HOSVD,
or the Gradient Filter's patch sums, convolutions only) while fine-tuning mmsegmentation models. Importing
the package registers its layer types and hook, which is what
``custom_imports = dict(imports=['mmseg_actcomp'])`` in a config does.

``mmseg_actcomp.compression`` needs torch only: without the OpenMMLab stack installed the package still
imports, and only what needs mmseg (the hook, the layers' registration) says so when it is asked for."""
from .version import __version__

_OPENMMLAB = ('mmseg', 'mmcv', 'mmengine')
try:
    import mmseg  # noqa: F401  (and through it mmcv and mmengine)
except ModuleNotFoundError as error:
    if (error.name or '').split('.')[0] not in _OPENMMLAB:
        raise  # a broken install, not an absent stack
    _MISSING_STACK = error
else:
    _MISSING_STACK = None
    # registers the conv and linear types
    from .ops import CompressedConv2d, GradFilterConv2d, HOSVDConv2d, HOSVDLinear, SVDConv2d, SVDLinear
    from .hooks import ActivationCompressionHook  # registers the hook in mmseg's HOOKS
    from .registry import register_config_scope
    from .utils import allow_mmengine_checkpoints

    # mmengine's own checkpoints (resume, tools/test.py) fail torch's safe loader: allow-list exactly the
    # globals they hold (see mmseg_actcomp/utils/checkpoint.py for what is trusted, and why not more).
    allow_mmengine_checkpoints()
    # Configs may inherit this package's own (`_base_ = ['mmseg_actcomp::...']`) once it is installed: see
    # registry.py.
    register_config_scope()

__all__ = ['__version__', 'CompressedConv2d', 'HOSVDConv2d', 'SVDConv2d', 'GradFilterConv2d', 'HOSVDLinear',
           'SVDLinear', 'ActivationCompressionHook']


def __getattr__(name: str):
    if name in __all__ and _MISSING_STACK is not None:
        raise ImportError(f'mmseg_actcomp.{name} needs mmsegmentation, mmcv and mmengine '
                          f'({_MISSING_STACK}); mmseg_actcomp.compression works with torch alone')
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
