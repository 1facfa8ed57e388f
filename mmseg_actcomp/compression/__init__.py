"""Pure-torch activation compression: unfolding, rank from explained variance, truncated SVD / HOSVD,
reconstruction and storage size."""
from .decompose import (BATCH_MODE, METHODS, DecompositionError, NonFiniteActivationError, Tucker, add_channel_mean,
                        SubspaceEstimate, channel_mode_of, compress, hosvd, leading_singular_vectors, method_modes,
                        other_modes, reconstruct, single_cpu_thread, svd, truncated_modes, warm_leading_vectors)
from .quantize import (QUANTIZATION_BITS, Quantized, dequantize, pack_codes, quantize, unpack_codes,
                       validate_bits)
from .rank import rank_from_explained_variance, validate_explained_variance
from .storage import storage_bytes, storage_elements, svd_storage_elements, tucker_storage_elements
from .tensor_ops import autocast_disabled, mode_cross, mode_gram, mode_product, multi_mode_product, unfold

__all__ = [
    'METHODS', 'DecompositionError', 'NonFiniteActivationError', 'Tucker', 'add_channel_mean', 'SubspaceEstimate',
    'compress', 'hosvd', 'truncated_modes', 'method_modes', 'other_modes', 'channel_mode_of', 'BATCH_MODE',
    'leading_singular_vectors', 'warm_leading_vectors', 'mode_cross',
    'reconstruct', 'svd', 'rank_from_explained_variance', 'validate_explained_variance', 'storage_bytes',
    'storage_elements', 'svd_storage_elements', 'tucker_storage_elements', 'mode_gram', 'mode_product',
    'multi_mode_product', 'unfold', 'autocast_disabled', 'single_cpu_thread', 'QUANTIZATION_BITS', 'Quantized',
    'dequantize', 'pack_codes', 'quantize', 'unpack_codes', 'validate_bits'
]
