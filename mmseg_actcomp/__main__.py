"""``python -m mmseg_actcomp {train,test} CONFIG ...``: mmseg's tools/train.py or tools/test.py, same arguments,
with this plugin imported before the config is read, which a config inheriting ``mmseg_actcomp::...`` needs
(registry.py says why). The same as this repo's tools/train.py and tools/test.py, for a pip install."""
import sys

from .utils import run_mmseg_tool

TOOLS = ('train', 'test')

if len(sys.argv) < 2 or sys.argv[1] not in TOOLS:
    sys.exit(f"usage: python -m mmseg_actcomp {{{','.join(TOOLS)}}} CONFIG [arguments of mmseg's tools/<tool>.py]")
run_mmseg_tool(f'{sys.argv[1]}.py', sys.argv[2:])
