# mmseg's runtime plus the plugin import, so that a compression hook line works in every config here.
_base_ = 'mmseg::_base_/default_runtime.py'
custom_imports = dict(imports=['mmseg_actcomp'], allow_failed_imports=False)
