"""``python -m mmseg_actcomp {train,test} CONFIG ...``: this repo's tools/train.py or tools/test.py (mmseg's
own tool after the config's checks), with this plugin imported before the config is read, which a config
inheriting ``mmseg_actcomp::...`` needs (registry.py says why). For a pip install, whose wheel ships the
tools under ``mmseg_actcomp/.mim/tools`` as OpenMMLab packages do; in a checkout, the repo's tools/."""
import os.path as osp
import runpy
import sys

import mmseg_actcomp  # noqa: F401  (registers the config scope before the tool reads the config)

TOOLS = ('train', 'test')


def tools_dir() -> str:
    """``.mim/tools`` of an installed wheel, else the checkout's ``tools/``."""
    package = osp.dirname(osp.abspath(__file__))
    shipped = osp.join(package, '.mim', 'tools')
    return shipped if osp.isdir(shipped) else osp.join(osp.dirname(package), 'tools')


if __name__ == '__main__':
    if len(sys.argv) < 2 or sys.argv[1] not in TOOLS:
        sys.exit(f"usage: python -m mmseg_actcomp {{{','.join(TOOLS)}}} CONFIG [arguments of mmseg's "
                 'tools/<tool>.py]')
    tool = osp.join(tools_dir(), f'{sys.argv[1]}.py')
    if not osp.isfile(tool):
        sys.exit(f'{tool} does not exist: this install ships no tools (reinstall the wheel, or run from a '
                 'checkout)')
    sys.path.insert(0, osp.dirname(tool))  # the tool imports its sibling mmseg_tool.py
    sys.argv = [tool] + sys.argv[2:]
    runpy.run_path(tool, run_name='__main__')
