"""mmseg's own packaged tools/train.py trains a sample config, validates and writes a checkpoint; our
tools/train.py is the same entry with clear messages for the first errors a user meets."""
import os.path as osp
import re

import pytest
import torch

from conftest import REPO, SAMPLE_CONFIG, run_tool

pytestmark = pytest.mark.slow  # subprocesses and training runs: make test-fast skips them

SHORT = ['--cfg-options', 'train_cfg.max_iters=2', 'train_cfg.val_interval=2',
         'default_hooks.checkpoint.interval=2', 'default_hooks.logger.interval=1']


def _mmseg_train_py():
    import mmseg
    return osp.join(osp.dirname(mmseg.__file__), '.mim', 'tools', 'train.py')


def test_stock_train_py_two_iterations_with_validation(sample_workspace, tmp_path):
    work = tmp_path / 'work'
    out = run_tool([_mmseg_train_py(), SAMPLE_CONFIG, '--work-dir', work] + SHORT, cwd=sample_workspace)
    assert out.returncode == 0, out.stdout[-4000:]
    ckpt = work / 'iter_2.pth'
    assert ckpt.is_file() and (work / 'last_checkpoint').read_text().strip().endswith('iter_2.pth')
    m = re.search(r'Iter\(val\) \[8/8\].*mIoU: ([\d.]+)', out.stdout)
    assert m, out.stdout[-3000:]
    assert 0.0 <= float(m.group(1)) <= 100.0
    state = torch.load(ckpt, map_location='cpu', weights_only=False)
    assert state['meta']['iter'] == 2
    assert any(k.startswith('backbone.layer4') for k in state['state_dict'])


def test_our_train_py_runs_mmseg_train(sample_workspace, tmp_path):
    out = run_tool([osp.join(REPO, 'tools', 'train.py'), SAMPLE_CONFIG, '--work-dir', tmp_path / 'w',
                    '--cfg-options', 'train_cfg.max_iters=1', 'train_cfg.val_interval=100',
                    'default_hooks.checkpoint.interval=1'], cwd=sample_workspace)
    assert out.returncode == 0, out.stdout[-4000:]
    assert (tmp_path / 'w' / 'iter_1.pth').is_file()


@pytest.mark.parametrize('case', ['missing_dataset', 'config_typo', 'missing_custom_imports', 'type_typo'])
def test_first_errors_say_what_to_do(case, tmp_path):
    config, extra = SAMPLE_CONFIG, []
    if case == 'missing_dataset':
        extra = ['--cfg-options', f'train_dataloader.dataset.datasets.0.data_root={tmp_path}/nowhere']
        want = 'Dataset not found'
        want2 = 'tools/make_sample_voc.py'
    elif case == 'config_typo':
        config = SAMPLE_CONFIG.replace('128x128', '128x12')
        want, want2 = 'does not exist', "Did you mean 'configs/sample/deeplabv3_r18-d8_1xb2-20it_vocsample-128x128.py'"
    else:
        hook = 'ActivationCompressionHook' if case == 'missing_custom_imports' else 'EMAHok'
        config = tmp_path / 'bad.py'
        config.write_text(f"_base_ = {SAMPLE_CONFIG!r}\ncustom_imports = dict(imports=[])\n"
                          f"custom_hooks = [dict(type={hook!r})]\n")
        want = ("custom_imports = dict(imports=['mmseg_actcomp'], allow_failed_imports=False)"
                if case == 'missing_custom_imports' else "'EMAHok' is not a registered hook type")
        want2 = 'plugin' if case == 'missing_custom_imports' else "Did you mean 'EMAHook'?"
    out = run_tool([osp.join(REPO, 'tools', 'train.py'), config, '--work-dir', tmp_path / 'w'] + extra,
                   cwd=tmp_path)
    assert out.returncode == 1, out.stdout[-3000:]
    tail = out.stdout[-1500:]
    assert 'error: ' in tail and want in tail and want2 in tail, tail
    assert 'Traceback' not in out.stdout
