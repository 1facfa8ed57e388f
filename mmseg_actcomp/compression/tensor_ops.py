"""Mode-n algebra on dense tensors: unfolding, Gram matrices and mode products.

The mode-n unfolding ``X_(n)`` of a tensor with shape ``(I_1, ..., I_N)`` is the ``I_n x prod(I_m, m != n)``
matrix whose columns are the mode-n fibres. Every function here views the tensor as ``(P, I_n, Q)``, where
``P`` and ``Q`` are the products of the sizes before and after mode ``n``, so that none of them has to
materialise the unfolding (a permuted copy as large as the tensor) just to multiply by it.
"""
import contextlib
import itertools
import math
from typing import ContextManager, Mapping, Sequence, Tuple

import torch
from torch import Tensor

# The batched Gram of a middle mode builds one (I_n, I_n) partial Gram per leading index; chunking the
# leading indices keeps those partials below this fraction of the tensor's own size.
_GRAM_CHUNK_FRACTION = 8


def _split_sizes(shape: Sequence[int], mode: int) -> Tuple[int, int, int]:
    """``(P, I_n, Q)``: the products of the sizes before ``mode``, the size of ``mode``, and after it."""
    return math.prod(shape[:mode]), shape[mode], math.prod(shape[mode + 1:])


def autocast_disabled(device_type: str) -> ContextManager:
    """A context turning autocast off on ``device_type``: under autocast, Gram matrices and mode products
    would silently run in half precision, losing the spectrum's tail (or overflowing, in fp16)."""
    if torch.amp.is_autocast_available(device_type):
        return torch.autocast(device_type, enabled=False)
    return contextlib.nullcontext()


def unfold(x: Tensor, mode: int) -> Tensor:
    r"""Mode-``mode`` unfolding of ``x``.

    Args:
        x: tensor of any shape ``(I_1, ..., I_N)``.
        mode: the mode ``n`` (0-based) whose fibres become columns.

    Returns:
        ``(I_n, prod(I_m, m != n))`` matrix, same dtype as ``x`` (a copy unless ``mode`` is 0 and ``x``
        is contiguous).
    """
    return x.movedim(mode, 0).reshape(x.shape[mode], -1)


def mode_gram(x: Tensor, mode: int) -> Tensor:
    r"""Gram matrix ``X_(n) X_(n)^T`` of the mode-``mode`` unfolding, without building the unfolding.

    Its eigenvalues are the squared singular values of ``X_(n)`` and its eigenvectors the left singular
    vectors, which is all a truncated (HO)SVD needs when ``I_n`` is small next to the other sizes.

    Args:
        x: tensor of any shape ``(I_1, ..., I_N)``.
        mode: the mode ``n`` (0-based).

    Returns:
        ``(I_n, I_n)`` symmetric matrix, same dtype and device as ``x``.
    """
    p, i, q = _split_sizes(x.shape, mode)
    if p == 1:
        m = x.reshape(i, q)
        return m @ m.mT
    if q == 1:
        m = x.reshape(p, i)
        return m.mT @ m
    x3 = x.reshape(p, i, q)
    gram = x.new_zeros(i, i)
    chunk = max(1, (p * q) // (_GRAM_CHUNK_FRACTION * i))
    for part in x3.split(chunk):
        gram += torch.bmm(part, part.mT).sum(0)
    return gram


def mode_cross(x: Tensor, y: Tensor, mode: int) -> Tensor:
    r"""``X_(n) Y_(n)^T`` of two tensors that differ at most in the size of mode ``mode``, without
    building either unfolding.

    Args:
        x: ``(I_1, ..., I_n, ..., I_N)``.
        y: ``(I_1, ..., J, ..., I_N)``, computed in ``x``'s dtype.
        mode: the mode ``n`` (0-based).

    Returns:
        ``(I_n, J)``, dtype of ``x``.
    """
    p, i, q = _split_sizes(x.shape, mode)
    j = y.shape[mode]
    y3 = y.to(x.dtype).reshape(p, j, q)
    if p == 1:
        return x.reshape(i, q) @ y3[0].mT
    if q == 1:
        return x.reshape(p, i).mT @ y3[..., 0]
    return torch.bmm(x.reshape(p, i, q), y3.mT).sum(0)


def mode_product(x: Tensor, matrix: Tensor, mode: int) -> Tensor:
    r"""Mode-n product ``x \times_n M``: multiply every mode-``mode`` fibre of ``x`` by ``matrix``.

    Args:
        x: tensor of shape ``(I_1, ..., I_n, ..., I_N)``.
        matrix: ``(J, I_n)``, computed in ``x``'s dtype (a float16 decomposition's factors meet its
            float32 core).
        mode: the mode ``n`` (0-based).

    Returns:
        Tensor of shape ``(I_1, ..., J, ..., I_N)``, contiguous, ``x``'s dtype.
    """
    matrix = matrix.to(x.dtype)
    p, i, q = _split_sizes(x.shape, mode)
    out_shape = x.shape[:mode] + (matrix.shape[0],) + x.shape[mode + 1:]
    if q == 1:
        # A batched product of (J, I_n) with P single columns is one plain (P, I_n) @ (I_n, J) product.
        return (x.reshape(p, i) @ matrix.mT).reshape(out_shape)
    return torch.matmul(matrix, x.reshape(p, i, q)).reshape(out_shape)


def _chain_cost(shape: Sequence[int], matrices: Mapping[int, Tensor], order: Sequence[int]) -> int:
    """Multiply-adds of applying ``matrices`` to a tensor of ``shape`` in ``order``: each step costs the
    current number of elements times the new size of its mode."""
    shape, cost = list(shape), 0
    for mode in order:
        new_size = matrices[mode].shape[0]
        cost += math.prod(shape) * new_size
        shape[mode] = new_size
    return cost


def multi_mode_product(x: Tensor, matrices: Mapping[int, Tensor]) -> Tensor:
    r"""``x \times_{n_1} M_{n_1} \times_{n_2} M_{n_2} \cdots`` for every ``mode: M`` in ``matrices``.

    Products along different modes commute, but their cost does not: shrinking a mode early makes the
    later products cheaper. With at most 4 modes all orders are tried and the cheapest is used.

    Args:
        x: tensor of shape ``(I_1, ..., I_N)``.
        matrices: ``{n: M_n}`` with ``M_n`` of shape ``(J_n, I_n)``, computed in ``x``'s dtype.

    Returns:
        Tensor whose size along each mode ``n`` in ``matrices`` is ``J_n`` (``x`` itself if empty).
    """
    order = min(itertools.permutations(matrices), key=lambda o: _chain_cost(x.shape, matrices, o))
    for mode in order:
        x = mode_product(x, matrices[mode], mode)
    return x
