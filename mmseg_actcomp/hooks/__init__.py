from .activation_compression_hook import ActivationCompressionHook

__all__ = ['ActivationCompressionHook']
