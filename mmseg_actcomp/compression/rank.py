"""Rank selection by explained variance, and validation of the threshold.

The explained variance of the ``k`` leading components of a matrix with singular values
``sigma_1 >= sigma_2 >= ...`` is ``sum_{i<=k} sigma_i^2 / sum_i sigma_i^2``. The kept rank for a threshold
``eps`` is the smallest ``k`` whose explained variance reaches ``eps``.
"""
import math
import numbers

from torch import Tensor


def validate_explained_variance(value) -> float:
    """Return ``value`` as a float if it is a valid explained-variance threshold, else raise.

    Args:
        value: a real number (``float``, ``int`` or a numpy scalar) in ``(0, 1]``; ``bool``, strings,
            tensors, NaN and values outside the interval are rejected.

    Raises:
        ValueError: naming the value and the allowed range.
    """
    valid = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if valid:
        valid = not math.isnan(value) and 0.0 < float(value) <= 1.0
    if not valid:
        raise ValueError(f'explained_variance must be a real number in (0, 1], got {value!r}')
    return float(value)


def rank_from_explained_variance(eigenvalues: Tensor, explained_variance: float, rtol: float) -> int:
    r"""Smallest rank whose explained variance reaches ``explained_variance``.

    Args:
        eigenvalues: ``(n,)`` squared singular values (eigenvalues of the Gram matrix) in descending
            order, any float dtype. Tiny negative values (rounding of a semi-definite Gram) count as 0.
        explained_variance: ``eps`` in ``(0, 1]``.
        rtol: relative rounding floor of ``eigenvalues``: values at or below ``rtol * max`` cannot be told
            apart from 0. Only used at ``eps = 1``.

    Returns:
        ``k`` in ``[0, n]``. ``0`` iff every eigenvalue is 0 (an all-zero matrix). For ``eps < 1``: the
        smallest ``k`` with ``cumsum(k) / total >= eps``, never counting zero components. For ``eps = 1``
        (an exact decomposition): the numerical rank, the number of eigenvalues above the rounding floor,
        because a cumulative sum in floating point can reach 1.0 before the last nonzero component or
        never reach it at all.
    """
    values = eigenvalues.double().clamp(min=0)
    nonzero = int((values > 0).sum())
    if nonzero == 0:
        return 0
    if explained_variance >= 1.0:
        return int((values > rtol * values.max()).sum())
    explained = values.cumsum(0) / values.sum()
    # The cumulative sum is nondecreasing, so the components below the threshold are a prefix.
    below = int((explained < explained_variance).sum())
    return min(below + 1, nonzero)
