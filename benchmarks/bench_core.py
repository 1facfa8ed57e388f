"""Compression + weight-gradient time of mmseg_actcomp against the paper's algorithm, same ranks.

The reference is the algorithm of the official code of Nguyen et al. (NeurIPS 2024): a full
``torch.linalg.svd`` of every unfolding at every step, the same explained-variance rank rule, the core by
successive mode products, and a backward that rebuilds the whole activation before the weight
correlation. Ours: eigen-decomposition of the small Gram matrix of each unfolding, and a backward that
folds the batch (and channel) factors into grad_output (see mmseg_actcomp.ops.functional).

Timed: compress(x) then grad_weight from the kept factors. The input and bias gradients are exact and
identical in both, so they are left out.

    python benchmarks/bench_core.py [--repeats 1] [--device cpu] [--eps 0.7 0.8 0.9]
"""
import argparse
import os
import time

import torch
import torch.nn.functional as F
from torch.nn.grad import conv2d_weight

from mmseg_actcomp.compression import METHODS, compress, single_cpu_thread, unfold
from mmseg_actcomp.ops import conv2d_weight_from_tucker

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


def run_ours(x, eps, modes, weight_shape, grad_output, conv_args, device, repeats=1):
    """(compress seconds, grad_W seconds, ranks, grad_W) of mmseg_actcomp."""
    t_compress, tucker = fastest(lambda: compress(x, eps, modes), device, repeats)
    t_grad, grad = fastest(lambda: conv2d_weight_from_tucker(tucker, weight_shape, grad_output,
                                                             *conv_args), device, repeats)
    return t_compress, t_grad, tucker.ranks, grad


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
    args = parser.parse_args()
    device = torch.device(args.device)

    print(f'device: {device} ({torch.get_num_threads()} CPU threads), torch {torch.__version__}, '
          f'float32, best of {args.repeats} run(s); {load_average()}')
    print('data: random activations with a decaying spectrum: ReLU(sum of 128 batch x channel loadings '
          'times smooth spatial fields (bicubic-upsampled noise at 1/4, 1/8, 1/16), weights j^-0.75, '
          '+ 50% noise)')
    print('timed: compress + weight gradient from the kept factors (input/bias gradients are exact and '
          'the same in both)')
    print('reference: full torch.linalg.svd of every unfolding (timed once per layer and method, it does '
          'not depend on eps; faster of 1 and all CPU threads) + truncation + rebuild x for grad_W')
    warm_up(device)
    header = (f'{"method":6} {"eps":>4}  {"ranks (ours)":18} {"ranks (ref)":18} {"same":4} '
              f'{"compress ours/ref":>17} {"x":>5}  {"grad_W ours/ref":>15}  {"total ours/ref":>15} '
              f'{"speed-up":>8} {"grad_W diff":>11}')
    for name, (x_shape, weight_shape, stride, padding, dilation) in SHAPES.items():
        x = realistic_activation(x_shape, device)
        grad_output = torch.randn(x_shape[0], weight_shape[0], *x_shape[2:],
                                  generator=torch.Generator().manual_seed(1)).to(device)
        conv_args = ((stride, stride), (padding, padding), (dilation, dilation), 1)
        print(f'\n{name}: x {tuple(x_shape)}, weight {tuple(weight_shape)}, padding {padding}, '
              f'dilation {dilation}; times in seconds')
        print(header)
        for method in args.methods:
            modes = METHODS[method]
            t_svds, svds = time_reference_svds(x, modes, device, args.repeats)
            for eps in args.eps:
                ours = run_ours(x, eps, modes, weight_shape, grad_output, conv_args, device,
                                args.repeats)
                ref = run_reference(x, svds, eps, weight_shape, grad_output, conv_args, device,
                                    args.repeats)
                ref_compress = t_svds + ref[0]
                ours_total, ref_total = ours[0] + ours[1], ref_compress + ref[1]
                diff = float((ours[3] - ref[3]).norm() / ref[3].norm())
                print(f'{method:6} {eps:4.2f}  {str(ours[2]):18} {str(ref[2]):18} '
                      f'{"yes" if ours[2] == ref[2] else "NO":4} '
                      f'{ours[0]:7.3f}/{ref_compress:7.3f} {ref_compress / ours[0]:4.0f}x  '
                      f'{ours[1]:6.3f}/{ref[1]:6.3f}   {ours_total:6.3f}/{ref_total:6.3f}  '
                      f'{ref_total / ours_total:7.1f}x {diff:11.1e}')
            del svds
    print(f'\n{load_average()} (timings are only comparable on an otherwise idle machine)')
    accuracy_check(device, args.eps)


def load_average():
    """The 1-minute load average: other jobs on the cores inflate every timing, unevenly."""
    return f'load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores'


def accuracy_check(device, thresholds):
    """Weight-gradient error of both float32 algorithms against the float64 reference truncated to the
    same ranks, on a smaller layer (float64 SVDs of the full shapes would dominate the run)."""
    x = realistic_activation((8, 512, 32, 32), device)
    grad_output = torch.randn(8, 64, 32, 32, generator=torch.Generator().manual_seed(1)).to(device)
    conv_args, weight_shape = ((1, 1), (1, 1), (1, 1), 1), (64, 512, 3, 3)
    print('\naccuracy: relative error of grad_W vs float64 full-SVD truncation at the same ranks, '
          f'x {tuple(x.shape)}, weight {weight_shape}')
    for method, modes in METHODS.items():
        svds, svds64 = reference_svds(x, modes), reference_svds(x.double(), modes)
        for eps in thresholds:
            core, bases = reference_truncate(x.double(), svds64, eps)
            truth = reference_grad_weight(core, bases, weight_shape, grad_output.double(), *conv_args[:3])
            ours = run_ours(x, eps, modes, weight_shape, grad_output, conv_args, device)[3]
            ref = run_reference(x, svds, eps, weight_shape, grad_output, conv_args, device)[3]
            error = [float((g.double() - truth).norm() / truth.norm()) for g in (ours, ref)]
            print(f'{method:6} {eps:4.2f}  ours {error[0]:.1e}  reference (float32 SVD) {error[1]:.1e}')


if __name__ == '__main__':
    main()
