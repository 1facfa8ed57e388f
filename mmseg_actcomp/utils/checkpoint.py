"""Let mmengine's own checkpoints load under torch's safe loader (``torch.load(weights_only=True)``).

Since torch 2.6, ``torch.load`` unpickles only allow-listed types by default. mmengine 0.10.7 loads its
checkpoints (``load_from``, ``--resume``, mmseg's ``tools/test.py``) with that default, and the
checkpoints it writes hold a message-hub ``HistoryBuffer`` and numpy arrays and scalars, so they fail.
Rather than turning the safe loader off for every file of the process
(``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1``, which would also trust a checkpoint from the internet to run
code), importing this plugin allow-lists exactly the globals those checkpoints use. Trusted from then
on, in any file: these numpy array/scalar/dtype constructors, mmengine's ``HistoryBuffer``, and the
builtin ``getattr`` (numpy pickles its dtypes through it; it is the broadest of them).
"""
import builtins

import numpy as np
import torch
from mmengine.logging.history_buffer import HistoryBuffer


def mmengine_checkpoint_globals():
    """The globals a checkpoint written by mmengine's CheckpointHook pickles (numpy 2.x names)."""
    multiarray = np._core.multiarray if hasattr(np, '_core') else np.core.multiarray
    return [HistoryBuffer, multiarray._reconstruct, multiarray.scalar, np.ndarray, np.dtype,
            type(np.dtype(np.float64)), type(np.dtype(np.float32)), type(np.dtype(np.int64)),
            builtins.getattr]


def allow_mmengine_checkpoints():
    """Allow-list :func:`mmengine_checkpoint_globals` for ``torch.load(weights_only=True)``."""
    torch.serialization.add_safe_globals(mmengine_checkpoint_globals())
