"""mmseg's side of the plugin outside a runner: a config's checks, segmentor, batches, hook surgery and
loss, and the measurement of its training memory (what ``tools/measure_activation_memory.py`` and the
benchmarks run)."""
from .checks import (CheckpointNotFoundError, ConfigError, DatasetNotFoundError, HookConfigError,
                     PluginNotImportedError, UnknownTypeError, check_config)
from .segmentor import MeasureError, measure_config

__all__ = ['CheckpointNotFoundError', 'ConfigError', 'DatasetNotFoundError', 'HookConfigError',
           'MeasureError', 'PluginNotImportedError', 'UnknownTypeError', 'check_config', 'measure_config']
