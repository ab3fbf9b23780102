"""Reading CMT checkpoints and mapping the released (official) key names.

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
import os
import re
from collections import OrderedDict
from typing import Dict, Iterable, Optional

import torch
from mmengine.logging import print_log

from ...safe_load import is_url, load_file, load_url

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


def read_checkpoint(
        path: str,
        prefix: Optional[str] = None) -> 'OrderedDict[str, torch.Tensor]':
    """Read a state dict from a released or an mmcmt/mmengine checkpoint.

    Accepts the state dict at the top level or under ``model`` or
    ``state_dict``, strips a ``module.`` prefix (DDP) and, when given,
    keeps only the keys under ``prefix`` (for example ``backbone.`` of a
    detector checkpoint) with that prefix removed. Files are read by
    :func:`mmcmt.safe_load.load_file` (``torch.load(weights_only=True)``,
    one-line errors for untrusted or corrupt files); http(s) URLs are
    downloaded once into torch's hub cache by
    :func:`mmcmt.safe_load.load_url` and read the same way.
    """
    if is_url(path):
        checkpoint = load_url(path)
    else:
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f'CMT checkpoint not found: {path!r}. The released ImageNet '
                f'weights are {RELEASE_URL}/cmt_tiny.pth (cmt_xs.pth, '
                f'cmt_small.pth, cmt_base.pth): name the URL as the '
                f'checkpoint, or download the file to that path, or set '
                f'init_cfg=None to start from random weights.')
        checkpoint = load_file(path)
    state_dict = checkpoint
    for wrapper in ('model', 'state_dict'):
        if isinstance(state_dict, dict) and isinstance(
                state_dict.get(wrapper), dict):
            state_dict = state_dict[wrapper]
            break
    if not isinstance(state_dict, dict) or not all(
            isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise ValueError(
            f'{path!r} holds no state dict: expected a mapping of names to '
            f'tensors at the top level or under "model" or "state_dict".')
    state_dict = OrderedDict(
        (k[len('module.'):] if k.startswith('module.') else k, v)
        for k, v in state_dict.items())
    if prefix:
        state_dict = OrderedDict((k[len(prefix):], v)
                                 for k, v in state_dict.items()
                                 if k.startswith(prefix))
        if not state_dict:
            raise ValueError(f'{path!r} has no keys under prefix {prefix!r}')
    return state_dict


def load_checked(module: torch.nn.Module, state_dict: Dict[str, torch.Tensor],
                 source: str) -> None:
    """Load ``state_dict`` into ``module``, failing on missing keys.

    Missing keys are an error (a backbone that silently keeps random weights
    is worse than one that fails); unexpected keys are reported as a warning.
    Both are listed in one message.
    """
    result = module.load_state_dict(state_dict, strict=False)
    problems = []
    if result.missing_keys:
        problems.append(f'missing keys ({len(result.missing_keys)}): '
                        f'{_summarise(result.missing_keys)}')
    if result.unexpected_keys:
        problems.append(f'unexpected keys ({len(result.unexpected_keys)}): '
                        f'{_summarise(result.unexpected_keys)}')
    if not problems:
        print_log(f'{type(module).__name__}: loaded {source}', 'current')
        return
    message = (f'{type(module).__name__} from {source}: ' +
               '; '.join(problems))
    if result.missing_keys:
        raise RuntimeError(
            message + '. Is this a CMT checkpoint of the same arch? The '
            'released files and mmcmt-converted files are both accepted.')
    print_log(message + ' (ignored)', 'current', level=30)


def _summarise(keys, limit=8):
    shown = ', '.join(keys[:limit])
    return shown + (f', ... (+{len(keys) - limit} more)'
                    if len(keys) > limit else '')
