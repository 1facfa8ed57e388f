"""mmseg-actcomp: activation compression (SVD / HOSVD) for fine-tuning mmsegmentation models."""
import os
import os.path as osp
import shutil

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

# Shipped inside the package as mmseg_actcomp/.mim/<name>, where mmengine looks for the configs a user
# inherits with `_base_ = ['mmseg_actcomp::...']`, as mmsegmentation ships its own (mmseg/.mim/). The
# repo's copies stay the only ones: they are copied into the build, never into the source tree.
MIM_FILES = ('configs', 'tools', 'model-index.yml')
HERE = osp.dirname(osp.abspath(__file__))


class BuildPyWithMim(build_py):
    """build_py that also copies MIM_FILES into ``<build_lib>/mmseg_actcomp/.mim/`` (wheels, plain
    installs). An editable install skips it: mmengine finds packaged configs next to the dist-info in
    site-packages, which an editable install does not have, so the checkout's configs/ are used by path."""

    def run(self):
        super().run()
        if getattr(self, 'editable_mode', False):
            return
        mim = osp.join(self.build_lib, 'mmseg_actcomp', '.mim')
        if osp.isdir(mim):
            shutil.rmtree(mim)
        os.makedirs(mim)
        for name in MIM_FILES:
            source, target = osp.join(HERE, name), osp.join(mim, name)
            if osp.isdir(source):
                shutil.copytree(source, target, ignore=shutil.ignore_patterns('__pycache__', '*.pyc'))
            else:
                shutil.copyfile(source, target)


def get_version():
    scope = {}
    with open(osp.join(HERE, 'mmseg_actcomp', 'version.py')) as f:
        exec(f.read(), scope)
    return scope['__version__']


def parse_requirements(fname):
    """Lines of a requirements file, comments and pip options dropped."""
    with open(osp.join(HERE, 'requirements', fname)) as f:
        return [line.split('#')[0].strip() for line in f
                if line.split('#')[0].strip() and not line.startswith('-')]


setup(
    name='mmseg-actcomp',
    version=get_version(),
    description='Activation map compression (SVD/HOSVD) for memory-light fine-tuning '
                'of mmsegmentation models',
    long_description=open('README.md').read() if osp.exists('README.md') else '',
    long_description_content_type='text/markdown',
    packages=find_packages(include=['mmseg_actcomp', 'mmseg_actcomp.*']),
    cmdclass={'build_py': BuildPyWithMim},
    python_requires='>=3.8',
    install_requires=parse_requirements('runtime.txt'),
    extras_require={'tests': parse_requirements('tests.txt'), 'zoo': parse_requirements('zoo.txt')},
    license='Apache License 2.0',
)
