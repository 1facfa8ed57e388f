"""Compression + weight-gradient time of mmseg_actcomp against the paper's algorithm, same ranks.

The reference is the algorithm of the official code of Nguyen et al. (NeurIPS 2024): a full
``torch.linalg.svd`` of every unfolding at every step, the same explained-variance rank rule, the core by
successive mode products, and a backward that rebuilds the whole activation before the weight
correlation. Ours: eigen-decomposition of the small Gram matrix of each unfolding, and a backward that
folds the batch (and channel) factors into grad_output (see mmseg_actcomp.ops.functional).

Timed: compress(x) then grad_weight from the kept factors. The input and bias gradients are exact and
identical in both, so they are left out.

    python benchmarks/bench_core.py [--repeats 2] [--device cpu] [--eps 0.7 0.8 0.9]
"""
import argparse
import os
import time

import torch
import torch.nn.functional as F
from torch.nn.grad import conv2d_weight

from mmseg_actcomp.compression import METHODS, compress, unfold
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


def reference_compress(x, eps, modes):
    """Full SVD of every unfolding; returns (core, {mode: U_n})."""
    bases = {}
    for mode in modes:
        u, s, _ = torch.linalg.svd(unfold(x, mode), full_matrices=False)
        bases[mode] = u[:, :reference_rank(s, eps)]
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


def run_ours(x, eps, modes, weight_shape, grad_output, conv_args, device):
    t_compress, tucker = timed(lambda: compress(x, eps, modes), device)
    t_grad, grad = timed(lambda: conv2d_weight_from_tucker(tucker, weight_shape, grad_output, *conv_args),
                         device)
    return t_compress, t_grad, tucker.ranks, grad


def run_reference(x, eps, modes, weight_shape, grad_output, conv_args, device):
    t_compress, (core, bases) = timed(lambda: reference_compress(x, eps, modes), device)
    t_grad, grad = timed(lambda: reference_grad_weight(core, bases, weight_shape, grad_output,
                                                       *conv_args[:3]), device)
    return t_compress, t_grad, tuple(u.shape[1] for u in bases.values()), grad


def best_of(runner, repeats, *args):
    """Fastest compress and grad times over ``repeats`` runs (the least disturbed by other load on a
    shared machine), the ranks and the last gradient."""
    runs = [runner(*args) for _ in range(repeats)]
    return min(r[0] for r in runs), min(r[1] for r in runs), runs[-1][2], runs[-1][3]


def warm_up(device):
    """One small run of each path, so that library initialisation is not timed."""
    x = realistic_activation((2, 16, 16, 16), device, components=8)
    grad_output = torch.randn(2, 8, 16, 16, device=device)
    for method in METHODS.values():
        run_ours(x, 0.8, method, (8, 16, 3, 3), grad_output, ((1, 1), (1, 1), (1, 1), 1), device)
        run_reference(x, 0.8, method, (8, 16, 3, 3), grad_output, ((1, 1), (1, 1), (1, 1), 1), device)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--repeats', type=int, default=2, help='timed runs per case (fastest reported)')
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
    print('reference: full torch.linalg.svd of every unfolding + rebuild x for the weight gradient')
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
            for eps in args.eps:
                case = (x, eps, METHODS[method], weight_shape, grad_output, conv_args, device)
                ours = best_of(run_ours, args.repeats, *case)
                ref = best_of(run_reference, args.repeats, *case)
                ours_total, ref_total = ours[0] + ours[1], ref[0] + ref[1]
                diff = float((ours[3] - ref[3]).norm() / ref[3].norm())
                print(f'{method:6} {eps:4.2f}  {str(ours[2]):18} {str(ref[2]):18} '
                      f'{"yes" if ours[2] == ref[2] else "NO":4} '
                      f'{ours[0]:7.3f}/{ref[0]:7.3f} {ref[0] / ours[0]:4.0f}x  '
                      f'{ours[1]:6.3f}/{ref[1]:6.3f}   {ours_total:6.3f}/{ref_total:6.3f}  '
                      f'{ref_total / ours_total:7.1f}x {diff:11.1e}')
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
        for eps in thresholds:
            core, bases = reference_compress(x.double(), eps, modes)
            truth = reference_grad_weight(core, bases, weight_shape, grad_output.double(), *conv_args[:3])
            ours = run_ours(x, eps, modes, weight_shape, grad_output, conv_args, device)[3]
            ref = run_reference(x, eps, modes, weight_shape, grad_output, conv_args, device)[3]
            error = [float((g.double() - truth).norm() / truth.norm()) for g in (ours, ref)]
            print(f'{method:6} {eps:4.2f}  ours {error[0]:.1e}  reference (float32 SVD) {error[1]:.1e}')

if __name__ == '__main__':
    main()
