"""mmseg's own tools/train.py, for users without an mmseg checkout: same arguments, same behaviour, after
the config's checks (tools/mmseg_tool.py).

    python tools/train.py CONFIG [--work-dir DIR] [--resume] [--amp] [--cfg-options ...] [--launcher ...]
"""
from mmseg_tool import run_mmseg_tool

if __name__ == '__main__':
    run_mmseg_tool('train.py')
