"""mmseg's side of the plugin outside a runner: a config's segmentor, batches, hook surgery and loss, and
the measurement of its training memory (what ``tools/measure_activation_memory.py`` and the benchmarks
run)."""
from .segmentor import MeasureError, measure_config

__all__ = ['MeasureError', 'measure_config']
