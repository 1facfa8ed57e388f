"""Run mmseg's packaged tools/train.py in one process of a CPU (gloo) torch.distributed job.

mmengine's pytorch launcher calls ``torch.cuda.set_device`` before it opens the process group, which a
CPU-only torch cannot do; it skips its own set-up when a group already exists, so open it here first.
Used by the DDP test as ``python -m torch.distributed.run --nproc_per_node=2 THIS CONFIG --launcher
pytorch ...`` (with ``model_wrapper_cfg.device_ids=None``: DDP on CPU takes no device ids).
"""
import importlib.util
import os.path as osp

import torch.distributed as dist

# tools/mmseg_tool.py (tools/ is not a package): the runner behind tools/train.py
_spec = importlib.util.spec_from_file_location(
    'mmseg_tool', osp.join(osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))), 'tools', 'mmseg_tool.py'))
mmseg_tool = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(mmseg_tool)

if __name__ == '__main__':
    dist.init_process_group(backend='gloo')
    try:
        mmseg_tool.run_mmseg_tool('train.py')
    finally:
        # Leave together and close gloo's threads before the interpreter exits: left to shutdown, one
        # rank was seen aborting ("terminate called without an active exception", exit -6) after a
        # finished run.
        dist.barrier()
        dist.destroy_process_group()
