"""mmseg-actcomp: compress the activations convolutions keep for backward (SVD / HOSVD) while
fine-tuning mmsegmentation models. Importing the package registers its layer types and hook, which is
what ``custom_imports = dict(imports=['mmseg_actcomp'])`` in a config does."""
from .version import __version__

__all__ = ['__version__']
