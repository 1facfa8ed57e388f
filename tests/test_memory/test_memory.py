"""Activation-memory measurement: the library on tiny models (no mmseg), the report files, the Pareto
plot, the CLI's errors, and one end-to-end run of the CLI on the sample config with the hook."""
import csv
import importlib.util
import json
import math
import os.path as osp

import pytest
import torch
from torch import nn

from mmseg_actcomp.memory import (REGION_RULE, build_report, in_region, measure_step, region_modules,
                                  storage_of, write_report)
from mmseg_actcomp.memory.pareto import pareto_front, plot_pareto, read_miou, run_label
from mmseg_actcomp.memory.report import CSV_COLUMNS
from mmseg_actcomp.ops import GradFilterConv2d, HOSVDConv2d, SVDConv2d

from conftest import REPO, SAMPLE_CONFIG, run_tool

TOOL = osp.join(REPO, 'tools', 'measure_activation_memory.py')
F32 = 4


def _bytes(shape, element_size=F32):
    return math.prod(shape) * element_size


def _report(model, x, layer_paths, batches=1):
    """Report of ``batches`` steps of ``model(x).sum()`` with ``layer_paths`` fine-tuned."""
    steps = [measure_step(model, lambda: model(x).sum(), layer_paths) for _ in range(batches)]
    return build_report(steps, layer_paths, {'method': 'test'})


class TwoBranches(nn.Module):
    """Two convolutions reading the same input, as ASPP branches do: ``x: (B, 3, H, W)``."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3, padding=1)
        self.b = nn.Conv2d(3, 4, 1)

    def forward(self, x):
        return self.a(x) + self.b(x)


def test_none_estimate_is_input_bchw_times_element_size():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 5, 3, stride=2))
    x = torch.randn(2, 3, 12, 10)
    report = _report(model, x, ['0', '2'], batches=2)
    by_path = {row['path']: row for row in report['layers']}
    assert by_path['0']['input_shape'] == [2, 3, 12, 10]
    assert by_path['2']['input_shape'] == [2, 8, 12, 10]
    for path, shape in (('0', (2, 3, 12, 10)), ('2', (2, 8, 12, 10))):
        assert by_path[path]['vanilla_bytes'] == by_path[path]['kept_bytes'] == _bytes(shape)
        assert by_path[path]['ranks'] is None and by_path[path]['ratio'] == 1.0
    estimate = report['totals']['estimate']
    assert estimate['mean_bytes'] == estimate['peak_bytes'] == _bytes((2, 3, 12, 10)) + _bytes((2, 8, 12, 10))


def test_hosvd_ranks_are_full_at_eps_1():
    """r_n = min(I_n, prod of the other sizes): the channel mode (40) is bounded by 2*3*3 = 18."""
    torch.manual_seed(0)
    shape = (2, 40, 3, 3)
    model = nn.Sequential(HOSVDConv2d(40, 4, 3, padding=1, explained_variance=1.0))
    report = _report(model, torch.randn(shape), ['0'])
    full = [min(size, math.prod(shape) // size) for size in shape]
    assert full == [2, 18, 3, 3]
    assert report['layers'][0]['ranks'] == full


@pytest.mark.parametrize('layer', [HOSVDConv2d, SVDConv2d])
def test_measured_single_compressed_conv_is_its_factors(layer):
    torch.manual_seed(0)
    conv = layer(6, 4, 3, padding=1, explained_variance=0.8)
    # nearly rank 1 along the batch, so that both methods truncate; x needs a gradient, so the weight
    # is saved too
    x = (torch.randn(4, 1, 1, 1) * torch.randn(1, 6, 9, 9) + 0.01 * torch.randn(4, 6, 9, 9)).requires_grad_()
    step = measure_step(conv, lambda: conv(x).sum(), [''])
    assert conv.last_kept_bytes < conv.last_vanilla_bytes == _bytes(x.shape)
    assert step.saved['total'] == conv.last_kept_bytes
    assert step.saved['parameters'] == _bytes(conv.weight.shape)
    assert step.layers[''].kept_bytes == conv.last_kept_bytes
    ops = step.saved['per_op']['region']
    assert list(ops) == ['CompressedConv2dFunctionBackward']


def test_measured_gradient_filter_is_its_patch_sums():
    torch.manual_seed(0)
    conv = GradFilterConv2d(6, 4, 3, stride=2, padding=1, patch_size=2)
    x = torch.randn(2, 6, 13, 11).requires_grad_()
    step = measure_step(conv, lambda: conv(x).sum(), [''])
    # a 7x6 output: a grid of 4x3 patches of 2x2 output (4x4 input) pixels
    assert conv.last_kept_bytes == _bytes((2, 6, 4, 3)) and conv.last_vanilla_bytes == _bytes(x.shape)
    assert step.saved['total'] == conv.last_kept_bytes
    assert step.saved['parameters'] == _bytes(conv.weight.shape)  # the weight itself, for the input gradient
    layer = step.layers['']
    assert (layer.type, layer.ranks, layer.kept_bytes, layer.vanilla_bytes) == (
        'GradFilterConv2d', None, conv.last_kept_bytes, conv.last_vanilla_bytes)
    assert list(step.saved['per_op']['region']) == ['GradFilterConv2dFunctionBackward']
    # eval: a plain conv's figures, not the last training step's
    conv.eval()
    assert measure_step(conv, lambda: conv(x).sum(), ['']).layers[''].kept_bytes == _bytes(x.shape)


def test_measured_equals_factors_for_wide_channel_modes():
    # modes above 1024 take the float32 path, whose factor must not stay a view of the whole matrix
    torch.manual_seed(0)
    conv = HOSVDConv2d(1100, 2, 1, explained_variance=0.5)
    x = torch.randn(2, 1100, 2, 2)
    step = measure_step(conv, lambda: conv(x).sum(), [''])
    assert step.saved['total'] == conv.last_kept_bytes


def test_measured_excludes_parameters_and_buffers():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4))
    x = torch.randn(2, 3, 6, 6)
    step = measure_step(model, lambda: model(x).sum(), ['0'])
    # conv: its input; BN: its input (the conv output) plus its save_mean/save_invstd (4 floats each).
    activations = _bytes((2, 3, 6, 6)) + _bytes((2, 4, 6, 6)) + 2 * _bytes((4,))
    assert step.saved['total'] == activations
    params = _bytes(model[0].weight.shape) + 3 * _bytes((4,))  # conv weight; BN weight, running stats
    assert step.saved['parameters'] == params


def test_storage_shared_by_two_convs_counted_once():
    torch.manual_seed(0)
    model = TwoBranches()
    x = torch.randn(2, 3, 8, 8)
    report = _report(model, x, ['a', 'b'])
    measured = report['totals']['measured']
    assert measured['total']['mean_bytes'] == _bytes(x.shape)
    conv = report['per_op']['region']['ConvolutionBackward0']
    assert conv['saves'] == 2 and conv['mean_bytes'] == _bytes(x.shape)
    # the estimate counts what each layer keeps, as the paper does: twice
    assert report['totals']['estimate']['mean_bytes'] == 2 * _bytes(x.shape)


def test_region_is_chosen_layers_and_their_parents_without_losses():
    modules = region_modules(['decode_head.bottleneck.conv', 'backbone.layer4.0.conv1', 'conv_seg'])
    assert modules == ['backbone.layer4.0', 'backbone.layer4.0.conv1', 'conv_seg', 'decode_head.bottleneck',
                       'decode_head.bottleneck.conv']
    assert in_region('decode_head.bottleneck.bn', modules)
    assert in_region('backbone.layer4.0', modules)  # F.relu in the block's forward
    assert not in_region('backbone.layer4.1.bn1', modules)
    assert not in_region('backbone.layer4.00', modules)
    assert not in_region('', modules) and not in_region(None, modules)
    assert not in_region('decode_head.loss_decode', region_modules(['decode_head.conv_seg']))


def test_region_split_and_per_op_breakdown():
    """block.conv fine-tuned: the block's BN and ReLU are in the region; the head after it is not, but its
    frozen conv saves its input, the block's ReLU output, a storage of the region."""
    torch.manual_seed(0)
    block = nn.Sequential()
    block.add_module('conv', HOSVDConv2d(3, 4, 3, padding=1, explained_variance=0.9))
    block.add_module('bn', nn.BatchNorm2d(4))
    block.add_module('relu', nn.ReLU())
    model = nn.Sequential()
    model.add_module('block', block)
    model.add_module('head', nn.Sequential(nn.Conv2d(4, 2, 1), nn.ReLU()))
    model.head[0].weight.requires_grad_(False)
    x = torch.randn(2, 3, 8, 8)
    report = _report(model, x, ['block.conv'])
    region_ops = report['per_op']['region']
    assert set(region_ops) == {'CompressedConv2dFunctionBackward', 'NativeBatchNormBackward0',
                               'ReluBackward0', 'ConvolutionBackward0'}
    relu_output = _bytes((2, 4, 8, 8))
    assert region_ops['ReluBackward0']['mean_bytes'] == relu_output
    assert region_ops['ConvolutionBackward0']['mean_bytes'] == relu_output
    assert region_ops['ReluBackward0']['exclusive_mean_bytes'] == 0  # shared with the head's conv
    assert set(report['per_op']['rest']) == {'ReluBackward0'}  # the head's ReLU output
    measured = {side: figure['mean_bytes'] for side, figure in report['totals']['measured'].items()}
    assert measured['total'] == measured['region'] + measured['rest']
    assert report['region_modules'] == ['block', 'block.conv'] and report['region_rule'] == REGION_RULE


def test_per_op_names_the_module_holding_most_of_its_bytes():
    """Two ReLUs of different sizes in the region: the op's module is the larger one's; BN's is its own."""
    torch.manual_seed(0)
    model = nn.Sequential()
    model.add_module('small', nn.Sequential(nn.Conv2d(3, 2, 1), nn.ReLU()))
    model.add_module('large', nn.Sequential(nn.Conv2d(2, 8, 1), nn.BatchNorm2d(8), nn.ReLU()))
    step = measure_step(model, lambda: model(torch.randn(2, 3, 4, 4)).sum(), ['small.0', 'large.0'])
    ops = step.saved['per_op']['region']
    assert ops['ReluBackward0']['module'] == 'large.2' and ops['ReluBackward0']['saves'] == 2
    assert ops['NativeBatchNormBackward0']['module'] == 'large.1'


def test_storage_of_tensors_without_storage():
    assert storage_of(torch.empty(4, 4, device='meta'))[1] == 0
    sparse = torch.eye(3).to_sparse()
    assert storage_of(sparse)[1] == 3 * F32 + 2 * 3 * 8  # values + int64 indices


def test_report_files_have_the_columns(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(HOSVDConv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 2, 1))
    report = _report(model, torch.randn(2, 3, 8, 8), ['0', '2'])
    paths = write_report(report, str(tmp_path))
    with open(paths['csv']) as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0]) == CSV_COLUMNS
    assert [r['path'] for r in rows] == ['0', '2', 'TOTAL (estimate)']
    assert rows[0]['input_shape'] == '2x3x8x8' and len(rows[0]['ranks'].split('x')) == 4
    assert rows[1]['ranks'] == '-'
    with open(paths['json']) as f:
        loaded = json.load(f)
    assert set(loaded['totals']) == {'estimate', 'measured', 'peak'}
    # on CPU too: the profiler's allocation records; the step holds at least what it saves for backward
    peak = loaded['totals']['peak']
    assert peak['peak_bytes'] >= peak['mean_bytes'] >= loaded['totals']['measured']['total']['mean_bytes'] > 0
    assert set(loaded['totals']['measured']) == {'total', 'region', 'rest', 'parameters', 'discarded'}
    assert set(loaded['layers'][0]) >= set(CSV_COLUMNS)


def test_cpu_peak_counts_allocations_and_frees_in_time_order():
    from mmseg_actcomp.memory.measure import CpuAllocationPeak
    with CpuAllocationPeak() as peak:
        a = torch.empty(1 << 20, dtype=torch.uint8)  # 1 MiB
        b = torch.empty(2 << 20, dtype=torch.uint8)  # 3 MiB live
        del a, b
        c = torch.empty(1 << 20, dtype=torch.uint8)  # 1 MiB live: below the 3 MiB before
        del c
    assert 3 << 20 <= peak.peak_bytes < (3 << 20) + (64 << 10)


@pytest.mark.slow
def test_cpu_peak_of_a_sample_segmentor_falls_with_compression():
    """The step's CPU peak (not only what autograd keeps) is lower with the default HOSVD hook than with
    vanilla fine-tuning of the same 10 layers."""
    from conftest import build_model_from_config
    from mmseg_actcomp.hooks import ActivationCompressionHook
    from conftest import low_rank_activation

    x = low_rank_activation((2, 3, 96, 96), components=12, noise=0.5)
    peaks = {}
    for method in ('none', 'hosvd'):
        _, model = build_model_from_config(
            f'{REPO}/configs/sample/deeplabv3_r18-d8_hosvd-0.8-10L_1xb2-20it_vocsample-128x128.py')
        hook = ActivationCompressionHook(method=method, num_layers=10)
        paths = hook.region.apply(model)
        model.train()
        hook.region.set_norms_eval()
        peaks[method] = measure_step(model, lambda: model(x, mode='tensor').sum(), paths).peak_bytes
    assert 0 < peaks['hosvd'] < 0.8 * peaks['none'], peaks


def test_read_miou_from_logs_and_work_dirs(tmp_path):
    log = tmp_path / 'train.log'
    log.write_text('Iter(val) [8/8]    aAcc: 71.4700  mIoU: 5.9600  mAcc: 8.3300\n'
                   'Iter(val) [8/8]    aAcc: 72.0000  mIoU: 6.5000  mAcc: 9.0000\n')
    assert read_miou(str(log)) == 6.5
    for stamp, miou in (('20240101_000000', 1.0), ('20240102_000000', 7.25)):
        vis = tmp_path / 'work' / stamp / 'vis_data'
        vis.mkdir(parents=True)
        (vis / 'scalars.json').write_text('{"loss": 1.0, "step": 5}\n'
                                          f'{{"aAcc": 70.0, "mIoU": {miou - 1}, "step": 10}}\n'
                                          f'{{"aAcc": 71.0, "mIoU": {miou}, "step": 20}}\n')
    assert read_miou(str(tmp_path / 'work')) == 7.25
    empty = tmp_path / 'empty.log'
    empty.write_text('nothing validated yet\n')
    with pytest.raises(ValueError, match='no mIoU'):
        read_miou(str(empty))


def test_run_labels_name_the_method_and_its_setting():
    assert run_label({'method': 'hosvd', 'explained_variance': 0.8, 'num_layers': 10}) == 'hosvd eps0.8 10L'
    assert run_label({'method': 'gradfilt', 'explained_variance': None, 'patch_size': 4, 'num_layers': 10}) == \
        'gradfilt R4 10L'
    assert run_label({'method': None}) == 'vanilla (no hook)'


def test_pareto_front_and_plot(tmp_path):
    points = [(10.0, 50.0), (1.0, 40.0), (5.0, 45.0), (6.0, 44.0), (1.0, 39.0)]
    assert pareto_front(points) == [1, 2, 0]
    out = tmp_path / 'pareto.png'
    plot_pareto(points, [f'run{i}' for i in range(len(points))], str(out))
    assert out.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'


def _tool_main():
    spec = importlib.util.spec_from_file_location('measure_activation_memory', TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


@pytest.mark.parametrize('argv, message', [
    (['--num-batches', '0'], '--num-batches must be >= 1'),
    (['--device', 'tpu'], "unknown device 'tpu'"),
    (['--checkpoint', 'missing.pth'], "checkpoint 'missing.pth' does not exist"),
])
def test_cli_rejects_bad_input(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        _tool_main()([SAMPLE_CONFIG] + argv)
    assert exc.value.code != 0
    assert message in capsys.readouterr().err


@pytest.mark.slow
def test_cli_unreadable_checkpoint(sample_workspace, tmp_path, monkeypatch, capsys):
    checkpoint = tmp_path / 'broken.pth'
    checkpoint.write_text('not a checkpoint')
    monkeypatch.chdir(sample_workspace)
    with pytest.raises(SystemExit):
        _tool_main()([SAMPLE_CONFIG, '--num-batches', '1', '--checkpoint', str(checkpoint)])
    assert f'could not load checkpoint {str(checkpoint)!r}' in capsys.readouterr().err


def test_cli_compare_draws_the_pareto_plot(tmp_path, capsys):
    """Three runs; the middle one uses more memory for a lower mIoU than the first, so it is off the front."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1))
    reports = []
    for i, miou in enumerate((40.0, 35.0, 50.0)):
        report = _report(model, torch.randn(2 + i, 3, 8, 8), ['0'])
        (tmp_path / f'r{i}').mkdir()
        write_report(report, str(tmp_path / f'r{i}'))
        (tmp_path / f'r{i}.log').write_text(f'Iter(val) [8/8]    aAcc: 71.4700  mIoU: {miou}  mAcc: 8.3300\n')
        reports.append(str(tmp_path / f'r{i}' / 'memory.json'))
    out = tmp_path / 'pareto.png'
    logs = [str(tmp_path / f'r{i}.log') for i in range(3)]
    _tool_main()(['--compare', *reports, '--logs', *logs, '--out', str(out)])
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[-2] == '*' for line in lines[1:4]] == [True, False, True]
    assert out.read_bytes()[:4] == b'\x89PNG'


@pytest.mark.skipif(torch.cuda.is_available(), reason='checks the message of a machine without CUDA')
def test_cli_cuda_without_cuda(capsys):
    with pytest.raises(SystemExit):
        _tool_main()([SAMPLE_CONFIG, '--device', 'cuda'])
    assert 'sees no CUDA device' in capsys.readouterr().err


def test_cli_missing_data_points_to_the_sample_maker(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # the sample config reads data/sample_voc relative to the cwd
    with pytest.raises(SystemExit):
        _tool_main()([SAMPLE_CONFIG, '--num-batches', '1'])
    assert 'make_sample_voc.py' in capsys.readouterr().err


@pytest.mark.slow
def test_cli_measures_a_gradient_filter_config(sample_workspace, tmp_path, monkeypatch, capsys):
    """The tool, in process, on the sample DeepLabV3 with method='gradfilt': every chosen conv keeps its
    input summed over (2 stride)^2 patches, a quarter or less of it on these even-sized maps."""
    config = tmp_path / 'deeplabv3_gradfilt.py'
    config.write_text(f'_base_ = [{SAMPLE_CONFIG!r}]\n'
                      "custom_hooks = [dict(type='ActivationCompressionHook', method='gradfilt', patch_size=2, "
                      'num_layers=4)]\n')
    out = tmp_path / 'out'
    monkeypatch.chdir(sample_workspace)
    _tool_main()([str(config), '--num-batches', '1', '--out-dir', str(out)])
    printed = capsys.readouterr().out
    assert 'method gradfilt  patch_size 2  eps -' in printed and 'GradFilterConv2dFunctionBackward' in printed
    report = json.loads((out / 'memory.json').read_text())
    assert (report['method'], report['patch_size'], report['explained_variance']) == ('gradfilt', 2, None)
    assert report['center'] is False and len(report['layers']) == 4
    for row in report['layers']:
        assert row['type'] == 'GradFilterConv2d' and row['ranks'] is None
        assert row['vanilla_bytes'] == _bytes(row['input_shape']) and row['ratio'] >= 4
    totals = report['totals']
    assert totals['estimate']['mean_bytes'] == sum(r['kept_bytes'] for r in report['layers'])
    assert report['per_op']['region']['GradFilterConv2dFunctionBackward']['mean_bytes'] == \
        totals['estimate']['mean_bytes']


@pytest.mark.slow
def test_cli_end_to_end_with_the_hook(sample_workspace, tmp_path):
    config = tmp_path / 'deeplabv3_hosvd.py'
    config.write_text(f'_base_ = [{SAMPLE_CONFIG!r}]\n'
                      "custom_hooks = [dict(type='ActivationCompressionHook', method='hosvd', "
                      'explained_variance=0.8, num_layers=10)]\n')
    out = tmp_path / 'out'
    result = run_tool([TOOL, config, '--num-batches', 2, '--out-dir', out, '--log', 'train.log'],
                      cwd=sample_workspace)
    assert result.returncode == 0, result.stdout[-3000:]
    assert 'fine-tuned region' in result.stdout and 'peak: the step, above the resting model' in result.stdout
    report = json.loads((out / 'memory.json').read_text())
    assert report['method'] == 'hosvd' and report['explained_variance'] == 0.8
    assert report['num_layers'] == len(report['layers']) == 10 and report['num_batches'] == 2
    assert report['batch_shape'] == [2, 3, 128, 128] and report['device'] == 'cpu'
    assert report['log'] == 'train.log' and set(report['versions']) >= {'torch', 'mmseg'}
    for row in report['layers']:
        assert row['type'] == 'HOSVDConv2d' and len(row['ranks']) == 4
        # never more than the input (a layer whose decomposition would be larger keeps the input)
        assert row['kept_bytes'] <= row['vanilla_bytes'] == _bytes(row['input_shape'])
    assert sum(r['kept_bytes'] for r in report['layers']) < sum(r['vanilla_bytes'] for r in report['layers']) / 4
    totals = report['totals']
    assert totals['estimate']['mean_bytes'] == pytest.approx(sum(r['kept_bytes'] for r in report['layers']))
    measured = totals['measured']
    assert measured['region']['mean_bytes'] > 0
    assert 'CompressedConv2dFunctionBackward' in report['per_op']['region']
    assert (out / 'memory.csv').read_text().splitlines()[0] == ','.join(CSV_COLUMNS)
