import importlib.util
import os
import os.path as osp
import subprocess
import sys

import pytest

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
SAMPLE_CONFIG = osp.join(REPO, 'configs', 'sample', 'deeplabv3_r18-d8_1xb2-20it_vocsample-128x128.py')


@pytest.fixture(scope='session')
def sample_workspace(tmp_path_factory):
    """A folder holding ``data/sample_voc`` (seed 0), used as the cwd of training runs, since the
    sample configs name their data relative to the working directory as mmseg's configs do."""
    root = tmp_path_factory.mktemp('workspace')
    subprocess.run([sys.executable, osp.join(REPO, 'tools', 'make_sample_voc.py'),
                    '--out', str(root / 'data' / 'sample_voc'), '--seed', '0'], check=True)
    return root


def load_script(relative_path):
    """Import a repo script that is not in a package (``benchmarks/x.py``, ``tools/x.py``) as a module."""
    name = osp.splitext(osp.basename(relative_path))[0]
    spec = importlib.util.spec_from_file_location(name, osp.join(REPO, relative_path))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_tool(args, cwd, timeout=600, python=sys.executable, env=None):
    """Run a Python tool as a user would, with this interpreter or ``python`` (another venv's) and the
    environment updated by ``env``; return the CompletedProcess (stdout+stderr merged)."""
    env = dict(os.environ, PYTHONUNBUFFERED='1', **(env or {}))
    return subprocess.run([str(python)] + [str(a) for a in args], cwd=cwd, env=env, timeout=timeout,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def build_model_from_config(config, cfg_options=None):
    """Build the segmentor of a config file with no weights downloaded (``pretrained=None``)."""
    from mmengine.config import Config
    from mmengine.registry import init_default_scope
    from mmseg.registry import MODELS
    import mmseg_actcomp  # noqa: F401  (registers the plugin's types, as custom_imports would)
    cfg = Config.fromfile(str(config))
    cfg.model.pretrained = None
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    init_default_scope('mmseg')
    return cfg, MODELS.build(cfg.model)
