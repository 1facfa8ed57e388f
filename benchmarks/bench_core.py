"""Compression + weight-gradient time of mmseg_actcomp against the paper's algorithm, same ranks.

The reference is the algorithm of the official code of Nguyen et al. (NeurIPS 2024): a full
``torch.linalg.svd`` of every unfolding at every step, the same explained-variance rank rule, the core by
successive mode products, and a backward that rebuilds the whole activation before the weight
correlation. Ours: eigen-decomposition of the small Gram matrix of each unfolding, and a backward that
folds the batch (and channel) factors into grad_output (see mmseg_actcomp.ops.functional).

Timed: compress(x) then grad_weight from the kept factors. The input and bias gradients are exact and
identical in both, so they are left out. Besides the exact decomposition, HOSVD's subspace variants
(``subspace='warm'`` / ``'frozen'`` of the layers, issue 14) on the same ``x``: ``x`` is the second half of
a batch of 16 drawn from one distribution, and the first half plays the earlier training batch: ``warm``
starts from its factors (``compress(warm=...)``), ``frozen`` projects onto the bases estimated from it
(``SubspaceEstimate``, ``compress(fixed=...)``). ``captured`` is ``||x_hat||^2 / ||x||^2``.

    python benchmarks/bench_core.py [--repeats 1] [--device cpu] [--eps 0.7 0.8 0.9] [--markdown PATH]
"""
import argparse
import datetime
import os
import sys
import time

import torch
import torch.nn.functional as F
from torch.nn.grad import conv2d_weight

from mmseg_actcomp.compression import METHODS, SubspaceEstimate, compress, single_cpu_thread, unfold
from mmseg_actcomp.ops import conv2d_weight_from_tucker
from mmseg_actcomp.ops.compressed import SUBSPACE_MODES

#: issue 14's target: compress + weight gradient at least this many times faster than the reference
MIN_SPEED_UP = 50.0
#: HOSVD's variants: how the channel and spatial bases are found (the batch mode is decomposed in all)
SUBSPACE_VARIANTS = ('exact', 'warm', 'frozen')

# Two convolutions of DeepLabV3-R18-d8 on 512x512 crops, batch 8 (features at 1/8 resolution: 64x64).
# Each entry: input shape (B, C, H, W), weight shape (O, C, kH, kW), stride, padding, dilation.
SHAPES = {
    'backbone layer4 conv 3x3 dil 4': ((8, 512, 64, 64), (512, 512, 3, 3), 1, 4, 4),
    'ASPP bottleneck conv 3x3 (640->128)': ((8, 640, 64, 64), (128, 640, 3, 3), 1, 1, 1),
}


def realistic_activation(shape, device, components=128, noise=0.5, seed=0):
    """``ReLU(sum_j a_j (x) c_j (x) s_j * j^-0.75 + noise)``: batch and channel loadings times smooth
    spatial fields (bicubic upsampled noise at 1/4, 1/8 and 1/16 resolution) with power-law weights, plus
    noise: a decaying but not exactly low-rank spectrum in every mode, and a ReLU's nonzero mean."""
    g = torch.Generator().manual_seed(seed)
    b, c, h, w = shape
    fields = []
    for scale in (4, 8, 16):
        coarse = torch.randn(components // 3 + 1, 1, h // scale, w // scale, generator=g)
        fields.append(F.interpolate(coarse, size=(h, w), mode='bicubic', align_corners=False)[:, 0])
    fields = torch.cat(fields)[:components]
    weights = torch.arange(1, components + 1).float() ** -0.75
    x = torch.einsum('bj,cj,jhw->bchw', torch.randn(b, components, generator=g) * weights,
                     torch.randn(c, components, generator=g), fields)
    x = x + noise * x.std() * torch.randn(shape, generator=g)
    return x.relu().to(device)


# --- the reference algorithm -----------------------------------------------------------------------


def reference_rank(singular_values, eps):
    """Smallest k with cumsum(sigma^2)[k-1] / sum(sigma^2) >= eps, as in the paper's code."""
    energy = singular_values.square()
    return int(((energy.cumsum(0) / energy.sum()) < eps).sum()) + 1


def reference_svds(x, modes):
    """Full SVD of every unfolding: ``{mode: (U, S)}``. Independent of eps."""
    return {mode: torch.linalg.svd(unfold(x, mode), full_matrices=False)[:2] for mode in modes}


def reference_truncate(x, svds, eps):
    """Ranks by explained variance, core by successive mode products; returns (core, {mode: U_n})."""
    bases = {mode: u[:, :reference_rank(s, eps)] for mode, (u, s) in svds.items()}
    core = x
    for mode, u in bases.items():
        core = torch.tensordot(core, u, dims=([mode], [0])).movedim(-1, mode)
    return core, bases


def reference_grad_weight(core, bases, weight_shape, grad_output, stride, padding, dilation):
    """Rebuild the activation, then the weight correlation."""
    x = core
    for mode, u in bases.items():
        x = torch.tensordot(x, u, dims=([mode], [1])).movedim(-1, mode)
    return conv2d_weight(x, weight_shape, grad_output, stride, padding, dilation)


# --- timing --------------------------------------------------------------------------------------------


def timed(fn, device):
    """(seconds, result) of ``fn()``, synchronising the device around it."""
    if device.type == 'cuda':
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    result = fn()
    if device.type == 'cuda':
        torch.cuda.synchronize(device)
    return time.perf_counter() - start, result


def fastest(fn, device, repeats):
    """(least seconds over ``repeats`` runs, result): the run least disturbed by other load."""
    runs = [timed(fn, device) for _ in range(repeats)]
    return min(seconds for seconds, _ in runs), runs[-1][1]


def time_reference_svds(x, modes, device, repeats):
    """(seconds, svds) of :func:`reference_svds`. On CPU, the faster of all threads and one thread:
    MKL's multi-threaded SVD stalls when other jobs share the cores, and one thread is slower on an idle
    machine, so the reference gets whichever wins this time."""
    seconds, svds = fastest(lambda: reference_svds(x, modes), device, repeats)
    if device.type == 'cpu':
        with single_cpu_thread(device):
            seconds = min(seconds, fastest(lambda: reference_svds(x, modes), device, repeats)[0])
    return seconds, svds


def subspace_start(previous, eps, variant):
    """``compress``'s keyword for HOSVD's ``variant`` given the earlier batch ``previous``: ``{}`` (exact),
    ``warm=`` its factors, or ``fixed=`` the bases estimated from it (not timed: earlier steps' work)."""
    if variant == 'warm':
        tucker = compress(previous, eps, METHODS['hosvd'])
        return {'warm': {n: tucker.factors[n] for n in SUBSPACE_MODES}}
    if variant == 'frozen':
        estimate = SubspaceEstimate(SUBSPACE_MODES, center=False)
        estimate.add(previous)
        return {'fixed': {n: u.to(previous.device) for n, u in estimate.bases(eps).items()}}
    return {}


def run_ours(x, eps, modes, weight_shape, grad_output, conv_args, device, repeats=1, start=None):
    """(compress seconds, grad_W seconds, ranks, grad_W, captured energy) of mmseg_actcomp; ``start``:
    :func:`subspace_start`'s keyword."""
    t_compress, tucker = fastest(lambda: compress(x, eps, modes, **(start or {})), device, repeats)
    t_grad, grad = fastest(lambda: conv2d_weight_from_tucker(tucker, weight_shape, grad_output,
                                                             *conv_args), device, repeats)
    captured = float(tucker.core.double().square().sum() / x.double().square().sum())  # orthonormal factors
    return t_compress, t_grad, tucker.ranks, grad, captured


def run_reference(x, svds, eps, weight_shape, grad_output, conv_args, device, repeats=1):
    """(truncate seconds, grad_W seconds, ranks, grad_W) of the reference, given its SVDs."""
    t_truncate, (core, bases) = fastest(lambda: reference_truncate(x, svds, eps), device, repeats)
    t_grad, grad = fastest(lambda: reference_grad_weight(core, bases, weight_shape, grad_output,
                                                         *conv_args[:3]), device, repeats)
    return t_truncate, t_grad, tuple(u.shape[1] for u in bases.values()), grad


def warm_up(device):
    """One small run of each path, so that library initialisation is not timed."""
    x = realistic_activation((2, 16, 16, 16), device, components=8)
    grad_output = torch.randn(2, 8, 16, 16, device=device)
    conv_args = ((1, 1), (1, 1), (1, 1), 1)
    for modes in METHODS.values():
        run_ours(x, 0.8, modes, (8, 16, 3, 3), grad_output, conv_args, device)
        run_reference(x, reference_svds(x, modes), 0.8, (8, 16, 3, 3), grad_output, conv_args, device)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--repeats', type=int, default=1, help='timed runs per step (fastest reported)')
    parser.add_argument('--device', default='cpu', help='torch device, e.g. cpu or cuda')
    parser.add_argument('--eps', type=float, nargs='+', default=[0.7, 0.8, 0.9],
                        help='explained-variance thresholds')
    parser.add_argument('--methods', nargs='+', default=list(METHODS), choices=list(METHODS))
    parser.add_argument('--markdown', help='also write the whole report to this markdown file')
    args = parser.parse_args()
    device = torch.device(args.device)
    started = time.time()
    lines = []

    def say(line=''):
        print(line, flush=True)
        lines.append(line)

    say(f'device: {device} ({torch.get_num_threads()} CPU threads), torch {torch.__version__}, '
        f'float32, best of {args.repeats} run(s); {load_average()}')
    say('data: random activations with a decaying spectrum: ReLU(sum of 128 batch x channel loadings '
        'times smooth spatial fields (bicubic-upsampled noise at 1/4, 1/8, 1/16), weights j^-0.75, '
        '+ 50% noise); x the second half of a batch of 16, the first half the earlier batch')
    say('timed: compress + weight gradient from the kept factors (input/bias gradients are exact and '
        'the same in both)')
    say('reference: full torch.linalg.svd of every unfolding (timed once per layer and method, it does '
        'not depend on eps; faster of 1 and all CPU threads) + truncation + rebuild x for grad_W')
    warm_up(device)
    header = (f'{"method":13} {"eps":>4}  {"ranks (ours)":18} {"ranks (ref)":18} {"same":4} '
              f'{"compress ours/ref":>17} {"x":>5}  {"grad_W ours/ref":>15}  {"total ours/ref":>15} '
              f'{"speed-up":>8} {"grad_W diff":>11} {"captured":>8}')
    speed_ups = {}
    for name, (x_shape, weight_shape, stride, padding, dilation) in SHAPES.items():
        both = realistic_activation((2 * x_shape[0],) + tuple(x_shape[1:]), device)
        previous, x = both[:x_shape[0]].contiguous(), both[x_shape[0]:].contiguous()
        del both
        grad_output = torch.randn(x_shape[0], weight_shape[0], *x_shape[2:],
                                  generator=torch.Generator().manual_seed(1)).to(device)
        conv_args = ((stride, stride), (padding, padding), (dilation, dilation), 1)
        say(f'\n{name}: x {tuple(x_shape)}, weight {tuple(weight_shape)}, padding {padding}, '
            f'dilation {dilation}; times in seconds')
        say(header)
        for method in args.methods:
            modes = METHODS[method]
            t_svds, svds = time_reference_svds(x, modes, device, args.repeats)
            for variant in SUBSPACE_VARIANTS if method == 'hosvd' else ('exact',):
                label = method if variant == 'exact' else f'{method}-{variant}'
                for eps in args.eps:
                    start = subspace_start(previous, eps, variant)
                    ours = run_ours(x, eps, modes, weight_shape, grad_output, conv_args, device,
                                    args.repeats, start)
                    ref = run_reference(x, svds, eps, weight_shape, grad_output, conv_args, device,
                                        args.repeats)
                    ref_compress = t_svds + ref[0]
                    ours_total, ref_total = ours[0] + ours[1], ref_compress + ref[1]
                    speed_ups.setdefault(label, []).append(ref_total / ours_total)
                    diff = float((ours[3] - ref[3]).norm() / ref[3].norm())
                    say(f'{label:13} {eps:4.2f}  {str(ours[2]):18} {str(ref[2]):18} '
                        f'{"yes" if ours[2] == ref[2] else "NO":4} '
                        f'{ours[0]:7.3f}/{ref_compress:7.3f} {ref_compress / ours[0]:4.0f}x  '
                        f'{ours[1]:6.3f}/{ref[1]:6.3f}   {ours_total:6.3f}/{ref_total:6.3f}  '
                        f'{ref_total / ours_total:7.1f}x {diff:11.1e} {ours[4]:8.3f}')
            del svds
    say(f'\n{load_average()} (timings are only comparable on an otherwise idle machine)')
    say('\nspeed-up of compress + grad_W over the reference, target >= '
        f'{MIN_SPEED_UP:.0f}x at every eps in {args.eps}:')
    for label, values in speed_ups.items():
        verdict = 'met' if min(values) >= MIN_SPEED_UP else 'missed'
        say(f'  {label:13} {min(values):6.1f}x - {max(values):6.1f}x: {verdict}')
    accuracy_check(device, args.eps, say)
    if args.markdown:
        write_markdown(args.markdown, lines, time.time() - started)


def write_markdown(path, lines, seconds):
    """The whole report: how it was made, then the printed output."""
    command = 'python benchmarks/bench_core.py ' + ' '.join(sys.argv[1:])
    with open(path, 'w') as f:
        f.write('# Compression core: our SVD/HOSVD against the paper\'s algorithm\n\n'
                f'Written by `{command.strip()}` ({seconds / 60:.0f} min, '
                f'{datetime.date.today().isoformat()}). Do not edit: rerun the command. Timings on a shared '
                'machine are noisy: rerun it, the ranks and ratios are what to compare.\n\n'
                'The reference is the paper\'s algorithm written in the benchmark: a full `torch.linalg.svd` '
                'of every unfolding, truncated by the same explained-variance rule, then the input rebuilt for '
                'the weight gradient. Ours (`hosvd`, `svd`): `eigh` of each mode\'s small Gram matrix, the '
                'weight gradient contracted from the factors without rebuilding the input. `hosvd-warm`: '
                'the channel and spatial bases from one subspace iteration started at the earlier batch\'s '
                'factors, ranks still meeting eps on this batch; `hosvd-frozen`: projected onto bases '
                'estimated on the earlier batch (ranks fixed then, so `captured` may fall below eps). Input '
                'and bias gradients are exact and the same in all, so they are left out of the times. '
                'Data: random activations with a decaying spectrum at DeepLabV3-R18-d8 shapes for 512x512 '
                'crops, batch 8.\n\n```\n' + '\n'.join(lines) + '\n```\n')


def load_average():
    """The 1-minute load average: other jobs on the cores inflate every timing, unevenly."""
    return f'load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores'


def accuracy_check(device, thresholds, say=print):
    """Weight-gradient error of both float32 algorithms against the float64 reference truncated to the
    same ranks, on a smaller layer (float64 SVDs of the full shapes would dominate the run)."""
    x = realistic_activation((8, 512, 32, 32), device)
    grad_output = torch.randn(8, 64, 32, 32, generator=torch.Generator().manual_seed(1)).to(device)
    conv_args, weight_shape = ((1, 1), (1, 1), (1, 1), 1), (64, 512, 3, 3)
    say('\naccuracy: relative error of grad_W vs float64 full-SVD truncation at the same ranks, '
        f'x {tuple(x.shape)}, weight {weight_shape}')
    for method, modes in METHODS.items():
        svds, svds64 = reference_svds(x, modes), reference_svds(x.double(), modes)
        for eps in thresholds:
            core, bases = reference_truncate(x.double(), svds64, eps)
            truth = reference_grad_weight(core, bases, weight_shape, grad_output.double(), *conv_args[:3])
            ours = run_ours(x, eps, modes, weight_shape, grad_output, conv_args, device)[3]
            ref = run_reference(x, svds, eps, weight_shape, grad_output, conv_args, device)[3]
            error = [float((g.double() - truth).norm() / truth.norm()) for g in (ours, ref)]
            say(f'{method:6} {eps:4.2f}  ours {error[0]:.1e}  reference (float32 SVD) {error[1]:.1e}')


if __name__ == '__main__':
    main()
