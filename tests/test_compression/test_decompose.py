"""Tests of mmseg_actcomp.compression: mode algebra, rank rule, truncated SVD / HOSVD, storage size."""
import math

import numpy as np
import pytest
import torch

from mmseg_actcomp.compression import (METHODS, NonFiniteActivationError, Tucker, compress, hosvd, method_modes,
                                       mode_gram, mode_product, multi_mode_product,
                                       rank_from_explained_variance, reconstruct, storage_bytes,
                                       storage_elements, svd, svd_storage_elements,
                                       tucker_storage_elements, truncated_modes, unfold,
                                       validate_explained_variance)

from conftest import assert_rank_meets_threshold, explained_variance_curve, low_rank_activation

pytestmark = pytest.mark.usefixtures('single_thread')

EPSILONS = (0.5, 0.7, 0.8, 0.9, 0.95)


# --- mode algebra ------------------------------------------------------------------------------------


@pytest.mark.parametrize('mode', range(4))
@pytest.mark.parametrize('channels_last', [False, True])
def test_mode_gram_and_product_match_unfolding(mode, channels_last):
    x = torch.randn(3, 5, 4, 6, dtype=torch.float64)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    unfolded = unfold(x, mode)
    assert unfolded.shape == (x.shape[mode], x.numel() // x.shape[mode])
    torch.testing.assert_close(mode_gram(x, mode), unfolded @ unfolded.T)
    matrix = torch.randn(2, x.shape[mode], dtype=torch.float64)
    product = mode_product(x, matrix, mode)
    torch.testing.assert_close(unfold(product, mode), matrix @ unfolded)
    from mmseg_actcomp.compression import mode_cross
    torch.testing.assert_close(mode_cross(x, product, mode), unfolded @ unfold(product, mode).T)


def test_multi_mode_product_is_order_independent():
    x = torch.randn(3, 5, 4, 6, dtype=torch.float64)
    matrices = {n: torch.randn(2 + n, x.shape[n], dtype=torch.float64) for n in range(4)}
    sequential = x
    for n in range(4):
        sequential = mode_product(sequential, matrices[n], n)
    torch.testing.assert_close(multi_mode_product(x, matrices), sequential)
    assert multi_mode_product(x, {}) is x


# --- rank rule ----------------------------------------------------------------------------------------


@pytest.mark.parametrize('eps, rank', [(0.1, 1), (0.4, 1), (0.41, 2), (0.7, 2), (0.71, 3), (0.9, 3),
                                       (0.95, 4), (1.0, 4)])
def test_rank_from_explained_variance(eps, rank):
    # Explained variance of [4, 3, 2, 1] / 10: 0.4, 0.7, 0.9, 1.0.
    eigenvalues = torch.tensor([4.0, 3.0, 2.0, 1.0], dtype=torch.float64)
    assert rank_from_explained_variance(eigenvalues, eps, rtol=1e-12) == rank


def test_rank_edge_cases():
    # All zero: rank 0 at any threshold, no division by zero.
    assert rank_from_explained_variance(torch.zeros(5), 0.8, 1e-7) == 0
    assert rank_from_explained_variance(torch.zeros(5), 1.0, 1e-7) == 0
    # Rounding noise of a semi-definite Gram: negative values count as zero components.
    noisy = torch.tensor([5.0, 1.0, 1e-18, -1e-17], dtype=torch.float64)
    assert rank_from_explained_variance(noisy, 1.0, rtol=1e-15) == 2
    assert rank_from_explained_variance(noisy, 0.999999999, rtol=1e-15) == 2
    # A tail below float rounding never changes the cumulative sum: eps = 1 still keeps it if above the
    # rounding floor, and eps just below 1 never keeps zero components.
    tail = torch.tensor([1.0, 1e-17, 0.0], dtype=torch.float64)
    assert rank_from_explained_variance(tail, 1.0, rtol=1e-20) == 2
    assert rank_from_explained_variance(tail, 1.0, rtol=1e-15) == 1
    assert rank_from_explained_variance(tail, 1.0 - 1e-12, rtol=1e-20) == 1


@pytest.mark.parametrize('value', [0.5, 1, 1.0, 1e-9, np.float32(0.3), np.float64(0.9)])
def test_validate_explained_variance_accepts(value):
    assert validate_explained_variance(value) == float(value)


@pytest.mark.parametrize('value', [0, 0.0, -0.1, 1.0001, 2, float('nan'), float('inf'), True, False,
                                   '0.8', None, torch.tensor(0.5), [0.8]])
def test_validate_explained_variance_rejects(value):
    with pytest.raises(ValueError, match=r'\(0, 1\]') as info:
        validate_explained_variance(value)
    assert repr(value) in str(info.value)


# --- decompositions -----------------------------------------------------------------------------------


@pytest.mark.parametrize('method', ['svd', 'hosvd'])
@pytest.mark.parametrize('eps', EPSILONS)
def test_ranks_match_exact_svd(method, eps):
    x = low_rank_activation((6, 16, 12, 10), seed=1)
    tucker = compress(x, eps, METHODS[method])
    assert tucker.modes == METHODS[method]
    for mode, rank in zip(tucker.modes, tucker.ranks):
        assert_rank_meets_threshold(rank, explained_variance_curve(x, mode), eps)


def test_test_data_has_nontrivial_ranks():
    """The rank tests would prove little if every rank were 1 or full."""
    x = low_rank_activation((6, 16, 12, 10), seed=1)
    ranks = [hosvd(x, eps).ranks for eps in EPSILONS]
    sizes = tuple(x.shape)
    for mode in range(4):
        mode_ranks = {r[mode] for r in ranks}
        assert len(mode_ranks) > 1 and max(mode_ranks) > 1, (mode, mode_ranks)
    assert any(r[mode] < sizes[mode] for r in ranks for mode in range(4))


@pytest.mark.parametrize('shape', [(2, 32, 2, 2), (12, 2, 3, 1), (1, 1, 9, 2)])
def test_tall_unfoldings_use_exact_ranks(shape):
    """Modes larger than the rest of the tensor go through a thin SVD; same rank rule."""
    x = low_rank_activation(shape, seed=2)
    for eps in (0.6, 0.9):
        tucker = hosvd(x, eps)
        for mode, rank in zip(tucker.modes, tucker.ranks):
            assert_rank_meets_threshold(rank, explained_variance_curve(x, mode), eps)


@pytest.mark.parametrize('shape, dead', [((2, 40, 3, 3), 10), ((2, 40, 3, 4), 20), ((4, 64, 2, 2), 0)])
def test_dead_channels_and_tall_unfoldings_give_the_exact_subspace(shape, dead):
    """All-zero channels (dead after a ReLU) are left out of the Gram, and an unfolding still taller than
    wide goes through the Gram of its columns: the kept subspace is the reference SVD's, the dead
    channels get zero rows in the factor."""
    x = low_rank_activation(shape, seed=4, dtype=torch.float64)
    x[:, :dead] = 0
    for eps in (0.6, 0.9):
        factor = hosvd(x, eps).factors[1]
        rank = factor.shape[1]
        assert_rank_meets_threshold(rank, explained_variance_curve(x, 1), eps)
        torch.testing.assert_close(factor.mT @ factor, torch.eye(rank, dtype=x.dtype))
        assert not factor[:dead].any()
        reference = torch.linalg.svd(unfold(x, 1), full_matrices=False).U[:, :rank]
        torch.testing.assert_close(factor @ factor.mT, reference @ reference.mT)


@pytest.mark.parametrize('shape', [(4, 1200, 12, 12), (2, 600, 20, 20)])
def test_large_grams_keep_the_threshold_with_a_near_exact_rank(shape):
    """Above _FLOAT64_SPECTRUM_MAX_SIZE the leading eigenpairs come from a randomized subspace iteration
    (the 1200-channel mode's Gram is 576 x 576 from its columns, the 20 x 20 spatial ones are small):
    the kept factor still captures at least eps of the energy, exactly measured, and its rank is the
    exact SVD's or at most 2 % above it; the basis is orthonormal."""
    x = low_rank_activation(shape, components=40, noise=0.5, seed=5)
    for eps in (0.7, 0.8, 0.9):
        tucker = hosvd(x, eps)
        for mode, factor in zip(tucker.modes, tucker.factors):
            curve = explained_variance_curve(x, mode)
            exact = int((curve < eps).sum()) + 1
            rank = factor.shape[1]
            matrix = unfold(x.double(), mode)
            captured = (factor.double().mT @ matrix).square().sum() / matrix.square().sum()
            assert captured >= eps - 1e-5, (mode, eps, captured.item())
            assert exact <= rank <= exact + max(1, math.ceil(0.02 * exact)), (mode, eps, exact, rank)
            torch.testing.assert_close(factor.mT @ factor, torch.eye(rank), atol=1e-4, rtol=0)


def test_the_randomized_spectrum_is_deterministic_and_leaves_the_global_rng_alone():
    from mmseg_actcomp.compression.decompose import _FLOAT64_SPECTRUM_MAX_SIZE, _leading_eigh
    a = torch.randn(2 * _FLOAT64_SPECTRUM_MAX_SIZE, 900, generator=torch.Generator().manual_seed(6))
    a = a / torch.arange(1, a.shape[0] + 1)[:, None]
    gram = a @ a.mT
    state = torch.get_rng_state()
    first, second = _leading_eigh(gram, 0.8, gram.device), _leading_eigh(gram, 0.8, gram.device)
    assert torch.equal(torch.get_rng_state(), state)
    assert first[1].shape[1] < gram.shape[0] // 4  # the randomized path ran, not the full eigh
    torch.testing.assert_close(first[0], second[0], rtol=0, atol=0)
    torch.testing.assert_close(first[1], second[1], rtol=0, atol=0)
    # the values sum to the trace: Ritz values, then the energy they leave out
    torch.testing.assert_close(first[0].sum(), gram.diagonal().double().sum(), rtol=1e-5, atol=0)


def test_a_flat_spectrum_falls_back_to_the_full_eigendecomposition():
    """White noise needs most of its components: the sketch would pass a quarter of the Gram, so the
    exact eigh answers and the rank is exactly the SVD's."""
    from mmseg_actcomp.compression.decompose import _leading_eigh
    a = torch.randn(800, 2000, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    values, vectors, rtol = _leading_eigh((a @ a.mT).float(), 0.8, a.device)
    assert vectors.shape == (800, 800)
    exact = rank_from_explained_variance(torch.linalg.svdvals(a).square(), 0.8, 0.0)
    assert rank_from_explained_variance(values, 0.8, rtol) == exact


def _failing(real, when):
    """``real`` (a torch.linalg solver) raising LinAlgError for the calls ``when(matrix)`` selects."""
    def solver(matrix, *args, **kwargs):
        if when(matrix):
            raise torch.linalg.LinAlgError(f'{real.__name__}: failed to converge (test)')
        return real(matrix, *args, **kwargs)
    return solver


@pytest.mark.parametrize('fails', ['float32 eigh', 'every eigh'])
def test_a_failed_eigendecomposition_falls_back_and_keeps_the_exact_subspace(fails, monkeypatch):
    """eigh failing in float32 is retried in float64; failing in every dtype, an SVD of the Gram answers.
    Both give the ranks and the subspace of the unpatched solver."""
    x = low_rank_activation((4, 700, 6, 6), components=12, noise=0.3, seed=2)  # a 700 channel Gram
    expected = hosvd(x, 0.8)
    when = {'float32 eigh': lambda m: m.dtype == torch.float32, 'every eigh': lambda m: True}[fails]
    monkeypatch.setattr(torch.linalg, 'eigh', _failing(torch.linalg.eigh, when))
    tucker = hosvd(x, 0.8)
    assert tucker.ranks == expected.ranks
    for ours, theirs in zip(tucker.factors, expected.factors):
        torch.testing.assert_close(ours @ ours.mT, theirs @ theirs.mT, atol=1e-4, rtol=0)


def test_every_solver_failing_raises_a_decomposition_error(monkeypatch):
    from mmseg_actcomp.compression import DecompositionError
    monkeypatch.setattr(torch.linalg, 'eigh', _failing(torch.linalg.eigh, lambda m: True))
    monkeypatch.setattr(torch.linalg, 'svd', _failing(torch.linalg.svd, lambda m: True))
    with pytest.raises(DecompositionError, match=r'no eigen-solver converged on a \(\d+, \d+\) Gram matrix: '
                                                 r'eigh in torch.float\d+: .*svd in torch.float64'):
        hosvd(low_rank_activation((2, 6, 5, 5)), 0.8)


def test_a_degenerate_gram_larger_than_1024():
    """A post-ReLU-like activation with 1100 channels of which 400 are dead and 300 repeat others (equal
    eigenvalues, a rank-deficient Gram): the ranks keep eps of the energy, the factor is orthonormal and
    zero on the dead channels."""
    g = torch.Generator().manual_seed(9)
    live = torch.relu(low_rank_activation((3, 400, 20, 20), components=30, noise=0.3, seed=9))
    x = torch.cat([live, live[:, :300], torch.zeros(3, 400, 20, 20)], dim=1)[:, torch.randperm(1100, generator=g)]
    for eps in (0.8, 0.95):
        for mode, factor in zip((0, 1, 2, 3), hosvd(x, eps).factors):
            matrix = unfold(x.double(), mode)
            captured = (factor.double().mT @ matrix).square().sum() / matrix.square().sum()
            assert captured >= eps - 1e-5
            torch.testing.assert_close(factor.mT @ factor, torch.eye(factor.shape[1]), atol=1e-4, rtol=0)
        channel = hosvd(x, eps).factors[1]
        dead = x.square().sum((0, 2, 3)) == 0
        assert dead.sum() == 400 and torch.equal(channel[dead], torch.zeros_like(channel[dead]))


@pytest.mark.parametrize('method', ['svd', 'hosvd'])
def test_factors_orthonormal_and_core_is_projection(method):
    x = low_rank_activation((5, 8, 7, 6), seed=3)
    tucker = compress(x, 0.8, METHODS[method])
    for u in tucker.factors:
        if u is not None:
            torch.testing.assert_close(u.T @ u, torch.eye(u.shape[1]), atol=1e-5, rtol=0)
    projection = multi_mode_product(x, {n: tucker.factors[n].T for n in tucker.modes})
    torch.testing.assert_close(tucker.core, projection, atol=1e-5, rtol=1e-5)
    assert reconstruct(tucker).shape == x.shape == tucker.shape


def test_reconstruction_error_obeys_the_truncation_bounds():
    x = low_rank_activation((6, 16, 12, 10), seed=4)
    for eps in EPSILONS:
        # SVD: the lost energy is exactly the truncated tail, at most 1 - eps.
        tucker = svd(x, eps)
        lost = ((reconstruct(tucker) - x).norm() / x.norm()).square()
        k = tucker.ranks[0]
        torch.testing.assert_close(lost.double(), 1 - explained_variance_curve(x, 0)[k - 1],
                                   atol=1e-5, rtol=1e-4)
        # HOSVD: at most the sum of the per-mode tails.
        tucker = hosvd(x, eps)
        lost = ((reconstruct(tucker) - x).norm() / x.norm()).square()
        assert lost <= 4 * (1 - eps) + 1e-6


@pytest.mark.parametrize('method', ['svd', 'hosvd'])
@pytest.mark.parametrize('eps', [0.7, 0.9])
def test_storage_matches_formula(method, eps):
    x = low_rank_activation((6, 16, 12, 10), seed=5)
    tucker = compress(x, eps, METHODS[method])
    expected = storage_bytes(x.shape, tucker.ranks, tucker.modes, x.dtype)
    assert tucker.nbytes == expected == sum(t.numel() * 4 for t in tucker.tensors)


def test_storage_formulas():
    b, c, h, w = 8, 512, 64, 64
    assert svd_storage_elements((b, c, h, w), 3) == 3 * (b + c * h * w)
    ranks = (4, 100, 20, 30)
    assert tucker_storage_elements((b, c, h, w), ranks) == (math.prod(ranks) + b * 4 + c * 100 + h * 20
                                                            + w * 30)
    assert storage_elements((b, c, h, w), (0, 0, 0, 0), range(4)) == 0
    assert storage_bytes((b, c, h, w), (3,), (0,), torch.float16) == 2 * svd_storage_elements((b, c, h, w), 3)
    with pytest.raises(ValueError):
        storage_elements((b, c, h, w), (1, 2), (0,))


@pytest.mark.parametrize('method', ['svd', 'hosvd'])
def test_full_threshold_is_exact(method):
    x = torch.randn(4, 6, 5, 7)
    tucker = compress(x, 1.0, METHODS[method])
    torch.testing.assert_close(reconstruct(tucker), x, atol=1e-5, rtol=1e-5)
    full = {'svd': (4,), 'hosvd': (4, 6, 5, 7)}[method]
    assert tucker.ranks == full


@pytest.mark.parametrize('method', ['svd', 'hosvd'])
@pytest.mark.parametrize('eps', [0.8, 1.0])
def test_all_zero_activation_has_rank_zero(method, eps):
    x = torch.zeros(3, 4, 5, 6)
    tucker = compress(x, eps, METHODS[method])
    assert tucker.ranks == (0,) * len(METHODS[method])
    assert tucker.nbytes == 0
    recon = reconstruct(tucker)
    assert recon.shape == x.shape and not recon.any()


@pytest.mark.parametrize('method', ['svd', 'hosvd'])
@pytest.mark.parametrize('bad', [float('nan'), float('inf'), -float('inf')])
@pytest.mark.parametrize('shape', [(3, 4, 5, 6), (2, 40, 1, 1)])
def test_non_finite_activation_raises_naming_it(method, bad, shape):
    x = torch.rand(shape)
    x[1, 2, 0, 0] = bad
    with pytest.raises(NonFiniteActivationError, match='backbone.layer1.0.conv1.*NaN or Inf'):
        compress(x, 0.8, METHODS[method], name='backbone.layer1.0.conv1')


@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
def test_half_precision_stores_input_dtype(dtype):
    """Factors in the input's dtype; the core too, but float32 for float16 (it holds the input's norm,
    which can pass float16's 65504 while every element fits)."""
    x = low_rank_activation((4, 8, 6, 5), seed=6, dtype=dtype)
    tucker = hosvd(x, 0.8)
    assert tucker.core.dtype == (torch.float32 if dtype == torch.float16 else dtype)
    assert all(u.dtype == dtype for u in tucker.factors)
    # The decomposition itself runs in float32 on the same values.
    assert tucker.ranks == hosvd(x.float(), 0.8).ranks
    torch.testing.assert_close(reconstruct(tucker).float(), reconstruct(hosvd(x.float(), 0.8)),
                               atol=2e-2, rtol=2e-2)


def test_autocast_does_not_lower_the_decomposition_precision():
    x = low_rank_activation((4, 8, 6, 5), seed=6)
    expected = hosvd(x, 0.8)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        tucker = hosvd(x, 0.8)
    assert all(torch.equal(a, b) for a, b in zip(tucker.tensors, expected.tensors))


def test_compress_restores_the_thread_count():
    """The eigen-solver runs single-threaded on CPU; the caller's setting must come back."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        hosvd(torch.rand(2, 3, 4, 5), 0.8)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)


def test_channels_last_input_matches_contiguous():
    x = low_rank_activation((4, 8, 6, 5), seed=7)
    expected = hosvd(x, 0.8)
    tucker = hosvd(x.to(memory_format=torch.channels_last), 0.8)
    assert tucker.ranks == expected.ranks
    torch.testing.assert_close(reconstruct(tucker), reconstruct(expected))


@pytest.mark.parametrize('shape', [(1, 4, 5, 6), (3, 1, 5, 6), (2, 3, 1, 7), (2, 3, 4, 1), (1, 1, 1, 1)])
@pytest.mark.parametrize('method', ['svd', 'hosvd'])
def test_batch_one_and_size_one_modes(method, shape):
    x = torch.rand(shape) + 0.1
    for eps in (0.5, 1.0):
        tucker = compress(x, eps, METHODS[method])
        for mode, rank in zip(tucker.modes, tucker.ranks):
            assert 1 <= rank <= min(shape[mode], x.numel() // shape[mode])
            assert_rank_meets_threshold(rank, explained_variance_curve(x, mode), eps - 1e-9)
    torch.testing.assert_close(reconstruct(tucker), x)


def test_invalid_input_errors():
    with pytest.raises(ValueError, match='1.5'):
        hosvd(torch.rand(2, 3, 4, 5), 1.5)
    with pytest.raises(ValueError, match='empty'):
        svd(torch.rand(0, 3, 4, 5), 0.8)


def test_tucker_roundtrip_through_tensors():
    tucker = svd(low_rank_activation((4, 8, 6, 5)), 0.8)
    again = Tucker.from_tensors(tucker.tensors, tucker.modes)
    assert again.modes == (0,) and again.core is tucker.core and again.factors[0] is tucker.factors[0]
    assert again.factors[1:] == (None, None, None)


@pytest.mark.parametrize('method', ['svd', 'hosvd'])
def test_centred_compression_is_the_mean_plus_the_decomposed_rest(method):
    """center=True: the per-channel mean is kept exactly, the ranks are those of the centred tensor,
    and the one Tucker reconstructs mean + the rest's reconstruction (exact at eps = 1)."""
    x = low_rank_activation((4, 6, 5, 7), seed=5, dtype=torch.float64).relu() + 0.5
    mean = x.mean(dim=(0, 2, 3), keepdim=True)
    torch.testing.assert_close(reconstruct(compress(x, 1.0, METHODS[method], center=True)), x)
    for eps in (0.5, 0.8):
        centred = compress(x, eps, METHODS[method], center=True)
        rest = compress(x - mean, eps, METHODS[method])
        assert centred.ranks == tuple(min(r + 1, x.shape[n]) for n, r in zip(rest.modes, rest.ranks))
        for factor in centred.factors:  # orthonormal, as uncentred ones
            if factor is not None:
                torch.testing.assert_close(factor.mT @ factor, torch.eye(factor.shape[1], dtype=x.dtype))
        torch.testing.assert_close(reconstruct(centred), mean + reconstruct(rest))
        # the raw tensor's ranks collapse (its mean dominates); the centred one keeps more
        assert sum(compress(x, eps, METHODS[method]).ranks) < sum(centred.ranks)
    for bad in (4, -5, 1.0, True):
        with pytest.raises(ValueError, match=rf'channel_mode={bad!r} is not a mode of a 4-d tensor .*'
                                             r'an integer in \[-4, 4\)'):
            compress(x, 0.8, METHODS[method], center=True, channel_mode=bad)


@pytest.mark.parametrize('method, truncate_batch', [('svd', True), ('hosvd', True), ('hosvd', False)],
                         ids=['svd', 'hosvd', 'hosvd-batch-whole'])
@pytest.mark.parametrize('shape', [(6, 5), (4, 7, 5), (3, 4, 6, 5)], ids=['BC', 'BNC', 'BHWC'])
def test_centring_a_channel_last_tensor_keeps_its_last_modes_mean(method, shape, truncate_batch):
    """channel_mode=-1 (a linear layer's (..., C) input): the mean over every mode but the last is kept
    exactly, as the NCHW mean is for channel_mode=1, on a tensor of 2, 3 or 4 modes, with or without the
    batch mode truncated; the result is the same as centring a permuted copy along mode 1."""
    x = low_rank_activation((4, 6, 5, 7), seed=5, dtype=torch.float64).flatten()[:math.prod(shape)]
    x = x.reshape(shape).relu() + 0.5
    modes = truncated_modes(method, truncate_batch, x.dim())
    assert modes == ((0,) if method == 'svd' else tuple(range(int(not truncate_batch), x.dim())))
    mean = x.mean(dim=tuple(range(x.dim() - 1)), keepdim=True)
    torch.testing.assert_close(reconstruct(compress(x, 1.0, modes, center=True, channel_mode=-1)), x)
    centred = compress(x, 0.6, modes, center=True, channel_mode=-1)
    rest = compress(x - mean, 0.6, modes)
    torch.testing.assert_close(reconstruct(centred), mean + reconstruct(rest))
    assert centred.ranks == tuple(min(r + 1, x.shape[n]) for n, r in zip(rest.modes, rest.ranks))
    # channel-first by a permuted copy, mode 1: the same tensor
    moved = x.movedim(-1, 1)
    first = compress(moved, 0.6, tuple(sorted({0: 0, x.dim() - 1: 1}.get(n, n + 1) for n in modes)), center=True)
    torch.testing.assert_close(reconstruct(first).movedim(1, -1), reconstruct(centred))


def test_method_modes_follow_the_number_of_modes():
    assert [method_modes('hosvd', n) for n in (2, 3, 4)] == [(0, 1), (0, 1, 2), (0, 1, 2, 3)]
    assert [method_modes('svd', n) for n in (2, 3, 4)] == [(0,)] * 3
    assert method_modes('hosvd') == METHODS['hosvd'] and truncated_modes('hosvd', False, 3) == (1, 2)
    with pytest.raises(ValueError, match=r'ndim=1: an activation to decompose has a batch mode and at least one'):
        method_modes('hosvd', 1)
    with pytest.raises(ValueError, match=r"method='tucker' is not one of \['hosvd', 'svd'\]"):
        truncated_modes('tucker', True, 3)


def test_the_core_imports_with_torch_alone():
    """compression/ is pure torch: in a fresh interpreter where mmseg, mmcv and mmengine cannot be
    imported, it imports and compresses; the package imports too and names what needs the stack."""
    import subprocess
    import sys
    import textwrap
    script = textwrap.dedent('''
        import sys
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split('.')[0] in ('mmseg', 'mmcv', 'mmengine'):
                    raise ModuleNotFoundError(f'{name} made unimportable', name=name)
        sys.meta_path.insert(0, Block())
        import torch
        from mmseg_actcomp.compression import METHODS, compress, reconstruct
        x = torch.randn(2, 3, 4, 5)
        assert torch.allclose(reconstruct(compress(x, 1.0, METHODS['hosvd'])), x, atol=1e-4)
        assert not [m for m in sys.modules if m.split('.')[0] in ('mmseg', 'mmcv', 'mmengine')]
        import mmseg_actcomp
        try:
            mmseg_actcomp.ActivationCompressionHook
        except ImportError as e:
            print('ImportError:', e)
    ''')
    out = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert 'ImportError: mmseg_actcomp.ActivationCompressionHook needs mmsegmentation' in out.stdout


@pytest.mark.parametrize('modes', ['hosvd', (0, 4), (1.0,)])
def test_modes_that_are_not_modes_of_x_are_named(modes):
    with pytest.raises(ValueError, match=r"modes=.* must be mode indices of a 4-d tensor.*METHODS\['hosvd'\]"):
        compress(torch.randn(2, 3, 4, 5), 0.8, modes)


def test_a_subspace_estimated_over_batches_explains_eps_of_their_summed_energy():
    """SubspaceEstimate: the summed mode Grams of the batches, and bases explaining eps of each."""
    from mmseg_actcomp.compression import SubspaceEstimate
    batches = [low_rank_activation((4, 12, 9, 8), seed=s) for s in range(3)]
    estimate = SubspaceEstimate((1, 2, 3), center=True)
    for x in batches:
        estimate.add(x)
    assert estimate.batches == 3
    bases = estimate.bases(0.8)
    for n, basis in bases.items():
        centred = [x - x.mean(dim=(0, 2, 3), keepdim=True) for x in batches]
        unfoldings = torch.cat([unfold(c.double(), n) for c in centred], dim=1)  # (I_n, 3 J)
        torch.testing.assert_close(basis.mT.double() @ basis.double(), torch.eye(basis.shape[1]).double(),
                                   atol=1e-5, rtol=0)
        energy = torch.linalg.svdvals(unfoldings).square()
        curve = energy.cumsum(0) / energy.sum()
        assert_rank_meets_threshold(basis.shape[1], curve, 0.8)
        captured = (basis.double().mT @ unfoldings).square().sum() / unfoldings.square().sum()
        assert captured >= 0.8 - 1e-6


def test_fixed_bases_are_used_as_given_and_checked():
    x = low_rank_activation((4, 12, 9, 8))
    q = torch.linalg.qr(torch.randn(12, 3, generator=torch.Generator().manual_seed(0))).Q
    tucker = compress(x, 0.8, METHODS['hosvd'], fixed={1: q})
    torch.testing.assert_close(tucker.factors[1], q)
    free = compress(x, 0.8, METHODS['hosvd'])
    assert [tucker.factors[n].shape for n in (0, 2, 3)] == [free.factors[n].shape for n in (0, 2, 3)]
    with pytest.raises(ValueError, match=r'fixed basis of mode 1 has shape \(11, 3\)'):
        compress(x, 0.8, METHODS['hosvd'], fixed={1: torch.zeros(11, 3)})
    with pytest.raises(ValueError, match='fixed basis of mode 2'):
        compress(x, 0.8, METHODS['svd'], fixed={2: torch.zeros(9, 2)})  # not a truncated mode of SVD


def _captured(x, basis, mode):
    """``||U^T X_(n)||^2 / ||X||^2`` in float64."""
    unfolded = unfold(x.double(), mode)
    return float((basis.double().mT @ unfolded).square().sum() / unfolded.square().sum())


def _exact_modes(monkeypatch):
    """The modes the exact decomposition runs on from now on (a spy on ``leading_singular_vectors``)."""
    from mmseg_actcomp.compression import decompose
    modes, exact = [], decompose.leading_singular_vectors

    def spy(x, mode, *args, **kwargs):
        modes.append(mode)
        return exact(x, mode, *args, **kwargs)
    monkeypatch.setattr(decompose, 'leading_singular_vectors', spy)
    return modes


@pytest.mark.parametrize('eps', [0.6, 0.8, 0.9])
def test_warm_leading_vectors_meet_eps_from_a_close_start_and_from_a_poor_one(eps, monkeypatch):
    """One subspace iteration from the last batch's basis: orthonormal columns capturing at least eps of
    this batch's energy, with the exact rank or a little more; from a 1-column random start it widens until
    eps is met. No exact decomposition runs."""
    from mmseg_actcomp.compression import leading_singular_vectors, warm_leading_vectors
    both = low_rank_activation((8, 64, 12, 12), components=8, seed=3)
    previous_x, x = both[:4].contiguous(), both[4:].contiguous()
    exact = leading_singular_vectors(x, 1, eps)
    starts = {'last batch': leading_singular_vectors(previous_x, 1, eps),
              'random column': torch.linalg.qr(torch.randn(64, 1, generator=torch.Generator().manual_seed(0))).Q}
    exact_modes = _exact_modes(monkeypatch)
    for label, previous in starts.items():
        basis = warm_leading_vectors(x, 1, eps, previous)
        assert exact_modes == [], label
        assert basis.shape[0] == 64 and basis.dtype == x.dtype, label
        torch.testing.assert_close(basis.mT @ basis, torch.eye(basis.shape[1]), atol=1e-5, rtol=0)
        assert _captured(x, basis, 1) >= eps - 1e-5, label
        assert exact.shape[1] <= basis.shape[1] <= exact.shape[1] + 3, (label, basis.shape, exact.shape)


def test_warm_leading_vectors_from_the_exact_basis_keep_the_exact_subspace():
    from mmseg_actcomp.compression import leading_singular_vectors, warm_leading_vectors
    x = low_rank_activation((4, 64, 12, 12), components=8, seed=4)
    exact = leading_singular_vectors(x, 1, 0.8)
    basis = warm_leading_vectors(x, 1, 0.8, exact)
    assert basis.shape == exact.shape
    # the same subspace: the projector onto one equals the projector onto the other
    torch.testing.assert_close(basis @ basis.mT, exact @ exact.mT, atol=1e-4, rtol=0)


def test_warm_leading_vectors_fall_back_to_exact_where_the_iteration_costs_more():
    """A previous basis too wide for its mode (or eps = 1) gets the exact decomposition; a basis of the
    wrong size is an error naming both shapes."""
    from mmseg_actcomp.compression import leading_singular_vectors, warm_leading_vectors
    x = low_rank_activation((4, 16, 8, 8), seed=5)
    wide = torch.linalg.qr(torch.randn(16, 8)).Q  # 3 * 8 + 64 / 16 >= 16: the Gram is cheaper
    torch.testing.assert_close(warm_leading_vectors(x, 1, 0.8, wide), leading_singular_vectors(x, 1, 0.8))
    torch.testing.assert_close(warm_leading_vectors(x, 1, 1.0, wide[:, :1]), leading_singular_vectors(x, 1, 1.0))
    with pytest.raises(ValueError, match=r'previous basis of shape \(15, 2\) does not fit mode 1 of size 16'):
        warm_leading_vectors(x, 1, 0.8, torch.zeros(15, 2))


def test_compress_warm_meets_eps_in_every_warm_mode_and_ignores_entries_that_do_not_fit(monkeypatch):
    both = low_rank_activation((8, 64, 40, 40), components=8, seed=6)
    previous = compress(both[:4], 0.8, METHODS['hosvd'])
    x = both[4:].contiguous()
    warm = {n: previous.factors[n] for n in (1, 2, 3)}
    warm[0] = torch.zeros(3, 1)  # the batch mode's size is 4: ignored, decomposed exactly
    exact_modes = _exact_modes(monkeypatch)
    tucker = compress(x, 0.8, METHODS['hosvd'], warm=warm)
    assert exact_modes == [0]
    for n in range(4):
        assert _captured(x, tucker.factors[n], n) >= 0.8 - 1e-5, n
    exact = compress(x, 0.8, METHODS['hosvd'])
    assert tucker.ranks[0] == exact.ranks[0]
    assert all(exact.ranks[n] <= tucker.ranks[n] <= exact.ranks[n] + 3 for n in (1, 2, 3)), (tucker.ranks, exact.ranks)
