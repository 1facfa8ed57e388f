"""mmseg-actcomp: compress the activations convolutions keep for backward (SVD / HOSVD) while
fine-tuning mmsegmentation models. Importing the package registers its layer types and hook, which is
what ``custom_imports = dict(imports=['mmseg_actcomp'])`` in a config does."""
from .version import __version__
from .ops import CompressedConv2d, HOSVDConv2d, SVDConv2d  # registers the conv types
from .hooks import ActivationCompressionHook  # registers the hook in mmseg's HOOKS
from .registry import register_config_scope
from .utils import allow_mmengine_checkpoints

# mmengine's own checkpoints (resume, tools/test.py) fail torch's safe loader: allow-list exactly the
# globals they hold (see mmseg_actcomp/utils/checkpoint.py for what is trusted, and why not more).
allow_mmengine_checkpoints()
# Configs may inherit this package's own (`_base_ = ['mmseg_actcomp::...']`) once it is installed: see registry.py.
register_config_scope()

__all__ = ['__version__', 'CompressedConv2d', 'HOSVDConv2d', 'SVDConv2d', 'ActivationCompressionHook']
