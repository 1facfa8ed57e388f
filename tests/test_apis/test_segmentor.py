"""mmseg_actcomp.apis.segmentor: loading weights says what went wrong and what the user may do."""
import pytest
import torch
from torch import nn

from mmseg_actcomp.apis.segmentor import MeasureError, load_weights


class Untrusted:
    """A global outside torch's weights_only allow-list (and ours)."""


def test_a_checkpoint_torch_refuses_to_unpickle_names_the_global_and_the_way_out(tmp_path):
    path = tmp_path / 'untrusted.pth'
    torch.save({'state_dict': {}, 'meta': Untrusted()}, path)
    with pytest.raises(MeasureError, match='TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1') as info:
        load_weights(nn.Conv2d(1, 1, 1), str(path))
    assert str(path) in str(info.value) and 'Untrusted' in str(info.value)


def test_another_load_failure_has_no_unpickling_hint(tmp_path):
    path = tmp_path / 'garbage.pth'
    path.write_bytes(b'not a checkpoint')
    with pytest.raises(MeasureError) as info:
        load_weights(nn.Conv2d(1, 1, 1), str(path))
    assert 'could not load checkpoint' in str(info.value) and 'WEIGHTS_ONLY' not in str(info.value)


def test_a_second_hook_entry_is_a_measure_error():
    from mmengine.config import Config

    from mmseg_actcomp.apis.segmentor import compression_hook_cfg
    entry = dict(type='ActivationCompressionHook', num_layers=2)
    assert compression_hook_cfg(Config(dict(custom_hooks=[entry]))) == entry
    assert compression_hook_cfg(Config(dict(custom_hooks=[]))) is None
    with pytest.raises(MeasureError, match='custom_hooks: ActivationCompressionHook is given 2 times'):
        compression_hook_cfg(Config(dict(custom_hooks=[entry, entry])))
    with pytest.raises(MeasureError, match="custom_hooks: .*method='tucker' is not allowed"):
        compression_hook_cfg(Config(dict(custom_hooks=[dict(entry, method='tucker')])))
