"""The demo's last two stages: the predictions picture and the short summary ending in 'before X, after Y'."""
import json
import os
import os.path as osp

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import REPO, build_model_from_config, run_tool

pytestmark = pytest.mark.slow  # subprocesses and training runs: make test-fast skips them

CONFIG = osp.join(REPO, 'configs', 'sample', 'deeplabv3_r18-d8_hosvd-0.8-10L_1xb2-20it_vocsample-128x128.py')


@pytest.fixture(scope='module')
def checkpoints(sample_workspace):
    """Two checkpoints of the sample R18 model, random-init with different seeds."""
    paths = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        _, model = build_model_from_config(CONFIG)
        model.init_weights()
        path = sample_workspace / f'demo_tools_{seed}.pth'
        torch.save({'state_dict': model.state_dict(), 'meta': {}}, path)
        paths.append(str(path))
    return paths


def test_predictions_picture(sample_workspace, checkpoints, tmp_path):
    out = tmp_path / 'pictures' / 'predictions.png'
    done = run_tool([osp.join(REPO, 'tools', 'analysis_tools', 'show_predictions.py'), CONFIG, *checkpoints,
                     '--titles', 'before', 'after', '--num-images', '3', '--out', out], cwd=sample_workspace)
    assert done.returncode == 0, done.stdout[-3000:]
    assert 'predictions of 2 checkpoints on 3 val images' in done.stdout
    picture = np.asarray(Image.open(out))
    assert picture.shape[0] > 300 and picture.shape[1] > 600  # 3 rows of image | truth | before | after


def test_predictions_picture_names_bad_arguments(sample_workspace, checkpoints):
    done = run_tool([osp.join(REPO, 'tools', 'analysis_tools', 'show_predictions.py'), CONFIG, *checkpoints,
                     '--titles', 'only-one'], cwd=sample_workspace)
    assert done.returncode == 2 and '--titles gives 1 titles for 2 checkpoints' in done.stdout
    done = run_tool([osp.join(REPO, 'tools', 'analysis_tools', 'show_predictions.py'), CONFIG, 'nope.pth'],
                    cwd=sample_workspace)
    assert done.returncode == 2 and 'no such file: nope.pth' in done.stdout


def _stage(work, name, miou):
    """An mmseg work dir whose run validated with ``miou`` (mmengine's vis_data/scalars.json)."""
    folder = work / name / '20261130_000000' / 'vis_data'
    folder.mkdir(parents=True)
    (folder / 'scalars.json').write_text(json.dumps({'aAcc': 90.0, 'mIoU': miou, 'step': 10}) + '\n')


def test_summary_ends_with_before_and_after(sample_workspace, tmp_path):
    from mmseg_actcomp.apis import measure_config
    work = tmp_path / 'demo'
    for name, miou in (('start', 61.5), ('calibrate', 27.25), ('finetune', 44.0)):
        _stage(work, name, miou)
    cwd = os.getcwd()
    os.chdir(sample_workspace)
    try:
        report = measure_config(CONFIG, num_batches=1, progress=False)
    finally:
        os.chdir(cwd)
    (work / 'memory').mkdir()
    (work / 'memory' / 'memory.json').write_text(json.dumps(report))
    Image.new('RGB', (8, 8)).save(work / 'predictions.png')
    docs = tmp_path / 'docs'
    docs.mkdir()
    done = run_tool([osp.join(REPO, 'tools', 'analysis_tools', 'demo_summary.py'), work, '--seconds', '300',
                     '--docs', docs / 'demo'], cwd=REPO)
    assert done.returncode == 0, done.stdout[-3000:]
    lines = done.stdout.strip().splitlines()
    assert lines[-1] == 'mIoU on the target val split: before 27.25, after 44.00'
    assert '+16.75 points' in done.stdout and 'It took 5.0 min' in done.stdout
    assert 'in the fine-tuned region' in done.stdout  # the memory table
    page = (docs / 'demo.md').read_text()
    assert page.startswith('# ') and f'Written by `make demo DEMO_DOCS={docs / "demo"}`' in page
    assert '](demo_predictions.png)' in page and (docs / 'demo_predictions.png').is_file()


def test_summary_of_an_unfinished_run_says_what_to_do(tmp_path):
    done = run_tool([osp.join(REPO, 'tools', 'analysis_tools', 'demo_summary.py'), tmp_path], cwd=REPO)
    assert done.returncode == 1 and 'does not hold a finished demo run' in done.stdout
