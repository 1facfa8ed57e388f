"""Run mmseg's packaged tools/train.py with mmengine's AmpOptimWrapper allowed on the CPU.

AmpOptimWrapper asserts a GPU/NPU/MLU/MUSA device in its constructor, although its autocast (bf16 on the
CPU) and GradScaler (disabled without CUDA, which bf16 does not need) run on the CPU. This lifts only
that guard, so the bf16 AMP path of training with compressed layers can be tested here. Usage:
``python THIS CONFIG --cfg-options optim_wrapper.type=AmpOptimWrapper optim_wrapper.dtype=bfloat16``.
"""
import importlib.util
import os.path as osp

import mmengine.optim.optimizer.amp_optimizer_wrapper as amp_optimizer_wrapper

# tools/mmseg_tool.py (tools/ is not a package): the runner behind tools/train.py
_spec = importlib.util.spec_from_file_location(
    'mmseg_tool', osp.join(osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))), 'tools', 'mmseg_tool.py'))
mmseg_tool = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(mmseg_tool)

if __name__ == '__main__':
    amp_optimizer_wrapper.is_cuda_available = lambda: True
    mmseg_tool.run_mmseg_tool('train.py')
