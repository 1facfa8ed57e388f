"""ActivationCompressionHook(memory_budget_mib=...): the choice at the start of training, logged, kept in
checkpoints and restored on resume; an infeasible budget fails before the first step."""
import copy
import os.path as osp
import re
from types import SimpleNamespace

import pytest
import torch
from mmengine.config import Config

from conftest import REPO, build_model_from_config, run_tool
from mmseg_actcomp import ActivationCompressionHook
from mmseg_actcomp.apis.checks import HookConfigError
from mmseg_actcomp.hooks import activation_compression_hook as hook_module
from mmseg_actcomp.hooks.activation_compression_hook import BUDGET_CHOICE_KEY
from mmseg_actcomp.ops.budget import EXPLAINED_VARIANCE_GRID
from .test_hook import TWO_ITERS, initial_checkpoint, mmseg_train_py, sample_config

pytestmark = pytest.mark.usefixtures('single_thread')


@pytest.fixture(scope='module')
def deeplab():
    _, model = build_model_from_config(sample_config('deeplabv3_r18-d8'))
    return model


def seg_batches(count, size=64, seed=0):
    """Batches as mmseg's train dataloader yields them: uint8 images and ground-truth maps."""
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample
    g = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(count):
        inputs, samples = [], []
        for _ in range(2):
            inputs.append(torch.randint(0, 256, (3, size, size), generator=g, dtype=torch.uint8))
            sample = SegDataSample(metainfo=dict(img_shape=(size, size), ori_shape=(size, size)))
            sample.gt_sem_seg = PixelData(data=torch.randint(0, 21, (1, size, size), generator=g))
            samples.append(sample)
        batches.append(dict(inputs=inputs, data_samples=samples))
    return batches


def fake_runner(hook, model, iteration=0):
    """What the hook reads of mmengine's Runner; its dataloader yields :func:`seg_batches`."""
    def build_dataloader(cfg, seed=None):
        if iteration:
            raise AssertionError('a resumed run must not calibrate again')
        return seg_batches(hook.region.budget_batches)
    return SimpleNamespace(hooks=[hook], model=model, cfg=Config(dict(train_dataloader=dict())), iter=iteration,
                           seed=0, build_dataloader=build_dataloader, optim_wrapper=None)


def test_the_hook_chooses_logs_checkpoints_and_restores_the_choice(deeplab, monkeypatch):
    logged = []
    monkeypatch.setattr(hook_module, 'print_log', lambda message, **kwargs: logged.append(message))
    model = copy.deepcopy(deeplab)
    hook = ActivationCompressionHook(num_layers=3, memory_budget_mib=0.1)
    runner = fake_runner(hook, model)
    hook.before_run(runner)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    hook.before_train(runner)
    choice = hook.region.budget_choice
    assert sorted(choice) == sorted(hook.region.layer_paths) and set(choice.values()) <= set(EXPLAINED_VARIANCE_GRID)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())
    assert 'memory_budget_mib=0.1: explained_variance per layer, chosen on 2 training batches' in logged[-1]
    assert all(re.search(rf'{re.escape(p)}\s+{eps:g}\s', logged[-1]) for p, eps in choice.items())

    checkpoint = {}
    hook.before_save_checkpoint(runner, checkpoint)
    assert checkpoint[BUDGET_CHOICE_KEY] == choice
    resumed_model = copy.deepcopy(deeplab)
    resumed = ActivationCompressionHook(num_layers=3, memory_budget_mib=0.1)
    resumed_runner = fake_runner(resumed, resumed_model, iteration=2)
    resumed.before_run(resumed_runner)
    resumed.after_load_checkpoint(resumed_runner, checkpoint)
    resumed.before_train(resumed_runner)  # resumed: no calibration (its loader would fail)
    assert resumed.region.budget_choice == choice
    assert all(resumed_model.get_submodule(p).explained_variance == eps for p, eps in choice.items())
    no_budget = ActivationCompressionHook(num_layers=3, explained_variance=0.8)
    no_budget.before_run(fake_runner(no_budget, copy.deepcopy(deeplab)))
    no_budget.after_load_checkpoint(None, checkpoint)  # no budget asked: the config's eps stays
    assert no_budget.region.budget_choice == {} and no_budget.region.fine_tuned[
        'decode_head.conv_seg'].explained_variance == 0.8
    empty = {}
    no_budget.before_save_checkpoint(None, empty)
    assert empty == {}


def test_an_infeasible_budget_fails_before_training_saying_the_minimum(deeplab):
    hook = ActivationCompressionHook(num_layers=3, memory_budget_mib=1e-4)
    runner = fake_runner(hook, copy.deepcopy(deeplab))
    hook.before_run(runner)
    with pytest.raises(HookConfigError, match=r'ActivationCompressionHook: memory_budget_mib=0.0001 cannot be met: '
                                              r'the 3 fine-tuned layers keep at least \d+\.\d{3} MiB .* raise '
                                              r'memory_budget_mib to at least \d+\.\d{3} or fine-tune fewer layers'):
        hook.before_train(runner)


@pytest.mark.parametrize('kwargs, message', [
    (dict(memory_budget_mib=-5), 'memory_budget_mib=-5 must be a number of MiB > 0'),
    (dict(memory_budget_mib='big'), "memory_budget_mib='big' must be a number of MiB > 0"),
    (dict(memory_budget_mib=4, method='none'), "memory_budget_mib=4 chooses explained_variance per layer: it needs "
                                               "method='svd' or 'hosvd', not 'none'"),
    (dict(budget_batches=0), 'budget_batches=0 must be an integer >= 1'),
])
def test_bad_budget_keys_are_hook_config_errors_naming_the_value(kwargs, message):
    with pytest.raises(HookConfigError, match='ActivationCompressionHook: ' + re.escape(message)):
        ActivationCompressionHook(num_layers=2, **kwargs)


@pytest.mark.slow
def test_train_py_fits_the_budget_once_and_resume_keeps_the_choice(sample_workspace, tmp_path):
    from mmseg_actcomp.utils import allow_mmengine_checkpoints
    config = sample_config('deeplabv3_r18-d8', 'hosvd-0.8-10L')
    initial_checkpoint('deeplabv3_r18-d8', tmp_path / 'init.pth')
    work, budget = tmp_path / 'work', 1.0
    options = [f'load_from={tmp_path / "init.pth"}', f'custom_hooks.0.memory_budget_mib={budget}']
    out = run_tool([mmseg_train_py(), config, '--work-dir', work, '--cfg-options', *options, *TWO_ITERS],
                   cwd=sample_workspace)
    assert out.returncode == 0, out.stdout[-5000:]
    assert 'memory_budget_mib=1: explained_variance per layer, chosen on 2 training batches' in out.stdout
    kept = [float(k) for k in re.findall(r'Iter\(train\) \[\d/2\].*actcomp_kept_MiB: ([\d.]+)', out.stdout)]
    assert len(kept) == 2 and all(0 < k <= budget * 1.05 for k in kept), kept  # other batches than calibrated
    allow_mmengine_checkpoints()
    choice = torch.load(work / 'iter_2.pth', map_location='cpu')[BUDGET_CHOICE_KEY]
    assert len(choice) == 10 and set(choice.values()) <= set(EXPLAINED_VARIANCE_GRID)

    # no load_from: mmengine would resume from it rather than from the work dir's last checkpoint
    out = run_tool([mmseg_train_py(), config, '--work-dir', work, '--resume', '--cfg-options', options[1],
                    'train_cfg.max_iters=3', 'train_cfg.val_interval=3', 'default_hooks.checkpoint.interval=3'],
                   cwd=sample_workspace)
    assert out.returncode == 0, out.stdout[-3000:]
    assert 'resumed epoch: 0, iter: 2' in out.stdout and 'chosen on 2 training batches' not in out.stdout
    assert torch.load(work / 'iter_3.pth', map_location='cpu')[BUDGET_CHOICE_KEY] == choice

    out = run_tool([osp.join(REPO, 'tools', 'train.py'), config, '--work-dir', tmp_path / 'w2', '--cfg-options',
                    f'load_from={tmp_path / "init.pth"}', f'custom_hooks.0.memory_budget_mib={0.001}', *TWO_ITERS],
                   cwd=sample_workspace)
    assert out.returncode == 1, out.stdout[-3000:]
    assert 'error: ' in out.stdout and 'raise memory_budget_mib to at least' in out.stdout
    assert 'Traceback' not in out.stdout and 'Iter(train)' not in out.stdout


@pytest.mark.slow
def test_ddp_ranks_choose_the_same_thresholds(sample_workspace, tmp_path):
    """Each rank calibrates on its own batches; the combined cost tables make every rank choose the same eps
    (a rank with another choice would keep other factors and its checkpoint would differ)."""
    config = sample_config('deeplabv3_r18-d8', 'hosvd-0.8-10L')
    initial_checkpoint('deeplabv3_r18-d8', tmp_path / 'init.pth')
    out = run_tool(['-m', 'torch.distributed.run', '--nproc_per_node=2', '--master_port=29541',
                    osp.join(REPO, 'tests', 'helpers', 'dist_cpu_train.py'), config, '--launcher', 'pytorch',
                    '--work-dir', tmp_path / 'work', '--cfg-options', f'load_from={tmp_path / "init.pth"}',
                    'custom_hooks.0.memory_budget_mib=1.0', 'env_cfg.dist_cfg.backend=gloo',
                    'model_wrapper_cfg.type=MMDistributedDataParallel', 'model_wrapper_cfg.device_ids=None',
                    'train_cfg.max_iters=1', 'train_cfg.val_interval=1', 'default_hooks.checkpoint.interval=1',
                    'default_hooks.logger.interval=1'], cwd=sample_workspace)
    assert out.returncode == 0, out.stdout[-5000:]
    assert 'Distributed training: True' in out.stdout and 'chosen on 2 training batches' in out.stdout
    from mmseg_actcomp.utils import allow_mmengine_checkpoints
    allow_mmengine_checkpoints()
    choice = torch.load(tmp_path / 'work' / 'iter_1.pth', map_location='cpu')[BUDGET_CHOICE_KEY]
    assert len(choice) == 10


def _combine_on_rank(rank, folder, port):
    """One rank of :func:`test_cost_tables_are_combined_across_ranks`: its own table, combined."""
    import torch.distributed as dist

    from mmseg_actcomp.hooks.activation_compression_hook import costs_of_every_rank
    from mmseg_actcomp.ops.budget import Cost
    dist.init_process_group('gloo', init_method=f'tcp://127.0.0.1:{port}', rank=rank, world_size=2)
    try:
        table = {'a': [Cost(0.5, 100 + 50 * rank, 1.0 + rank), Cost(0.9, 300 - rank, 0.5 * rank)]}
        torch.save(costs_of_every_rank(table), osp.join(folder, f'{rank}.pt'))
    finally:
        dist.destroy_process_group()


def test_cost_tables_are_combined_across_ranks(tmp_path):
    """Bytes the largest of the ranks', errors their mean: every rank gets the same table, hence the same
    choice."""
    import torch.multiprocessing as mp

    from mmseg_actcomp.ops.budget import Cost
    mp.spawn(_combine_on_rank, args=(str(tmp_path), 29553), nprocs=2, join=True)
    tables = [torch.load(tmp_path / f'{rank}.pt', weights_only=False) for rank in (0, 1)]
    assert tables[0] == tables[1] == {'a': [Cost(0.5, 150, 1.5), Cost(0.9, 300, 0.25)]}
