"""tools/zoo_sweep.py on the families the paper's four do not cover: mmseg's own configs, the hook's
config line, one training step whose weight gradients reach every chosen layer, less kept than vanilla."""
import pytest

from conftest import load_script

zoo_sweep = load_script('tools/zoo_sweep.py')

#: a module tree unlike the four named models each: separable ASPP, HRNet's Sequential(conv, bn), a
#: cascade (OCRNet), transposed/upsampling convs (UNet), a list of auxiliary heads (BiSeNetV1), convs the
#: model freezes itself (EMANet), a tensor mode mmseg cannot run (PointRend), a head needing a large input
#: (LRASPP)
FAMILIES = ['deeplabv3plus', 'hrnet', 'ocrnet', 'unet', 'bisenetv1', 'emanet', 'point_rend', 'mobilenet_v3']


@pytest.mark.slow
@pytest.mark.parametrize('family', FAMILIES)
def test_the_hook_trains_the_family_and_keeps_less(family):
    row = zoo_sweep.sweep_family(family, size=64 if family in ('hrnet', 'unet') else 128, batch=2)
    assert row['ok'], row.get('traceback')
    assert len(row['layers']) == 10
    assert 0 < row['region_hosvd_bytes'] < row['region_vanilla_bytes']
    assert 'CompressedConv2dFunctionBackward' in row['lean_ops'] and 'ReluBackward0' not in row['lean_ops']
    if family == 'emanet':  # EMANet freezes its bases' conv: not chosen
        assert 'decode_head.ema_mid_conv.conv' not in row['layers']


def test_the_markdown_says_what_failed():
    rows = [dict(family='x', config='x/x.py', ok=False, seconds=1.0, error='RuntimeError: a | b'),
            dict(family='y', config='y/y.py', ok=True, seconds=2.0, input='2x3x64x64', layers=['a', 'b'],
                 region_vanilla_bytes=4 * 2**20, region_hosvd_bytes=2**20)]
    text = zoo_sweep.markdown(rows, 'python tools/zoo_sweep.py', 64, 2)
    assert '1 of 2 families pass' in text and '| x | `x/x.py` |  | NO |' in text and 'RuntimeError: a / b' in text
    assert '| y | `y/y.py` | 2x3x64x64 | yes | 2: `a` ... `b` | 4.00 | 1.00 | 4.0x | 2 |  |' in text
