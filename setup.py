"""mmseg-actcomp: activation compression (SVD / HOSVD) for fine-tuning mmsegmentation models."""
import os.path as osp

from setuptools import find_packages, setup


def get_version():
    scope = {}
    with open(osp.join(osp.dirname(__file__), 'mmseg_actcomp', 'version.py')) as f:
        exec(f.read(), scope)
    return scope['__version__']


def parse_requirements(fname):
    """Lines of a requirements file, comments and pip options dropped."""
    with open(osp.join(osp.dirname(__file__), 'requirements', fname)) as f:
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
    python_requires='>=3.8',
    install_requires=parse_requirements('runtime.txt'),
    extras_require={'tests': parse_requirements('tests.txt')},
    license='Apache License 2.0',
)
