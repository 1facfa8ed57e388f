"""The ``mmseg_actcomp`` scope, which lets a config inherit this package's configs after a pip install:

    _base_ = ['mmseg_actcomp::deeplabv3/deeplabv3_mv2-d8_hosvd-0.8-10L_1xb8-20k_voc12aug-512x512.py']

mmengine 0.10.7 takes such a base in two steps, and each needs something from this module:

1. ``mmengine.config.utils._get_package_and_cfg_path`` accepts only the scopes listed in its
   ``MODULE2PACKAGE`` table (OpenMMLab's own packages; open-mmlab/mmengine#1410 asks for more).
   :func:`register_config_scope` (run when the package is imported) adds ``mmseg_actcomp`` ->
   ``mmseg-actcomp``; ``mmengine.utils.get_installed_path`` then finds the installed
   ``site-packages/mmseg_actcomp`` and ``_get_external_cfg_base_path`` reads ``.mim/configs/<path>`` there,
   which the wheel ships (setup.py). The table is read while the config's bases are loaded, before its
   ``custom_imports``, so the package must be imported first: ``python -m mmseg_actcomp train`` (or this
   repo's tools/train.py) does it; mmseg's own tools/train.py cannot.
2. Every dict with a ``type`` that such a base brings in without a scope of its own (the runtime, the
   schedule, the hooks; ``mmseg::`` bases bring ``mmseg``'s) gets ``_scope_='mmseg_actcomp'`` and is built
   from the registries of that scope. The registries below are that scope: one child of each of mmseg's,
   holding nothing, so every type resolves as it does under mmseg's scope.
"""
import mmseg.registry
from mmengine.config.utils import MODULE2PACKAGE
from mmengine.registry import Registry

SCOPE = 'mmseg_actcomp'  # the import name, as mmseg's scope is `mmseg`
DISTRIBUTION = 'mmseg-actcomp'  # the name pip installs (setup.py)


def register_config_scope():
    """Let ``Config.fromfile`` resolve ``mmseg_actcomp::<path>`` bases (step 1 above)."""
    MODULE2PACKAGE.setdefault(SCOPE, DISTRIBUTION)


# HOOKS, MODELS, LOOPS, ...: the names of mmseg.registry, each a child of mmseg's registry of that name.
# A child looks a type up in its parents' tables without making them import their modules, so its
# `locations` are this package (its types) and the modules mmseg's registry would import (mmseg's types).
for _name, _parent in vars(mmseg.registry).items():
    if isinstance(_parent, Registry):
        globals()[_name] = Registry(_parent.name, parent=_parent, scope=SCOPE,
                                    locations=[SCOPE] + list(_parent._locations))
