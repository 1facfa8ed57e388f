"""Storage size of truncated decompositions, from shapes and ranks alone (no tensors needed)."""
import math
from typing import Sequence

import torch


def storage_elements(shape: Sequence[int], ranks: Sequence[int], modes: Sequence[int]) -> int:
    """Elements a Tucker decomposition stores: the core plus one ``(I_n, r_n)`` factor per truncated mode.

    Args:
        shape: ``(I_1, ..., I_N)`` of the decomposed tensor, e.g. ``(B, C, H, W)``.
        ranks: ``r_n`` for each mode in ``modes``, same order.
        modes: the truncated modes; the others are kept whole in the core.

    Returns:
        ``prod(R_n) + sum_{n in modes} I_n * r_n`` with ``R_n = r_n`` on truncated modes, ``I_n`` elsewhere.
    """
    if len(ranks) != len(modes):
        raise ValueError(f'got {len(ranks)} ranks for {len(modes)} modes')
    core_shape = list(shape)
    for mode, rank in zip(modes, ranks):
        core_shape[mode] = rank
    return math.prod(core_shape) + sum(shape[mode] * rank for mode, rank in zip(modes, ranks))


def svd_storage_elements(shape: Sequence[int], rank: int) -> int:
    """``k * (B + C*H*W)`` for a rank-``k`` SVD of the batch unfolding of ``shape = (B, C, H, W)``.

    The singular values are folded into the ``(k, C*H*W)`` right factor, so they add nothing.
    """
    return storage_elements(shape, (rank,), (0,))


def tucker_storage_elements(shape: Sequence[int], ranks: Sequence[int]) -> int:
    """``r1*r2*r3*r4 + sum_n I_n * r_n`` for a HOSVD of ``shape = (B, C, H, W)`` with ranks
    ``(r1, r2, r3, r4)``."""
    return storage_elements(shape, ranks, tuple(range(len(shape))))


def storage_bytes(shape: Sequence[int], ranks: Sequence[int], modes: Sequence[int],
                  dtype: torch.dtype) -> int:
    """:func:`storage_elements` times the element size of ``dtype`` (factors are stored in the
    activation's dtype)."""
    return storage_elements(shape, ranks, modes) * torch.empty((), dtype=dtype).element_size()
