from .checkpoint import allow_mmengine_checkpoints, mmengine_checkpoint_globals
from .mmseg_tools import explain_error, find_mmseg_tool, run_mmseg_tool

__all__ = ['allow_mmengine_checkpoints', 'explain_error', 'find_mmseg_tool', 'mmengine_checkpoint_globals',
           'run_mmseg_tool']
