from .mmseg_tools import explain_error, find_mmseg_tool, run_mmseg_tool

__all__ = ['explain_error', 'find_mmseg_tool', 'run_mmseg_tool']
