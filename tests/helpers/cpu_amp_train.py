"""Run mmseg's packaged tools/train.py with mmengine's AmpOptimWrapper allowed on the CPU.

AmpOptimWrapper asserts a GPU/NPU/MLU/MUSA device in its constructor, although its autocast (bf16 on the
CPU) and GradScaler (disabled without CUDA, which bf16 does not need) run on the CPU. This lifts only
that guard, so the bf16 AMP path of training with compressed layers can be tested here. Usage:
``python THIS CONFIG --cfg-options optim_wrapper.type=AmpOptimWrapper optim_wrapper.dtype=bfloat16``.
"""
import mmengine.optim.optimizer.amp_optimizer_wrapper as amp_optimizer_wrapper

from mmseg_actcomp.utils import run_mmseg_tool

if __name__ == '__main__':
    amp_optimizer_wrapper.is_cuda_available = lambda: True
    run_mmseg_tool('train.py')
