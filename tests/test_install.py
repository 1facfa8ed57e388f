"""The pinned stack is installed, with mmcv's compiled ops, and the install step is idempotent."""
import os.path as osp
import re
import subprocess

import pytest

from conftest import REPO


def _pins():
    pins = {}
    for line in open(osp.join(REPO, 'requirements', 'runtime.txt')):
        m = re.match(r'^([\w-]+)==([\w.]+)', line.strip())
        if m:
            pins[m.group(1)] = m.group(2)
    return pins


def test_pinned_versions_are_installed():
    from importlib.metadata import version
    pins = _pins()
    assert set(pins) >= {'torch', 'mmengine', 'mmcv', 'mmsegmentation'}
    for name, want in pins.items():
        assert version(name).split('+')[0] == want, name


def test_mmcv_has_compiled_ops():
    # mmseg imports mmcv.ops at import time; mmcv-lite (no _ext) would fail here.
    import mmcv.ops
    from mmcv.utils import ext_loader
    ext = ext_loader.load_ext('_ext', ['nms'])
    assert hasattr(ext, 'nms')
    assert mmcv.ops.point_sample is not None


def test_setuptools_keeps_pkg_resources():
    # mmengine resolves `mmseg::` config paths through pkg_resources (removed in setuptools 81)
    from mmengine.config import Config
    cfg = Config.fromfile(osp.join(REPO, 'configs', 'deeplabv3', 'deeplabv3_r18-d8_1xb8-20k_voc12aug-512x512.py'))
    assert cfg.model.backbone.depth == 18


@pytest.mark.slow
def test_install_step_is_idempotent():
    out = subprocess.run(['bash', osp.join(REPO, 'tools', 'install.sh')], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert 'is up to date' in out.stdout


def test_package_is_editable_install_of_this_repo():
    import mmseg_actcomp
    assert osp.dirname(osp.dirname(osp.abspath(mmseg_actcomp.__file__))) == REPO
