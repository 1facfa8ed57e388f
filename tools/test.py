"""mmseg's own tools/test.py, for users without an mmseg checkout: same arguments, same behaviour, after
the config's checks (tools/mmseg_tool.py).

    python tools/test.py CONFIG CHECKPOINT [--work-dir DIR] [--cfg-options ...]
"""
from mmseg_tool import run_mmseg_tool

if __name__ == '__main__':
    run_mmseg_tool('test.py')
