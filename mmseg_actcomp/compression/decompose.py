r"""Truncated SVD and HOSVD (Tucker) of activation tensors, ranks chosen by explained variance.

Both methods are the same operation on different sets of modes. A truncated Tucker decomposition along
the modes ``M`` keeps, for each ``n`` in ``M``, the ``r_n`` leading left singular vectors ``U_n`` of the
mode-n unfolding (``r_n`` the smallest rank explaining a fraction ``eps`` of its energy), and the core
``S = x \times_{n in M} U_n^T``; ``x ~ S \times_{n in M} U_n``.

* HOSVD: ``M`` = every mode of ``x``: the four of a conv's ``(B, C, H, W)``, the three of a linear
  layer's ``(B, N, C)`` tokens, ... (:func:`method_modes`).
* SVD along the batch mode: ``M = {0}``. The core ``U_1^T X_(1)`` is ``Sigma V^T`` reshaped to
  ``(k, C, H, W)``: the singular values are folded into the right factor, so the kept elements are
  ``k * (B + C*H*W)``.

The singular vectors come from ``torch.linalg.eigh`` of the smaller Gram matrix of the unfolding (its
eigenvalues are ``sigma^2``) instead of a full SVD, which is what makes compression cheap: ``X_(n)
X_(n)^T`` (``I_n x I_n``) for a wide unfolding, ``X_(n)^T X_(n)`` for a tall one (``I_n`` larger than the
product of the other sizes), all-zero rows left out.
"""
import contextlib
import math
from typing import Callable, Dict, Iterator, Mapping, NamedTuple, Optional, Sequence, Tuple

import torch
from torch import Tensor

from .rank import rank_from_explained_variance, validate_explained_variance
from .tensor_ops import autocast_disabled, mode_cross, mode_gram, mode_product, multi_mode_product, unfold

#: the batch mode of an activation (its first): its samples
BATCH_MODE = 0
#: The modes each method decomposes of an activation of ``ndim`` modes, batch first (``(B, C, H, W)``,
#: ``(B, N, C)``, ``(B, C)``, ...): SVD the batch mode of its ``(B, rest)`` unfolding, HOSVD every mode.
_METHOD_MODES = {'svd': lambda ndim: (BATCH_MODE,), 'hosvd': lambda ndim: tuple(range(ndim))}
#: The modes each method truncates, for a ``(B, C, H, W)`` activation (:func:`method_modes` for others).
METHODS = {method: modes(4) for method, modes in _METHOD_MODES.items()}


def method_modes(method: str, ndim: int = 4) -> Tuple[int, ...]:
    """The modes ``method`` decomposes of an activation of ``ndim >= 2`` modes with the batch mode first:
    ``(0,)`` for SVD, ``(0, ..., ndim - 1)`` for HOSVD; ``METHODS[method]`` for ``ndim = 4``.

    Raises:
        ValueError: ``method`` unknown, or ``ndim`` not an integer >= 2 (a batch mode and another).
    """
    if method not in METHODS:
        raise ValueError(f'method={method!r} is not one of {sorted(METHODS)}')
    if isinstance(ndim, bool) or not isinstance(ndim, int) or ndim < 2:
        raise ValueError(f'ndim={ndim!r}: an activation to decompose has a batch mode and at least one other '
                         '(ndim an integer >= 2)')
    return _METHOD_MODES[method](ndim)


def truncated_modes(method: str, truncate_batch: bool = True, ndim: int = 4) -> Tuple[int, ...]:
    """The modes ``method`` truncates of an activation of ``ndim`` modes, batch first:
    :func:`method_modes`, less the batch mode unless ``truncate_batch``.

    Truncating the batch mode mixes the samples of a batch: each keeps only its coordinates on the leading
    batch components. Left whole, every sample keeps its own coordinates in the shared channel and spatial
    (or token) bases (the core grows by ``B / r_1``), and the weight gradient keeps the samples' own
    correlations with their output gradients (docs/grad_fidelity.md measures what each mode's truncation
    costs it).

    Raises:
        ValueError: ``method`` unknown, ``ndim`` below 2, or SVD (whose one mode is the batch mode) without
            ``truncate_batch``.
    """
    modes = tuple(n for n in method_modes(method, ndim) if truncate_batch or n != BATCH_MODE)
    if not modes:
        raise ValueError(f"method={method!r} truncates only the batch mode: truncate_batch=False leaves it "
                         "nothing to truncate (use method='hosvd')")
    return modes


def other_modes(ndim: int, mode: int) -> Tuple[int, ...]:
    """Every mode of an ``ndim``-mode tensor but ``mode``: what a per-``mode`` mean (a per-channel mean of
    an activation) averages over."""
    return tuple(n for n in range(ndim) if n != mode)


def channel_mode_of(x: Tensor, channel_mode: int, name: str = 'activation') -> int:
    """``channel_mode`` as a mode index of ``x`` in ``[0, x.dim())`` (a negative one counts from the end);
    ValueError naming it otherwise."""
    if isinstance(channel_mode, bool) or not isinstance(channel_mode, int) \
            or not -x.dim() <= channel_mode < x.dim():
        raise ValueError(f'{name}: channel_mode={channel_mode!r} is not a mode of a {x.dim()}-d tensor of shape '
                         f'{tuple(x.shape)}: give an integer in [{-x.dim()}, {x.dim()}) (1 for (B, C, H, W), '
                         '-1 for channel-last (..., C))')
    return channel_mode % x.dim()

# Spectral problems up to this size are solved in float64: next to forming the Gram from a whole
# activation that costs little (a 512 eigh: 0.04 s against 0.02 s in float32, one thread), and it keeps
# the small eigenvalues (the tail at eps close to 1) exact. Above it float64 costs real time: the three
# 960-channel Grams of DeepLabV3-MV2's fine-tuned backbone convs took 0.6 s of a 3 s step (0.35 s in
# float32). At eps = 1 the whole decomposition runs in float64 anyway (_work_dtype).
_FLOAT64_SPECTRUM_MAX_SIZE = 512

# Larger Grams are not diagonalised whole below eps = 1: a randomized subspace iteration finds their
# leading eigenpairs until those explain eps of the trace (_leading_eigh). A full float32 eigh of the
# 2048 Gram of DeepLabV3-MV2's bottleneck input took 0.6 s of a 2.3 s step, one thread, for 25 kept
# vectors. The sketch starts _SKETCH_WIDTH wide and doubles while the rank it finds is within
# _OVERSAMPLING of its width (the last Ritz values of a sketch are the least accurate); past a quarter
# of the Gram's size the full eigh is cheaper and takes over.
_SKETCH_WIDTH = 32
_OVERSAMPLING = 8
_POWER_ITERATIONS = 2


class DecompositionError(RuntimeError):
    """Raised when every eigen-solver failed on a Gram matrix (float32 and float64 ``eigh``, then an
    SVD): callers that can do without the decomposition (a layer keeping its input whole) catch it."""


class NonFiniteActivationError(FloatingPointError):
    """Raised when an activation to compress holds NaN or Inf: its spectrum, hence its ranks, are
    undefined, and storing it compressed would silently turn the weight gradient into garbage."""


class Tucker(NamedTuple):
    r"""A truncated Tucker decomposition ``x ~ core \times_n factors[n]`` (over the non-None factors).

    Attributes:
        core: ``(R_1, ..., R_N)`` where ``R_n = r_n`` for a truncated mode and ``I_n`` for a mode kept
            whole.
        factors: ``N`` entries; entry ``n`` is ``U_n: (I_n, r_n)`` with orthonormal columns, or ``None``
            for a mode kept whole (an identity factor, not stored).
    """
    core: Tensor
    factors: Tuple[Optional[Tensor], ...]

    @property
    def modes(self) -> Tuple[int, ...]:
        """The truncated modes, ascending."""
        return tuple(n for n, factor in enumerate(self.factors) if factor is not None)

    @property
    def ranks(self) -> Tuple[int, ...]:
        """``r_n`` for each truncated mode, in ``modes`` order: ``(k,)`` for SVD, ``(r1, r2, r3, r4)`` for
        HOSVD."""
        return tuple(self.core.shape[n] for n in self.modes)

    @property
    def shape(self) -> torch.Size:
        """Shape ``(I_1, ..., I_N)`` of the decomposed tensor."""
        return torch.Size(size if factor is None else factor.shape[0]
                          for size, factor in zip(self.core.shape, self.factors))

    @property
    def tensors(self) -> Tuple[Tensor, ...]:
        """Everything stored: the core, then the factors of ``modes``."""
        return (self.core,) + tuple(self.factors[n] for n in self.modes)

    @property
    def nbytes(self) -> int:
        """Bytes of ``tensors``."""
        return sum(t.numel() * t.element_size() for t in self.tensors)

    @classmethod
    def from_tensors(cls, tensors: Sequence[Tensor], modes: Sequence[int]) -> 'Tucker':
        """Inverse of ``tensors``: ``tensors`` = (core, U_n for n in ``modes``)."""
        factors = [None] * tensors[0].dim()
        for mode, factor in zip(modes, tensors[1:]):
            factors[mode] = factor
        return cls(tensors[0], tuple(factors))


def _work_dtype(x: Tensor, explained_variance: float) -> torch.dtype:
    """dtype of the decomposition arithmetic for ``x``.

    float32 for half-precision inputs (an fp16 Gram overflows and a bf16 one loses the spectrum's tail);
    float64 for float64 inputs and at ``eps = 1``, which asks for an exact decomposition: a float32 Gram
    only resolves singular values down to about ``sqrt(I_n * 1e-7)`` of the largest.
    """
    if x.dtype == torch.float64 or explained_variance >= 1.0:
        return torch.float64
    return torch.float32


def _require_finite(values: Tensor, name: str, mode: int) -> None:
    if not bool(torch.isfinite(values).all()):
        raise NonFiniteActivationError(
            f'{name}: the activation to compress contains NaN or Inf (seen in its mode-{mode} '
            f'unfolding), so no rank can be chosen for it; the forward pass has diverged upstream')


@contextlib.contextmanager
def single_cpu_thread(device: torch.device) -> Iterator[None]:
    """A context running torch single-threaded if ``device`` is a CPU (and doing nothing otherwise); the
    eigen-solvers here run in it.

    MKL's eigen-solvers open a parallel region per column of the tridiagonal reduction. On a few cores
    that gains little, and when other processes share the cores every region waits for a descheduled
    thread: a 512 x 512 ``eigh`` was seen taking 9 s instead of 0.04 s. ``torch.set_num_threads`` is
    process-wide, so torch work running concurrently in another Python thread sees one thread meanwhile.
    """
    if device.type != 'cpu':
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


class _Spectrum(NamedTuple):
    """What a rank choice needs of one unfolding ``X_(n): (I_n, J)``."""
    eigenvalues: Tensor  # (m,) squared singular values, descending (or _leading_eigh's values)
    rtol: float  # relative rounding floor of ``eigenvalues``
    basis: Callable[[int], Tensor]  # rank r -> the leading r left singular vectors (I_n, r)


def _symmetric_eigh(gram: Tensor) -> Tuple[Tensor, Tensor]:
    """Eigenvalues ``(m,)`` descending and eigenvectors ``(m, m)`` of a symmetric PSD ``gram`` in its dtype,
    by ``eigh``; where LAPACK's ``eigh`` does not converge (seen on a float32 2560-channel Gram with a
    thousand dead channels, single-threaded), again in float64, then by an SVD (for a PSD matrix its
    singular values and left vectors are the eigenpairs), then :class:`DecompositionError`."""
    errors = []
    for dtype in dict.fromkeys((gram.dtype, torch.float64)):
        try:
            values, vectors = torch.linalg.eigh(gram.to(dtype))
            return values.flip(0).to(gram.dtype), vectors.flip(1).to(gram.dtype)
        except RuntimeError as e:  # torch.linalg.LinAlgError is one
            errors.append(f'eigh in {dtype}: {e}')
    try:
        vectors, values, _ = torch.linalg.svd(gram.double())
        return values.to(gram.dtype), vectors.to(gram.dtype)
    except RuntimeError as e:
        errors.append(f'svd in torch.float64: {e}')
    raise DecompositionError(f'no eigen-solver converged on a {tuple(gram.shape)} Gram matrix: '
                             + '; '.join(errors))


def _eigh_descending(gram: Tensor, device: torch.device) -> Tuple[Tensor, Tensor, float]:
    """Eigenvalues ``(m,)`` descending, eigenvectors ``(m, m)`` and the eigenvalues' relative rounding
    floor, of a symmetric Gram ``(m, m)``; float64 up to ``_FLOAT64_SPECTRUM_MAX_SIZE``
    (:func:`_symmetric_eigh`, with its fallbacks)."""
    size = gram.shape[0]
    spectral_dtype = torch.float64 if size <= _FLOAT64_SPECTRUM_MAX_SIZE else gram.dtype
    with single_cpu_thread(device):
        eigenvalues, vectors = _symmetric_eigh(gram.to(spectral_dtype))
    # The Gram is only as accurate as the dtype it was accumulated in.
    return eigenvalues, vectors, size * torch.finfo(gram.dtype).eps


def _rayleigh_ritz(projected: Tensor, total: Tensor, device: torch.device) -> Tuple[Tensor, Tensor, float]:
    r"""Ritz pairs of ``projected = Q^T A Q: (p, p)`` (``Q`` orthonormal, ``A`` a PSD Gram of trace ``total``).

    Returns:
        ``(values, vectors, rtol)``: ``values (p + 1,)`` float64, the Ritz values descending (clamped at 0),
        then the energy they leave out of ``total`` as one last pseudo-component, so that a rank chosen on
        them counts the whole trace and is at most ``p``; ``vectors (p, p)`` in ``Q``'s coordinates (the
        Ritz vectors are ``Q @ vectors``); ``rtol`` the rounding floor of the small eigenproblem.
    """
    ritz_values, vectors, rtol = _eigh_descending((projected + projected.mT) / 2, device)
    ritz_values = ritz_values.double().clamp(min=0)
    return torch.cat([ritz_values, (total - ritz_values.sum()).clamp(min=0)[None]]), vectors, rtol


def _leading_eigh(gram: Tensor, explained_variance: float,
                  device: torch.device) -> Tuple[Tensor, Tensor, float]:
    r"""As :func:`_eigh_descending`, but for ``eps < 1`` and a Gram ``(m, m)`` larger than
    ``_FLOAT64_SPECTRUM_MAX_SIZE`` only the leading eigenpairs that explain ``eps`` of its energy.

    Randomized subspace iteration (Halko, Martinsson & Tropp 2011, Algorithm 4.4): ``Q = orth(G^q G
    Omega)`` for a Gaussian ``Omega: (m, p)``, then the Ritz pairs of ``Q^T G Q``. The top-``r`` Ritz
    vectors capture exactly the sum of the top-``r`` Ritz values, which never exceed the true eigenvalues:
    the rank chosen from them keeps at least ``eps`` of the energy, as the exact one does, and is at
    least the exact rank (a little more only where the sketch has not converged). ``Omega`` comes from a
    generator seeded 0, so compression is deterministic and leaves torch's global RNG alone.

    Returns:
        ``(values, vectors, rtol)``: ``values (p + 1,)`` are the ``p`` Ritz values, descending, then the
        energy they leave out as one last pseudo-component (so a rank chosen on ``values`` is over the
        whole trace, and always ``<= p``); ``vectors (m, p)``. The full eigendecomposition where ``eps =
        1``, ``m <= _FLOAT64_SPECTRUM_MAX_SIZE`` or the sketch would grow past ``m / 4``.
    """
    size = gram.shape[0]
    if explained_variance >= 1.0 or size <= _FLOAT64_SPECTRUM_MAX_SIZE:
        return _eigh_descending(gram, device)
    total = gram.diagonal().double().sum()
    generator = torch.Generator(device=gram.device).manual_seed(0)
    width, ritz_vectors = _SKETCH_WIDTH, gram.new_zeros(size, 0)
    while 4 * width <= size:
        sketch = torch.randn(size, width - ritz_vectors.shape[1], generator=generator,
                             device=gram.device, dtype=gram.dtype)
        q = torch.linalg.qr(gram @ torch.cat([ritz_vectors, sketch], dim=1)).Q
        for _ in range(_POWER_ITERATIONS):
            q = torch.linalg.qr(gram @ q).Q
        values, small, _ = _rayleigh_ritz((q.mT @ gram @ q).double(), total, device)
        ritz_vectors = q @ small.to(q.dtype)
        rtol = size * torch.finfo(gram.dtype).eps
        # the rank the sketch offers; width + 1 (the left-out energy) if it does not reach eps
        if rank_from_explained_variance(values, explained_variance, rtol) + _OVERSAMPLING <= width:
            return values, ritz_vectors, rtol
        width *= 2
    return _eigh_descending(gram, device)


def _spectrum(x: Tensor, mode: int, explained_variance: float, name: str) -> _Spectrum:
    """The spectrum of the mode-``mode`` unfolding ``X_(n): (I_n, J)`` of ``x``, from the smaller of its
    two Gram matrices once its all-zero rows are dropped; for a Gram above
    ``_FLOAT64_SPECTRUM_MAX_SIZE`` only its part that ``explained_variance`` needs (:func:`_leading_eigh`).

    All-zero mode-n slices (channels a ReLU killed for the whole batch: a thousand of the 2560 in an
    ASPP bottleneck's input) contribute nothing to the spectrum, so they are left out of the Gram. If
    ``L`` slices remain and ``L <= J``, the eigenvectors of ``X X^T (L, L)`` are the left singular vectors.
    Otherwise ``X^T X (J, J)`` is the smaller problem: its eigenvectors ``V`` are the right singular
    vectors, and ``orth(X V_r)`` spans the leading ``r`` left ones (an ``eigh`` of a 2048 Gram is about
    four times faster than the thin SVD of a 2560 x 2048 unfolding, which also computed all 2048).
    """
    size = x.shape[mode]
    others = x.numel() // size
    # The squared norms of the mode-n slices: finite iff every element of x is.
    slice_energy = x.square().sum([d for d in range(x.dim()) if d != mode])
    _require_finite(slice_energy, name, mode)
    live = slice_energy.nonzero().squeeze(1)

    def scatter(vectors: Tensor) -> Tensor:  # (L, r) rows of the live slices -> (I_n, r)
        if live.numel() == size:
            return vectors
        full = vectors.new_zeros(size, vectors.shape[1])
        full[live] = vectors
        return full

    if live.numel() == 0:  # an all-zero tensor: rank 0
        return _Spectrum(x.new_zeros(1), 0.0, lambda rank: x.new_zeros(size, rank))
    if live.numel() <= others:
        gram = mode_gram(x if live.numel() == size else x.index_select(mode, live), mode)
        eigenvalues, vectors, rtol = _leading_eigh(gram, explained_variance, x.device)
        return _Spectrum(eigenvalues, rtol, lambda rank: scatter(vectors[:, :rank]))
    matrix = unfold(x, mode)[live]
    eigenvalues, right, rtol = _leading_eigh(matrix.mT @ matrix, explained_variance, x.device)

    def basis(rank: int) -> Tensor:
        # X V_r = U_r Sigma_r: orthonormalising it gives U_r up to signs, exactly where Sigma_r > 0
        # (the rank never counts a zero component).
        return scatter(torch.linalg.qr(matrix @ right[:, :rank].to(matrix.dtype)).Q)
    return _Spectrum(eigenvalues, rtol, basis)


def leading_singular_vectors(x: Tensor, mode: int, explained_variance: float,
                             name: str = 'activation') -> Tensor:
    """Leading left singular vectors of the mode-``mode`` unfolding of ``x``, explaining a fraction
    ``explained_variance`` of its energy (see :func:`rank_from_explained_variance`).

    Args:
        x: tensor ``(I_1, ..., I_N)``, float32 or float64 (the dtype the arithmetic runs in).
        mode: the mode ``n``.
        explained_variance: ``eps`` in ``(0, 1]``.
        name: names the activation in errors.

    Returns:
        ``U_n: (I_n, r_n)`` with orthonormal columns, dtype of ``x``; ``r_n = 0`` iff ``x`` is all zero.

    Raises:
        NonFiniteActivationError: ``x`` holds NaN or Inf.
    """
    spectrum = _spectrum(x, mode, explained_variance, name)
    rank = rank_from_explained_variance(spectrum.eigenvalues, explained_variance, spectrum.rtol)
    # A column slice is a view of the whole eigen- or singular-vector matrix (even when it looks
    # contiguous, e.g. one column): clone it, or the kept factor pins the whole storage.
    return spectrum.basis(rank).to(x.dtype).clone(memory_format=torch.contiguous_format)


def _subspace_iteration_cheaper(width: int, size: int) -> bool:
    """Whether one subspace iteration of ``width`` columns on a mode of ``size`` costs fewer
    multiply-adds than that mode's Gram (see :func:`warm_leading_vectors`)."""
    return 3 * width + width * width / size < size


def warm_leading_vectors(x: Tensor, mode: int, explained_variance: float, previous: Tensor,
                         name: str = 'activation') -> Tensor:
    r"""As :func:`leading_singular_vectors`, from one subspace iteration started at ``previous`` (e.g. the
    last step's basis of this mode) instead of a Gram matrix and its eigendecomposition (ASI, Nguyen et
    al. 2025), with the rank still chosen by ``eps`` on this very ``x``.

    ``Q = orth(X_(n) X_(n)^T U_prev)`` costs about ``2 r I_n J`` multiply-adds against the Gram's
    ``I_n^2 J`` (``J``: the product of the other sizes; ``r`` columns of ``previous``). Rayleigh-Ritz on
    it: the eigenpairs ``(lambda_i, v_i)`` of ``Q^T X_(n) X_(n)^T Q: (r, r)`` give bases ``Q v_1..k`` whose
    captured energy ``||U_k^T X_(n)||^2`` is exactly ``lambda_1 + ... + lambda_k``, so the smallest ``k``
    whose share of ``||X||^2`` reaches ``eps`` is kept: every call meets ``eps`` (with a rank at least the
    exact one; more only where the subspace lags), and the rank shrinks as the spectrum does. Where even
    all of ``Q`` captures less, it widens by ``r`` seeded Gaussian directions and iterates again. The
    iteration, ``U_prev``'s product, ``X_(n)`` times it, ``Q``'s product and that one's Gram, costs ``(3 r
    + r^2 / I_n) I_n J``: where that is not below the Gram's ``I_n^2 J`` (a wide ``previous`` or a short
    mode, e.g. 16 pixels), the exact :func:`leading_singular_vectors` is the cheaper one and runs.

    Args:
        x: tensor ``(I_1, ..., I_N)``, float32 or float64.
        mode: the mode ``n``.
        explained_variance: ``eps`` in ``(0, 1]`` (at 1 the exact path runs).
        previous: ``(I_n, r_0)``, ``r_0 >= 1``, orthonormal columns, any float dtype.
        name: names the activation in errors.

    Returns:
        ``U_n: (I_n, r_n)`` with orthonormal columns, dtype of ``x``.

    Raises:
        ValueError: ``previous`` is not ``(I_n, r_0 >= 1)``.
        NonFiniteActivationError: ``x`` holds NaN or Inf.
    """
    size = x.shape[mode]
    if previous.dim() != 2 or previous.shape[0] != size or previous.shape[1] < 1:
        raise ValueError(f'{name}: previous basis of shape {tuple(previous.shape)} does not fit mode {mode} '
                         f'of size {size}: give ({size}, r >= 1)')
    total = x.double().square().sum()
    _require_finite(total[None], name, mode)
    if explained_variance >= 1.0 or float(total) == 0.0:
        return leading_singular_vectors(x, mode, explained_variance, name)
    basis, generator = previous.to(x.dtype), None
    while _subspace_iteration_cheaper(basis.shape[1], size):
        q = torch.linalg.qr(mode_cross(x, mode_product(x, basis.mT, mode), mode)).Q  # (I_n, r)
        projected = mode_gram(mode_product(x, q.mT, mode), mode)  # Q^T X_(n) X_(n)^T Q: (r, r)
        values, vectors, rtol = _rayleigh_ritz(projected, total, x.device)
        rank = rank_from_explained_variance(values, explained_variance, rtol)
        if rank <= q.shape[1]:
            return (q @ vectors[:, :rank].to(q.dtype)).contiguous()
        if generator is None:
            generator = torch.Generator(device=x.device).manual_seed(0)
        basis = torch.cat([q, torch.randn(size, q.shape[1], generator=generator, device=x.device,
                                          dtype=x.dtype)], dim=1)
    return leading_singular_vectors(x, mode, explained_variance, name)


def compress(x: Tensor, explained_variance: float, modes: Sequence[int],
             name: str = 'activation', center: bool = False,
             fixed: Optional[Mapping[int, Tensor]] = None, warm: Optional[Mapping[int, Tensor]] = None,
             channel_mode: int = 1) -> Tucker:
    r"""Truncated Tucker decomposition of ``x`` along ``modes``, ranks by explained variance.

    Args:
        x: ``(B, C, H, W)`` (any number of modes works: a linear layer's ``(B, N, C)``, ``(B, H, W, C)``,
            ``(B, C)``), float16, bfloat16, float32 or float64, any memory format; must not be empty. Not
            differentiated through.
        explained_variance: ``eps`` in ``(0, 1]``; at 1 the decomposition is exact up to rounding.
        modes: the modes to truncate, e.g. ``METHODS['svd']`` or ``METHODS['hosvd']``.
        name: names the activation in errors (layers pass their ``layer_name``).
        center: keep the per-channel mean of ``x`` (over every mode but ``channel_mode``: batch, height
            and width of a ``(B, C, H, W)``) exactly and decompose only ``x`` minus it, the ranks then
            chosen by the variation's energy (see :func:`add_channel_mean`). After a ReLU most of an
            activation's energy is its mean: ranks by the raw energy then collapse to about 1 and keep
            little besides the mean.
        fixed: mode -> a basis ``(I_n, r_n)`` with orthonormal columns to use for that mode as it is (no
            eigendecomposition, no rank choice: e.g. :class:`SubspaceEstimate`'s, frozen after the first
            batches). Other modes in ``modes`` are decomposed as usual.
        warm: mode -> a basis ``(I_n, r)`` to start that mode's decomposition from (e.g. the factor the
            last step's ``compress`` returned for it): one subspace iteration instead of a Gram's
            eigendecomposition, the rank still chosen so that ``eps`` is met on ``x``
            (:func:`warm_leading_vectors`). An entry that does not fit its mode is ignored (exact).
        channel_mode: the mode ``center`` keeps the mean of: 1 for a conv's ``(B, C, H, W)``, the last
            (``-1``) for a linear layer's channel-last input. Read only with ``center``.

    Returns:
        :class:`Tucker` whose core and factors have the dtype and device of ``x`` (the core float32 for a
        float16 ``x``: it holds the input's norm). The decomposition itself runs in float32 (float64 for
        float64 inputs or ``eps = 1``), autocast or not. Its factors are orthonormal.

    Raises:
        ValueError: ``explained_variance`` outside ``(0, 1]``, ``x`` empty, ``modes`` not modes of ``x``,
            or (with ``center``) ``channel_mode`` not a mode of it.
        NonFiniteActivationError: ``x`` holds NaN or Inf.
        DecompositionError: no eigen-solver converged on one of its Gram matrices (after the fallbacks).
    """
    explained_variance = validate_explained_variance(explained_variance)
    if isinstance(modes, str) or not all(isinstance(n, int) and 0 <= n < x.dim() for n in modes):
        raise ValueError(f'{name}: modes={modes!r} must be mode indices of a {x.dim()}-d tensor, e.g. '
                         f"METHODS['hosvd'] = {METHODS['hosvd']} (METHODS maps a method name to its modes)")
    if x.numel() == 0:
        raise ValueError(f'{name}: cannot compress an empty tensor of shape {tuple(x.shape)}')
    if center:
        channel_mode = channel_mode_of(x, channel_mode, name)
    fixed = dict(fixed or {})
    for n, basis in fixed.items():
        if n not in modes or basis.dim() != 2 or basis.shape[0] != x.shape[n] or basis.shape[1] < 1:
            raise ValueError(f'{name}: fixed basis of mode {n} has shape {tuple(basis.shape)}; it must be '
                             f'(I_n, r >= 1) for one of the modes {tuple(modes)} of shape {tuple(x.shape)}')
    warm = {n: u for n, u in (warm or {}).items()
            if n in modes and n not in fixed and u.dim() == 2 and u.shape[0] == x.shape[n] and u.shape[1] > 0}
    with torch.no_grad(), autocast_disabled(x.device.type):
        work = x.detach().to(_work_dtype(x, explained_variance), memory_format=torch.contiguous_format)
        mean = work.mean(dim=other_modes(x.dim(), channel_mode), keepdim=True) if center else None
        if mean is not None:
            work = work - mean
        bases = {n: fixed[n].to(work.dtype) if n in fixed
                 else warm_leading_vectors(work, n, explained_variance, warm[n], name) if n in warm
                 else leading_singular_vectors(work, n, explained_variance, name) for n in modes}
        core = multi_mode_product(work, {n: u.mT for n, u in bases.items()})
        tucker = Tucker(core, tuple(bases.get(n) for n in range(x.dim())))
        if mean is not None:
            tucker = add_channel_mean(tucker, mean.flatten(), channel_mode)
    # The core carries the input's whole norm (the factors are orthonormal): in float16, whose largest
    # value is 65504, it overflows for an input of norm above that although every element fits. It stays
    # in float32 then; the factors (entries at most 1) take the input's dtype.
    core_dtype = torch.float32 if x.dtype == torch.float16 else x.dtype
    return Tucker(tucker.core.to(core_dtype), tuple(None if u is None else u.to(x.dtype) for u in tucker.factors))


class SubspaceEstimate:
    """Mode-``n`` Gram matrices of the inputs a layer sees in its first batches, summed, and the bases that
    explain ``eps`` of them: a subspace frozen for the rest of training (LANCE's calibrated bases, with
    ranks by explained variance), so that later steps only project.

    ``add(x)`` per batch ``x: (B, C, H, W)`` (or a linear layer's ``(B, N, C)``, ...; centred per channel,
    the channel mode ``channel_mode``, as :func:`compress` with ``center``); ``bases(eps)`` -> mode ->
    ``(I_n, r_n)``, orthonormal columns, float32.
    """

    def __init__(self, modes: Sequence[int], center: bool = True, channel_mode: int = 1) -> None:
        self.modes, self.center, self.channel_mode = tuple(modes), center, channel_mode
        self.grams: Dict[int, Tensor] = {}
        self.batches = 0

    def add(self, x: Tensor) -> None:
        with torch.no_grad(), autocast_disabled(x.device.type):
            work = x.detach().float()
            if self.center:
                work = work - work.mean(dim=other_modes(work.dim(), self.channel_mode % work.dim()), keepdim=True)
            for n in self.modes:
                gram = mode_gram(work, n)
                self.grams[n] = gram if n not in self.grams else self.grams[n] + gram
        self.batches += 1

    def bases(self, explained_variance: float) -> Dict[int, Tensor]:
        bases = {}
        for n, gram in self.grams.items():
            values, vectors, rtol = _eigh_descending((gram + gram.mT) / 2, gram.device)
            rank = max(1, rank_from_explained_variance(values, explained_variance, rtol))
            bases[n] = vectors[:, :rank].float().contiguous()
        return bases


def add_channel_mean(tucker: Tucker, mean: Tensor, channel_mode: int = 1) -> Tucker:
    r"""One :class:`Tucker` for ``reconstruct(tucker) + mean`` broadcast over every mode but ``channel_mode``
    (batch, height and width of a ``(B, C, H, W)``; batch and tokens of a linear layer's ``(B, N, C)``).

    The broadcast mean ``M[b, c, h, w] = mean[c]`` is itself a rank-1 Tucker tensor: factors
    ``1/sqrt(B)``, ``mean / ||mean||``, ``1/sqrt(H)``, ``1/sqrt(W)`` and core ``||mean|| sqrt(BHW)`` (the
    constant factor ``1/sqrt(I_n)`` along every mode but the channel one, whatever their number). A sum of
    two Tucker tensors is one whose factors are the two factors side by side along every truncated mode
    and whose core holds the two cores as blocks (the mean's at index 0, the other's after it), so the
    weight gradient reads it like any other decomposition. Modes kept whole carry the mean's values in
    its block instead. Each side-by-side factor ``[u, U_n] = Q_n R_n`` is then orthonormalised (thin QR)
    and ``R_n`` folded into the core: the same tensor, orthonormal factors, and no rank above its mode's
    size (``r_n + 1`` columns in a mode of ``r_n`` rows span at most ``r_n``).

    Args:
        tucker: decomposition of a tensor of ``N >= 2`` modes (at least one truncated).
        mean: ``(C,)``, ``C`` the size of ``channel_mode``.
        channel_mode: the mode ``mean`` runs along, in ``[0, N)``: 1 for ``(B, C, H, W)``, ``N - 1`` for a
            channel-last input.

    Returns:
        :class:`Tucker` with ranks ``min(r_n + 1, I_n)`` along the truncated modes and orthonormal factors
        (``tucker`` itself if ``mean`` is all zero).
    """
    if not tucker.modes:
        raise ValueError('add_channel_mean needs a decomposition with at least one truncated mode')
    norm = mean.norm()
    if float(norm) == 0.0:
        return tucker
    sizes, truncated, modes = tucker.shape, set(tucker.modes), range(tucker.core.dim())
    # The mean's block M x_n u_n^T: size 1 along truncated modes (each contraction with a constant
    # column 1/sqrt(I_n) scales by sqrt(I_n), the one with mean/||mean|| gives ||mean||), full size along
    # modes kept whole (the mean's values along the channel mode, constant along the others).
    scale = math.prod(sizes[n] ** 0.5 for n in truncated - {channel_mode})
    if channel_mode in truncated:
        block = (norm * scale).reshape([1] * len(modes))
    else:
        block = (mean * scale).reshape([-1 if n == channel_mode else 1 for n in modes])
    block = block.expand(*[1 if n in truncated else sizes[n] for n in modes])
    factors = []
    for n, factor in enumerate(tucker.factors):
        if factor is None:
            factors.append(None)
            continue
        column = mean / norm if n == channel_mode else factor.new_full((sizes[n],), sizes[n] ** -0.5)
        factors.append(torch.cat([column[:, None].to(factor.dtype), factor], dim=1))
    core = tucker.core.new_zeros([size + 1 if n in truncated else size
                                  for n, size in enumerate(tucker.core.shape)])
    core[tuple(slice(0, 1) if n in truncated else slice(None) for n in modes)] = block
    core[tuple(slice(1, None) if n in truncated else slice(None) for n in modes)] = tucker.core
    thin = {n: torch.linalg.qr(factor) for n, factor in enumerate(factors) if factor is not None}
    core = multi_mode_product(core, {n: qr.R for n, qr in thin.items()})
    return Tucker(core, tuple(thin[n].Q if n in thin else None for n in modes))


def svd(x: Tensor, explained_variance: float, name: str = 'activation') -> Tucker:
    """Truncated SVD of the batch unfolding ``(B, C*H*W)`` of ``x: (B, C, H, W)``; see :func:`compress`.

    Returns:
        :class:`Tucker` with core ``(k, C, H, W)`` (``Sigma V^T``) and factors ``(U: (B, k), None, None,
        None)``.
    """
    return compress(x, explained_variance, METHODS['svd'], name)


def hosvd(x: Tensor, explained_variance: float, name: str = 'activation') -> Tucker:
    """Truncated HOSVD of ``x: (B, C, H, W)``; see :func:`compress`.

    Returns:
        :class:`Tucker` with core ``(r1, r2, r3, r4)`` and factors ``U_n: (I_n, r_n)``.
    """
    return compress(x, explained_variance, METHODS['hosvd'], name)


def reconstruct(tucker: Tucker) -> Tensor:
    r"""``core \times_n U_n`` over the stored factors: the tensor the decomposition stands for.

    Returns:
        Tensor of shape ``tucker.shape``, dtype of the core.
    """
    return multi_mode_product(tucker.core, {n: tucker.factors[n] for n in tucker.modes})
