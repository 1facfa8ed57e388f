"""mmseg's own tools/test.py, for users without an mmseg checkout: same arguments, same behaviour.

    python tools/test.py CONFIG CHECKPOINT [--work-dir DIR] [--cfg-options ...]
"""
from mmseg_actcomp.utils import run_mmseg_tool

if __name__ == '__main__':
    run_mmseg_tool('test.py')
