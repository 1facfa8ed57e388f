"""What a GPU user runs: a training step's peak memory, float16 AMP training with GradScaler, gradients equal
to the CPU's.

Each check is parametrized over devices: its CPU case runs everywhere (CI has no GPU), its CUDA case is
marked ``cuda`` and skips where torch sees no CUDA device. ``bash benchmarks/gpu_check.sh`` runs the CUDA
cases and the step benchmark on a GPU machine."""
import pytest
import torch

from conftest import REPO, load_script

pytestmark = pytest.mark.slow  # whole-model builds and training steps

ON_CUDA = [pytest.mark.cuda,
           pytest.mark.skipif(not torch.cuda.is_available(), reason='no CUDA device (torch.cuda.is_available())')]
DEVICES = ['cpu', pytest.param('cuda', marks=ON_CUDA)]
HOSVD_CONFIG = f'{REPO}/configs/sample/deeplabv3_r18-d8_hosvd-0.8-10L_1xb2-20it_vocsample-128x128.py'

bench_step = load_script('benchmarks/bench_step.py')


def _hooked_segmentor(device, method='hosvd', seed=0):
    """The sample DeepLabV3-R18 (random init, ``seed``) with the config's hook (``method`` in place of
    its own), on ``device`` in training mode; ``(model, hook, layer paths, cfg)``."""
    from mmengine.runner import set_random_seed
    from mmseg.registry import HOOKS

    from mmseg_actcomp.apis.segmentor import (build_segmentor, compression_hook_cfg, load_config,
                                                set_train_mode)
    cfg = load_config(HOSVD_CONFIG)
    set_random_seed(seed)
    model = build_segmentor(cfg).to(device)
    for module in model.modules():  # ResNet zero-inits each block's last BN gamma, which the hook freezes:
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):  # its residual convs would get
            torch.nn.init.ones_(module.weight)  # no gradient, unlike a trained net's
    hook = HOOKS.build(dict(compression_hook_cfg(cfg), method=method))
    paths = list(hook.region.apply(model))
    set_train_mode(model, hook.region)
    return model, hook, paths, cfg


@pytest.mark.parametrize('device', DEVICES)
def test_a_steps_peak_memory_is_below_vanillas(device, sample_workspace, monkeypatch):
    """bench_step on ``device``: HOSVD's measured region and the step's peak allocation (above the resting
    model) are both below vanilla fine-tuning's of the same layers."""
    monkeypatch.chdir(sample_workspace)
    result = bench_step.bench_config(HOSVD_CONFIG, num_batches=1, steps=1, warmup=0,
                                     variant_names=('vanilla', 'hosvd'), device=device)
    vanilla, hosvd = result['variants']['vanilla'], result['variants']['hosvd']
    assert result['device'] == device
    # the whole step's peak (CPU, 2x3x128x128: 0.86x vanilla's) also holds the full-size logits, the loss
    # and the backward's transients, which no method here shrinks
    assert 0 < hosvd['peak_bytes'] < vanilla['peak_bytes']
    assert 0 < hosvd['measured_bytes']['region'] * 5 < vanilla['measured_bytes']['region']
    assert all(t > 0 for t in hosvd['step_times_s'] + vanilla['step_times_s'])


@pytest.mark.parametrize('device', DEVICES)
def test_float16_amp_trains_two_iterations_with_grad_scaler(device, sample_workspace, monkeypatch):
    """float16 autocast (the GPU's AMP default) with torch's GradScaler: both iterations step (a step whose
    gradients hold an inf or nan is skipped and halves the scale), the chosen layers' unscaled weight
    gradients are finite and the weights move."""
    from mmseg_actcomp.apis.segmentor import SegmentorLoss, train_batches
    from mmseg_actcomp.ops.convert import compression_stats
    monkeypatch.chdir(sample_workspace)
    model, hook, paths, cfg = _hooked_segmentor(device)
    batches = train_batches(cfg, 2)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=0.01, momentum=0.9)
    scaler = torch.amp.GradScaler(device, init_scale=2.0**10)
    before = {p: model.get_submodule(p).weight.detach().clone() for p in paths}
    loss_of = SegmentorLoss(model)
    for batch in batches:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device, dtype=torch.float16):
            loss = loss_of(batch)
        assert torch.isfinite(loss)
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        for path in paths:
            grad = model.get_submodule(path).weight.grad
            assert grad is not None and torch.isfinite(grad).all(), path
        scaler.step(optimizer)
        scaler.update()
        assert scaler.get_scale() == 2.0**10  # not halved: no step was skipped
    stats = compression_stats(hook.region.fine_tuned)
    assert stats['kept_whole'] == 0 and 0 < stats['kept_ratio'] < 1
    for path in paths:
        assert not torch.equal(model.get_submodule(path).weight.detach(), before[path]), path


def _layer_grads(device):
    """Input, weight and bias gradients of a HOSVD conv, an SVD conv and a 4-bit-input BN + ReLU in a row
    (the region's lean ops) on an input whose spectra decay, computed on ``device``, returned on CPU; and
    the convs' ranks."""
    from torch import nn

    from mmseg_actcomp.ops import HOSVDConv2d, SVDConv2d, make_lean
    from conftest import low_rank_activation
    torch.manual_seed(0)
    first = HOSVDConv2d.from_conv(nn.Conv2d(16, 24, 3, padding=1), 0.8)
    last = SVDConv2d.from_conv(nn.Conv2d(24, 8, 1), 0.8)
    net = nn.Sequential(first, nn.BatchNorm2d(24), nn.ReLU(), last)
    lean = make_lean(net, 0.8, 'hosvd', input_bits=4)
    assert sorted(type(m).__name__ for m in lean.values()) == ['LeanBatchNorm2d', 'PackedMaskReLU']
    net = net.to(device).train()
    x = low_rank_activation((4, 16, 12, 10)).to(device).requires_grad_()
    out = net(x)
    grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(device)
    out.backward(grad_out)
    grads = [x.grad] + [p.grad for p in net.parameters()]
    return [g.cpu() for g in grads], (first.last_ranks, last.last_ranks)


@pytest.mark.parametrize('device', [pytest.param('cuda', marks=ON_CUDA)])
def test_gradients_equal_the_cpus(device):
    cpu_grads, cpu_ranks = _layer_grads('cpu')
    grads, ranks = _layer_grads(device)
    assert ranks == cpu_ranks
    for mine, expected in zip(grads, cpu_grads):
        error = (mine - expected).norm() / expected.norm()
        assert error < 1e-3, error


def test_the_layer_gradients_are_deterministic_on_the_cpu():
    """The CPU reference of ``test_gradients_equal_the_cpus`` (its comparison, run where CI can run it)."""
    (grads_a, ranks_a), (grads_b, ranks_b) = _layer_grads('cpu'), _layer_grads('cpu')
    assert ranks_a == ranks_b and all(r and all(k > 0 for k in r) for r in ranks_a)
    assert all(torch.equal(a, b) for a, b in zip(grads_a, grads_b))
    assert all(g is not None and g.abs().sum() > 0 for g in grads_a)


@pytest.mark.skipif(torch.cuda.is_available(), reason='checks the message of a machine without CUDA')
def test_gpu_check_says_it_needs_a_gpu():
    import os
    import subprocess
    import sys
    out = subprocess.run(['bash', f'{REPO}/benchmarks/gpu_check.sh'], env=dict(os.environ, PY=sys.executable),
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=120)
    assert out.returncode == 1 and 'sees no CUDA device' in out.stdout and 'NVIDIA GPU' in out.stdout
