"""mmseg_actcomp.apis.segmentor: loading weights says what went wrong and what the user may do."""
import os.path as osp

import pytest
import torch
from torch import nn

from conftest import REPO, SAMPLE_CONFIG
from mmseg_actcomp.apis.segmentor import MeasureError, load_weights


class Untrusted:
    """A global outside torch's weights_only allow-list (and ours)."""


def test_a_checkpoint_torch_refuses_to_unpickle_names_the_global_and_the_way_out(tmp_path):
    path = tmp_path / 'untrusted.pth'
    torch.save({'state_dict': {}, 'meta': Untrusted()}, path)
    with pytest.raises(MeasureError, match='TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1') as info:
        load_weights(nn.Conv2d(1, 1, 1), str(path))
    assert str(path) in str(info.value) and 'Untrusted' in str(info.value)


def test_another_load_failure_has_no_unpickling_hint(tmp_path):
    path = tmp_path / 'garbage.pth'
    path.write_bytes(b'not a checkpoint')
    with pytest.raises(MeasureError) as info:
        load_weights(nn.Conv2d(1, 1, 1), str(path))
    assert 'could not load checkpoint' in str(info.value) and 'WEIGHTS_ONLY' not in str(info.value)


def test_a_second_hook_entry_is_a_measure_error():
    from mmengine.config import Config

    from mmseg_actcomp.apis.segmentor import compression_hook_cfg
    entry = dict(type='ActivationCompressionHook', num_layers=2)
    assert compression_hook_cfg(Config(dict(custom_hooks=[entry]))) == entry
    assert compression_hook_cfg(Config(dict(custom_hooks=[]))) is None
    with pytest.raises(MeasureError, match='custom_hooks: ActivationCompressionHook is given 2 times'):
        compression_hook_cfg(Config(dict(custom_hooks=[entry, entry])))
    with pytest.raises(MeasureError, match="custom_hooks: .*method='tucker' is not allowed"):
        compression_hook_cfg(Config(dict(custom_hooks=[dict(entry, method='tucker')])))


BUDGET_CONFIG = osp.join(REPO, 'configs', 'sample', 'deeplabv3_r18-d8_hosvd-0.8-10L_1xb2-20it_vocsample-128x128.py')


@pytest.mark.slow
def test_measure_config_fits_the_hooks_budget_first_and_reports_it(sample_workspace, monkeypatch):
    """The memory tool measures what training keeps: with memory_budget_mib, the thresholds chosen on the
    first budget_batches batches, which its measured batches then keep within the budget."""
    from mmseg_actcomp.apis import measure_config
    from mmseg_actcomp.memory import format_report
    from mmseg_actcomp.ops.budget import EXPLAINED_VARIANCE_GRID
    monkeypatch.chdir(sample_workspace)
    layers = ['decode_head.aspp_modules.3.conv', 'decode_head.bottleneck.conv', 'decode_head.conv_seg']
    options = {'custom_hooks.0.layers': layers, 'custom_hooks.0.memory_budget_mib': 0.3}
    report = measure_config(BUDGET_CONFIG, num_batches=2, cfg_options=options, progress=False)
    per_layer = report['explained_variance_per_layer']
    assert report['memory_budget_mib'] == 0.3 and report['explained_variance'] is None
    assert list(per_layer) == layers and set(per_layer.values()) <= set(EXPLAINED_VARIANCE_GRID)
    kept = report['totals']['estimate']
    assert 0 < kept['peak_mib'] <= 0.3  # measured on the batches the budget was fitted on
    note = next(n for n in report['notes'] if n.startswith('memory_budget_mib=0.3: '))
    assert f"kept {kept['peak_mib']:.3f} MiB at most in a measured batch" in note and 'within the budget' in note
    assert 'eps per layer (memory_budget_mib 0.3)' in format_report(report)
    with pytest.raises(MeasureError, match=r'custom_hooks: ActivationCompressionHook: memory_budget_mib=0.001 '
                                           r'cannot be met: .* raise memory_budget_mib to at least \d+\.\d{3}'):
        measure_config(BUDGET_CONFIG, num_batches=1, progress=False,
                       cfg_options=dict(options, **{'custom_hooks.0.memory_budget_mib': 0.001}))


def test_train_batches_are_the_same_batches_on_every_call_with_the_same_seed(sample_workspace, monkeypatch):
    """Benchmarks that draw batches twice in one process (grad_fidelity) compare the same pixels: the random
    augmentation is seeded too, and the caller's global random streams go on untouched."""
    import random

    import numpy as np
    from mmengine.config import Config

    from mmseg_actcomp.apis.segmentor import train_batches
    monkeypatch.chdir(sample_workspace)
    cfg = Config.fromfile(SAMPLE_CONFIG)
    np.random.seed(123)
    random.seed(123)
    torch.manual_seed(123)
    first, again, other = (train_batches(cfg, 2, seed) for seed in (0, 0, 1))
    for a, b in zip(first, again):
        assert all(torch.equal(x, y) for x, y in zip(a['inputs'], b['inputs']))
        assert all(torch.equal(x.gt_sem_seg.data, y.gt_sem_seg.data)
                   for x, y in zip(a['data_samples'], b['data_samples']))
    assert not all(torch.equal(x, y) for x, y in zip(first[0]['inputs'], other[0]['inputs']))
    np.random.seed(123)
    random.seed(123)
    torch.manual_seed(123)
    expected = (np.random.rand(), random.random(), torch.rand(()))
    np.random.seed(123)
    random.seed(123)
    torch.manual_seed(123)
    train_batches(cfg, 1, 0)
    assert (np.random.rand(), random.random(), torch.rand(())) == expected
