from .activation_compression_hook import ActivationCompressionHook, default_options

__all__ = ['ActivationCompressionHook', 'default_options']
