"""The released (official) CMT checkpoints: where they are, and their key
names mapped to mmcmt's.

The released ImageNet checkpoints (``cmt_tiny.pth``, ``cmt_xs.pth``,
``cmt_small.pth``, ``cmt_base.pth``) name their tensors after the original
code (``stem_conv1``, ``blocks_a.0.attn.q``, ``_fc`` ...). mmcmt names them
after the architecture (``stem.0.conv``, ``stages.0.blocks.0.attn.q``,
``head.conv`` ...), stores the key and value projections of attention as one
``kv`` linear layer and the 1x1 convolutions of the IRFFN as linear layers.
:func:`convert_official_cmt` maps one layout to the other; the models apply
it in a load-state-dict pre-hook, so official files load through every path
(``init_cfg``, ``load_from``, plain ``load_state_dict``).
"""
import re
from collections import OrderedDict
from typing import Dict, Iterable, Optional

import torch

#: The release of the official CMT code with the ImageNet weights.
RELEASE_URL = ('https://github.com/ggjy/CMT.pytorch/releases/download/'
               'release-v1')
#: The released file of each arch (the configs name them by URL).
RELEASED_FILES = dict(
    tiny='cmt_tiny.pth',
    xs='cmt_xs.pth',
    small='cmt_small.pth',
    base='cmt_base.pth')
STAGE_NAMES = 'abcd'
_OFFICIAL_KEY = re.compile(
    r'^(stem_(conv|norm)\d|patch_embed_[abcd]\.|blocks_[abcd]\.|'
    r'relative_pos_[abcd]$|_fc\.|_bn\.)')
_HEAD = {'_fc': 'head.conv', '_bn': 'head.norm', 'head': 'head.fc'}
_BLOCK = {
    'proj': 'lpu',
    'norm1': 'norm1',
    'norm2': 'norm2',
    'attn.q': 'attn.q',
    'attn.proj': 'attn.proj',
    'attn.sr.0': 'attn.sr.conv',
    'attn.sr.1': 'attn.sr.norm',
    'mlp.conv1.0': 'ffn.fc1',
    'mlp.conv1.2': 'ffn.norm1',
    'mlp.proj': 'ffn.dwconv',
    'mlp.proj_bn': 'ffn.norm2',
    'mlp.conv2.0': 'ffn.fc2',
    'mlp.conv2.1': 'ffn.norm3',
}
# Official key and value projections, fused into one kv layer.
_KV_PARAMS = ('attn.k.weight', 'attn.k.bias', 'attn.v.weight', 'attn.v.bias')
# Official 1x1 convolutions that mmcmt runs as linear layers on NHWC maps.
_AS_LINEAR = ('ffn.fc1.weight', 'ffn.fc2.weight')


def is_official_cmt(keys: Iterable[str]) -> bool:
    """Whether state-dict keys are in the layout of the released files."""
    return any(_OFFICIAL_KEY.match(k) for k in keys)


def convert_official_cmt(
        state_dict: Dict[str,
                         torch.Tensor]) -> 'OrderedDict[str, torch.Tensor]':
    """Map a released CMT state dict to the :class:`CMTClassifier` layout.

    Backbone tensors come out under ``backbone.``, the classification head
    under ``head.``. Keys that are not CMT's are returned unchanged, so that
    a loader can report them as unexpected.
    """
    out = OrderedDict()
    kv = {}
    for key, value in state_dict.items():
        new = _convert_key(key)
        if new is None:
            out[key] = value
        elif new.endswith(_KV_PARAMS):
            kv[new] = value
        else:
            if new.endswith(_AS_LINEAR) and value.dim() == 4:
                value = value.flatten(1)
            out[new] = value
    for key in list(kv):
        if '.attn.k.' not in key:
            continue
        v_key = key.replace('.attn.k.', '.attn.v.')
        fused = key.replace('.attn.k.', '.attn.kv.')
        if v_key in kv:  # official order: keys first, then values
            out[fused] = torch.cat([kv.pop(key), kv.pop(v_key)], dim=0)
    out.update(kv)  # an unpaired k or v: left for the loader to report
    return out


def to_official_cmt(
        state_dict: Dict[str,
                         torch.Tensor]) -> 'OrderedDict[str, torch.Tensor]':
    """Map a :class:`CMTClassifier` state dict to the released layout: the
    inverse of :func:`convert_official_cmt`, so that a classifier trained
    with mmcmt is saved as the released ImageNet checkpoints are.

    Raises:
        KeyError: a key that is not the classifier's (a detector's ``neck.``
            for example), named in the message.
    """
    out = OrderedDict()
    for key, value in state_dict.items():
        official = _official_key(key)
        if official is None:
            raise KeyError(f'{key!r} is not a key of a CMTClassifier state '
                           f'dict (backbone.* and head.*)')
        if key.endswith(_AS_LINEAR):
            value = value[:, :, None, None]  # back to a 1x1 convolution
        if '.attn.kv.' in key:  # official order: keys first, then values
            k, v = value.chunk(2, dim=0)
            out[official.replace('.attn.kv.', '.attn.k.')] = k
            out[official.replace('.attn.kv.', '.attn.v.')] = v
        else:
            out[official] = value
    return out


def pop_official_cmt(
        state_dict: Dict[str, torch.Tensor],
        prefix: str = '') -> Optional['OrderedDict[str, torch.Tensor]']:
    """For load-state-dict pre-hooks: when the keys under ``prefix`` are in
    the released layout, remove them from ``state_dict`` and return them
    converted (:func:`convert_official_cmt`, without ``prefix``); else None.
    """
    own = {k[len(prefix):]: k for k in state_dict if k.startswith(prefix)}
    if not is_official_cmt(own):
        return None
    return convert_official_cmt({
        k: state_dict.pop(full)
        for k, full in own.items()
    })


def _convert_key(key: str) -> Optional[str]:
    m = re.match(r'^stem_(conv|norm)(\d)\.(.+)$', key)
    if m:
        kind = 'conv' if m[1] == 'conv' else 'norm'
        return f'backbone.stem.{int(m[2]) - 1}.{kind}.{m[3]}'
    m = re.match(r'^patch_embed_([abcd])\.(.+)$', key)
    if m:
        return f'backbone.stages.{STAGE_NAMES.index(m[1])}.downsample.{m[2]}'
    m = re.match(r'^relative_pos_([abcd])$', key)
    if m:
        stage = STAGE_NAMES.index(m[1])
        return f'backbone.stages.{stage}.relative_position_bias'
    m = re.match(r'^blocks_([abcd])\.(\d+)\.(.+)\.(\w+)$', key)
    if m:
        stage, block, module, param = m.groups()
        if module in ('attn.k', 'attn.v'):
            new_module = module
        elif module in _BLOCK:
            new_module = _BLOCK[module]
        else:
            return None
        return (f'backbone.stages.{STAGE_NAMES.index(stage)}.blocks.{block}.'
                f'{new_module}.{param}')
    m = re.match(r'^(_fc|_bn|head)\.(\w+)$', key)
    if m:
        return f'{_HEAD[m[1]]}.{m[2]}'
    return None


_OFFICIAL_BLOCK = {new: old for old, new in _BLOCK.items()}
_OFFICIAL_BLOCK['attn.kv'] = 'attn.kv'  # split by to_official_cmt
_OFFICIAL_HEAD = {new: old for old, new in _HEAD.items()}


def _official_key(key: str) -> Optional[str]:
    """The released name of an mmcmt key (:func:`_convert_key` reversed)."""
    m = re.match(r'^backbone\.stem\.(\d)\.(conv|norm)\.(.+)$', key)
    if m:
        return f'stem_{m[2]}{int(m[1]) + 1}.{m[3]}'
    m = re.match(r'^backbone\.stages\.(\d)\.(.+)$', key)
    if m:
        stage, rest = STAGE_NAMES[int(m[1])], m[2]
        if rest == 'relative_position_bias':
            return f'relative_pos_{stage}'
        if rest.startswith('downsample.'):
            return f'patch_embed_{stage}.{rest[len("downsample."):]}'
        m = re.match(r'^blocks\.(\d+)\.(.+)\.(\w+)$', rest)
        if m and m[2] in _OFFICIAL_BLOCK:
            return f'blocks_{stage}.{m[1]}.{_OFFICIAL_BLOCK[m[2]]}.{m[3]}'
        return None
    m = re.match(r'^(head\.\w+)\.(\w+)$', key)
    if m and m[1] in _OFFICIAL_HEAD:
        return f'{_OFFICIAL_HEAD[m[1]]}.{m[2]}'
    return None
