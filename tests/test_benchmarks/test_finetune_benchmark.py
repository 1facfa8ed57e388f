"""benchmarks/finetune.py: the figures it derives from mmengine's logs (val curve, step time, gain over
seeds, % of vanilla), the files it writes, and its argument checks. The learning runs themselves take an
hour: `python benchmarks/finetune.py` (docs/finetune.md)."""
import os.path as osp
import subprocess
import sys

import pytest

from conftest import REPO, load_script


finetune = load_script('benchmarks/finetune.py')
RECORDS = [  # as mmengine's scalars.json holds them: train logs every few iterations, val logs with mIoU
    {'lr': 0.01, 'time': 9.0, 'iter': 4, 'step': 4},
    {'lr': 0.01, 'time': 2.0, 'iter': 8, 'step': 8, 'actcomp_kept_energy': 0.5},
    {'aAcc': 90.0, 'mIoU': 30.0, 'mAcc': 40.0, 'step': 8},
    {'lr': 0.01, 'time': 4.0, 'iter': 12, 'step': 12, 'actcomp_kept_energy': 0.7},
    {'aAcc': 91.0, 'mIoU': 35.5, 'mAcc': 41.0, 'step': 12},
]


def test_val_curve_and_step_time_from_logs():
    assert finetune.val_curve(RECORDS) == [(8, 30.0), (12, 35.5)]
    assert finetune.step_time(RECORDS) == pytest.approx(3.0)  # the first window (9.0 s) is warm-up
    with pytest.raises(ValueError, match='no iteration time'):
        finetune.step_time(RECORDS[:1])


def _runs():
    return {'none': {0: {'curve': [(50, 30.0), (100, 40.0)]}, 1: {'curve': [(50, 31.0), (100, 44.0)]}},
            'hosvd-0.8': {0: {'curve': [(50, 29.0), (100, 35.0)], 'kept_energy': 0.5},
                          1: {'curve': [(50, 28.0), (100, 37.0)], 'kept_energy': 0.7}}}


def test_summarise_gains_over_seeds_and_ratios_to_vanilla():
    methods = finetune.summarise(_runs(), start_miou=25.0, step_s={'none': 1.0, 'hosvd-0.8': 2.5})
    vanilla, hosvd = methods['none'], methods['hosvd-0.8']
    assert vanilla['gain_mean'] == pytest.approx(17.0) and vanilla['gain_std'] == pytest.approx(2.0)
    assert hosvd['gain_mean'] == pytest.approx(11.0) and hosvd['gain_std'] == pytest.approx(1.0)
    assert hosvd['gain_pct_of_vanilla'] == pytest.approx(100 * 11 / 17)
    assert hosvd['step_ratio'] == pytest.approx(2.5) and vanilla['step_ratio'] == 1.0
    assert hosvd['kept_energy'] == pytest.approx(0.6) and vanilla['kept_energy'] is None
    assert [s['gain'] for s in hosvd['seeds']] == [10.0, 12.0]


def test_region_bns_keep_follows_the_hook_options():
    keep = {key: finetune.region_bns_keep(overrides) for key, overrides in finetune.METHODS.items()}
    assert keep['none'] == 'input whole' and keep['hosvd-0.8'] == 'input in 4 bits'
    assert keep['hosvd-0.8-exact-bn'] == 'input whole' and keep['hosvd-0.8-bn8'] == 'input in 8 bits'
    assert keep['hosvd-0.8-frozen-bn'] == keep['hosvd-0.8-precise-bn'] == 'nothing (running statistics)'
    assert finetune.region_bns_keep(dict(method='hosvd', lean_region=False)) == 'input whole'


def test_written_report(tmp_path):
    methods = finetune.summarise(_runs(), start_miou=25.0, step_s={'none': 1.0, 'hosvd-0.8': 2.5})
    methods['none'].update(region_mib=100.0, ranks={}, region_bns_keep='input whole')
    methods['hosvd-0.8'].update(region_mib=20.0, ranks={'decode_head.conv_seg': [3, 14, 2, 1]},
                                region_bns_keep='input in 8 bits')
    result = dict(json='docs/x.json', curves=str(tmp_path / 'c.png'), pareto=str(tmp_path / 'p.png'),
                  wall_s=600, resumed=False, methods=methods,
                  protocol=dict(seeds=[0, 1], iters=100, val_interval=50, jobs=2, batch_size=8, crop='128x128',
                                lr=0.03, val_images=300, start_miou=25.0, source_miou=60.0, val_loo_miou=40.0,
                                val_loo_max_delta=0.4))
    text = finetune.markdown(result, 'python benchmarks/finetune.py')
    assert ('| hosvd-0.8 | input in 8 bits | 25.00 | 36.00 | +11.00 ± 1.00 | 65 % | 20.00 | 5.0x less | 2.50x '
            '| 60.0 % |') in text
    assert '| decode_head.conv_seg | 3x14x2x1 |' in text
    assert 'Written by `python benchmarks/finetune.py`' in text
    finetune.plot_curves(methods, result['curves'])
    assert osp.getsize(result['curves']) > 1000


@pytest.mark.parametrize('args, message', [
    (['--iters', '100', '--val-interval', '30'], 'must be a positive multiple'),
    (['--methods', 'hosvd-0.8'], 'must include none'),
    (['--jobs', '0'], '--jobs must be >= 1'),
])
def test_bad_arguments_are_named(args, message):
    done = subprocess.run([sys.executable, osp.join(REPO, 'benchmarks', 'finetune.py')] + args,
                          capture_output=True, text=True)
    assert done.returncode == 2 and message in done.stderr


grad_fidelity = load_script('benchmarks/grad_fidelity.py')


def test_grad_fidelity_pieces_are_exact_at_eps_one():
    """The centred and plain reconstructions are x itself at eps = 1, and the weight gradient the page
    compares is autograd's."""
    import torch
    torch.manual_seed(0)
    x = torch.randn(3, 4, 6, 5, dtype=torch.float64).relu()
    for method in ('hosvd', 'svd'):
        for variant, (x_hat, ranks, nbytes) in grad_fidelity.approximations(x, 1.0, method).items():
            torch.testing.assert_close(x_hat, x)
            assert nbytes > 0 and all(r >= 1 for r in ranks), (method, variant)
    conv = torch.nn.Conv2d(4, 2, 3, padding=2, dilation=2, bias=False).double()
    xg = x.clone().requires_grad_()
    out = conv(xg)
    dy = torch.randn_like(out)
    out.backward(dy)
    torch.testing.assert_close(grad_fidelity.weight_gradient(conv, x, dy), conv.weight.grad)
    plain, _, _ = grad_fidelity.approximations(x, 0.5, 'hosvd')['plain']
    assert plain.square().sum() < x.square().sum()


def test_grad_fidelity_page_has_a_section_per_checkpoint():
    rows = [dict(layer='decode_head.conv_seg', method='hosvd', eps=0.8, variant=variant, cos=cos, norm_ratio=0.5,
                 energy=0.9, ranks=[1, 2, 1, 1], kib=1.5) for variant, cos in (('plain', 0.25), ('centred', 0.75))]
    subspace_rows = [dict(layer='decode_head.conv_seg', subspace=s, cos=0.5, norm_ratio=1.0, energy=0.9,
                          ranks=[4, 8, 3, 3]) for s in grad_fidelity.SUBSPACES]
    text = grad_fidelity.markdown([('a.pth', rows, subspace_rows, 5), ('b.pth', rows, subspace_rows, 5)],
                                  'python benchmarks/grad_fidelity.py', 3)
    assert text.count('## Weights: ') == 2 and '## Weights: `b.pth`' in text
    assert text.count(': subspace options') == 2
    assert ('| decode_head.conv_seg | 0.8 | 1x2x1x1 | 1.5 | 0.900 | 0.250 | 0.500 | 1x2x1x1 | 1.5 | 0.900 | 0.750 |'
            in text)
    assert '- hosvd ε 0.8, centred: mean cos 0.750' in text


def test_grad_fidelity_subspace_section_has_a_row_per_layer_and_a_mean_per_option():
    rows = [dict(layer=layer, subspace=s, cos=c, norm_ratio=1.0, energy=0.9, ranks=[4, 8, 3, 3])
            for layer in ('a.conv', 'b.conv') for s, c in zip(grad_fidelity.SUBSPACES, (0.9, 0.8, 0.7))]
    lines = grad_fidelity.subspace_section(rows, batches=5)
    table = [line for line in lines if line.startswith('| a.conv') or line.startswith('| b.conv')]
    assert len(table) == 2 and table[0].count('|') == 2 + 3 * len(grad_fidelity.SUBSPACES)
    assert '| a.conv | 4x8x3x3 | 0.900 | 0.900 | 4x8x3x3 | 0.900 | 0.800 |' in table[0]
    assert '- frozen: mean cos 0.700, mean norm ratio 1.000, mean energy 0.900' in lines
    assert 'figures over the last 3' in lines[2]
