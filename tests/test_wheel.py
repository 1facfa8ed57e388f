"""The package users install: the wheel built from this repo ships the configs (mmseg_actcomp/.mim/configs),
so a config in any folder inherits them as ``mmseg_actcomp::...`` and trains, as mmseg's own inherit
``mmseg::...``."""
import glob
import os
import os.path as osp
import sys
import zipfile

import pytest

from conftest import REPO, run_tool

USER_CONFIG = """\
_base_ = ['mmseg_actcomp::deeplabv3/deeplabv3_mv2-d8_hosvd-0.8-10L_1xb8-20k_voc12aug-512x512.py']
custom_imports = dict(imports=['mmseg_actcomp'], allow_failed_imports=False)
"""


def tiny_run_options():
    """--cfg-options for 2 iterations of batch 2 at 128x128 with one validation, from random weights (the
    config's ImageNet file and its require_load_from are for real runs), on the data at data/VOCdevkit."""
    options = ['model.backbone.init_cfg=None', 'custom_hooks.0.require_load_from=False',
               'train_cfg.max_iters=2', 'train_cfg.val_interval=2', 'default_hooks.checkpoint.interval=2',
               'train_dataloader.batch_size=2', 'model.data_preprocessor.size=(128,128)',
               'val_dataloader.dataset.pipeline.1.scale=(512,128)']
    for loader in ('train_dataloader', 'val_dataloader'):
        options += [f'{loader}.num_workers=0', f'{loader}.persistent_workers=False']
    for i in (0, 1):  # voc train + voc aug; indices into mmseg's pascal_voc12_aug train_pipeline
        options += [f'train_dataloader.dataset.datasets.{i}.pipeline.2.scale=(512,128)',
                    f'train_dataloader.dataset.datasets.{i}.pipeline.3.crop_size=(128,128)',
                    f'train_dataloader.dataset.datasets.{i}.pipeline.6.size=(128,128)']
    return options


def test_plugin_scope_builds_mmseg_and_plugin_types():
    # dicts a `mmseg_actcomp::` base brings in carry _scope_='mmseg_actcomp' (mmseg_actcomp/registry.py)
    import mmseg_actcomp  # noqa: F401
    from mmengine.config.utils import MODULE2PACKAGE
    from mmengine.registry import HOOKS
    assert MODULE2PACKAGE['mmseg_actcomp'] == 'mmseg-actcomp'
    with HOOKS.switch_scope_and_registry('mmseg_actcomp') as hooks:
        assert hooks.scope == 'mmseg_actcomp'
        assert hooks.get('SegVisualizationHook').__module__.startswith('mmseg.')  # a parent's type
    hook = HOOKS.build(dict(type='ActivationCompressionHook', num_layers=2, _scope_='mmseg_actcomp'))
    assert type(hook).__name__ == 'ActivationCompressionHook'


@pytest.mark.slow  # builds a wheel and a venv, then trains in a subprocess
def test_wheel_configs_are_inherited_by_a_user_config_that_trains(sample_workspace, tmp_path):
    out = run_tool(['-m', 'build', '--no-isolation', '--outdir', tmp_path / 'dist', REPO], cwd=REPO)
    assert out.returncode == 0, out.stdout[-3000:]
    wheel, = glob.glob(str(tmp_path / 'dist' / '*.whl'))
    shipped = {name.partition('/.mim/')[2] for name in zipfile.ZipFile(wheel).namelist() if '/.mim/' in name}
    repo_configs = {osp.relpath(p, REPO) for p in glob.glob(osp.join(REPO, 'configs', '**', '*.py'), recursive=True)}
    assert repo_configs <= shipped and 'configs/_base_/default_runtime.py' in shipped
    assert {'model-index.yml', 'tools/train.py', 'tools/make_sample_voc.py'} <= shipped

    # A venv holding the wheel, on top of this interpreter's stack (torch, mmcv, mmseg). The stack's folder
    # is added by a plain path line, which does not run the .pth files there (the editable install of this
    # repo), so the wheel's mmseg_actcomp is the one imported. (--system-site-packages would add the base
    # interpreter's packages, not this venv's.)
    venv = tmp_path / 'venv'
    no_checkout = {'PYTHONPATH': ''}  # nothing of the repo on the path (pip would take it as installed)
    assert run_tool(['-m', 'venv', '--without-pip', venv], cwd=tmp_path).returncode == 0
    python = venv / 'bin' / 'python'
    out = run_tool(['-m', 'pip', '--python', python, 'install', '--no-deps', wheel], cwd=tmp_path, env=no_checkout)
    assert out.returncode == 0, out.stdout[-3000:]
    venv_site = venv / 'lib' / f'python{sys.version_info.major}.{sys.version_info.minor}' / 'site-packages'
    stack = [p for p in sys.path if osp.basename(p) == 'site-packages' and osp.isdir(p)]
    (venv_site / 'zz_stack.pth').write_text('\n'.join(stack) + '\n')

    user = tmp_path / 'user'  # a folder of the user's, holding their config and VOC at mmseg's data_root
    (user / 'data').mkdir(parents=True)
    os.symlink(sample_workspace / 'data' / 'sample_voc' / 'VOCdevkit', user / 'data' / 'VOCdevkit')
    (user / 'my_config.py').write_text(USER_CONFIG)

    out = run_tool(['-c', 'import mmseg_actcomp; from mmengine import Config; '
                    'cfg = Config.fromfile("my_config.py"); '
                    'print(mmseg_actcomp.__file__, cfg.custom_hooks[0].type, cfg.custom_hooks[0].method)'],
                   cwd=user, python=python, env=no_checkout)
    assert out.returncode == 0, out.stdout[-3000:]
    assert out.stdout.split()[-3:] == [str(venv_site / 'mmseg_actcomp' / '__init__.py'),
                                       'ActivationCompressionHook', 'hosvd']

    out = run_tool(['-m', 'mmseg_actcomp', 'train', 'my_config.py', '--work-dir', 'work',
                    '--cfg-options'] + tiny_run_options(), cwd=user, python=python, env=no_checkout)
    assert out.returncode == 0, out.stdout[-4000:]
    assert 'ActivationCompressionHook: method=hosvd' in out.stdout
    assert 'Iter(val) [8/8]' in out.stdout
    assert (user / 'work' / 'iter_2.pth').is_file()
