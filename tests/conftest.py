import importlib.util
import os
import os.path as osp
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch.autograd.graph import saved_tensors_hooks

from mmseg_actcomp.compression import unfold

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


def mmseg_config(relative):
    """A config packaged with mmseg (what ``mmseg::<relative>`` names)."""
    import mmseg
    return osp.join(osp.dirname(mmseg.__file__), '.mim', 'configs', relative)


#: a transformer whose inference forward runs nn.Linear layers (a stock SegFormer MiT runs none: its MLPs are 1x1
#: convolutions and its nn.MultiheadAttention reads its projections' weights directly, until the region makes them
#: layers: tests/test_ops/test_attention.py)
SEGMENTER = 'segmenter/segmenter_vit-t_mask_8xb1-160k_ade20k-512x512.py'


# ------------------------------------------------------------------ test tensors and autograd records
@pytest.fixture(scope='module')
def single_thread():
    """One torch thread for a module (``pytestmark = pytest.mark.usefixtures('single_thread')``): the test
    tensors are tiny, and OpenMP's fork/join per op costs more than it gains, ten times more when other
    jobs share the cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def low_rank_activation(shape, components=6, noise=0.2, seed=0, dtype=torch.float32):
    """``ReLU(sum_j a_j (x) c_j (x) s_j / j + noise)``: batch and channel loadings times smooth spatial
    fields with decaying weight, plus noise, rectified; ``shape = (B, C, H, W)``. Its spectra decay in
    every mode without being exactly low-rank, like a conv activation's."""
    g = torch.Generator().manual_seed(seed)
    b, c, h, w = shape
    coarse = torch.randn(components, 1, 3, 3, generator=g)
    fields = F.interpolate(coarse, size=(h, w), mode='bilinear', align_corners=True)[:, 0]
    weights = 1.0 / torch.arange(1, components + 1)
    x = torch.einsum('j,bj,cj,jhw->bchw', weights, torch.randn(b, components, generator=g),
                     torch.randn(c, components, generator=g), fields)
    x = x + noise * x.std() * torch.randn(shape, generator=g)
    return x.relu().to(dtype)


def explained_variance_curve(x, mode):
    """Cumulative explained variance of the mode-``mode`` unfolding, from an exact float64 SVD."""
    energy = torch.linalg.svdvals(unfold(x.double(), mode)).square()
    return energy.cumsum(0) / energy.sum()


def assert_rank_meets_threshold(rank, curve, eps):
    """``rank`` is the smallest ``k`` with ``curve[k - 1] >= eps``."""
    assert curve[rank - 1] >= eps, (rank, curve[rank - 1].item(), eps)
    assert rank == 1 or curve[rank - 2] < eps, (rank, curve[rank - 2].item(), eps)


def saved_tensors(fn):
    """Run ``fn()`` recording every tensor autograd saves for backward; returns (result, tensors)."""
    saved = []

    def pack(tensor):
        saved.append(tensor)
        return tensor

    with saved_tensors_hooks(pack, lambda tensor: tensor):
        result = fn()
    return result, saved


def assert_close_in_norm(actual, expected, rtol):
    """Relative error in Frobenius norm: the meaningful one for half precision, where single small
    entries of a sum can be off by more than their own size."""
    error = (actual.float() - expected.float()).norm() / expected.float().norm()
    assert error <= rtol, error


def non_parameter(saved, module):
    params = {p.data_ptr() for p in module.parameters()}
    return [t for t in saved if t.data_ptr() not in params]
