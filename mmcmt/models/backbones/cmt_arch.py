"""Which CMT arch a state dict was saved from, read from its shapes, so that
a checkpoint of another arch fails with one line before anything of it is
resized or loaded (the released ``cmt_xs.pth`` was once a copy of
``cmt_small.pth``; loading it gave hundreds of size mismatches)."""
import re
from typing import Dict, List, Mapping

import torch

from ...checkpoint import ArchMismatchError

#: What the shapes of a state dict tell of its arch, per stage.
FIELDS = ('embed_dims', 'depths', 'num_heads', 'hidden_dims')
_STAGE_KEY = re.compile(r'^stages\.(\d+)\.(.+)$')


def shape_signature(settings: Mapping) -> Dict[str, object]:
    """What a CMT of these arch settings (``CMT.parse_arch``) holds:
    ``stem_channels`` and, per stage, ``embed_dims``, ``depths``,
    ``num_heads`` and the IRFFN's ``hidden_dims``."""
    return dict(
        stem_channels=settings['stem_channels'],
        embed_dims=list(settings['embed_dims']),
        depths=list(settings['depths']),
        num_heads=list(settings['num_heads']),
        hidden_dims=[
            int(d * r)
            for d, r in zip(settings['embed_dims'], settings['mlp_ratios'])
        ])


def state_dict_signature(state_dict: Mapping[str, torch.Tensor],
                         prefix: str = '',
                         num_stages: int = 4) -> Dict[str, object]:
    """:func:`shape_signature` read from a state dict in mmcmt's layout
    (keys under ``prefix``); what it does not hold is None."""
    stem = state_dict.get(prefix + 'stem.0.conv.weight')
    signature = dict(
        stem_channels=None if stem is None else stem.shape[0],
        **{field: [None] * num_stages
           for field in FIELDS})
    for key, value in state_dict.items():
        match = _STAGE_KEY.match(
            key[len(prefix):]) if key.startswith(prefix) else None
        if not match or int(match[1]) >= num_stages:
            continue
        stage, rest = int(match[1]), match[2]
        if rest == 'downsample.proj.weight':
            signature['embed_dims'][stage] = value.shape[0]
        elif rest == 'relative_position_bias':
            signature['num_heads'][stage] = value.shape[0]
        elif rest.startswith('blocks.'):
            block = int(rest.split('.')[1])
            depth = signature['depths'][stage] or 0
            signature['depths'][stage] = max(depth, block + 1)
            if rest.endswith('ffn.fc1.weight'):
                signature['hidden_dims'][stage] = value.shape[0]
    return signature


def describe(signature: Mapping, zoo: Mapping[str, Mapping]) -> str:
    """``CMT-S (arch='small')`` when the signature is a zoo arch's, else
    the custom arch's numbers."""
    names = {}  # the longest of each arch's aliases ('tiny', not 'ti')
    for name, settings in zoo.items():
        names[id(settings)] = max(names.get(id(settings), ''), name, key=len)
    for name, settings in zoo.items():
        if name == names[id(settings)] and _matches(
                signature, shape_signature(_per_stage(settings))):
            short = {
                'tiny': 'Ti',
                'small': 'S',
                'base': 'B'
            }.get(name, name.upper())
            return f"CMT-{short} (arch='{name}')"
    shown = ', '.join(
        f'{k}={v}' for k, v in signature.items()
        if v is not None and not (isinstance(v, list) and None in v))
    return f'a custom CMT ({shown})'


def check_arch(signature_of_model: Mapping, state_dict: Mapping, prefix: str,
               zoo: Mapping[str, Mapping], embed_dims: List[int]) -> None:
    """Raise :class:`ArchMismatchError` when the CMT tensors of
    ``state_dict`` under ``prefix`` were saved from another arch than the
    model's (only what the state dict holds is compared)."""
    held = state_dict_signature(state_dict, prefix)
    if _matches(held, signature_of_model):
        return
    name = describe(held, zoo)
    wanted = re.search(r"arch='(\w+)'", name)
    fix = (f"set the backbone's arch='{wanted[1]}'"
           if wanted else 'build the backbone with that arch')
    dims = held['embed_dims']
    neck = (f" (and a neck's in_channels={dims})"
            if None not in dims and dims != embed_dims else '')
    raise ArchMismatchError(
        f'the checkpoint holds {name} but the model is '
        f'{describe(signature_of_model, zoo)}: {fix}{neck} to load it, or '
        f"load a checkpoint of the model's arch; nothing was loaded")


def _matches(held: Mapping, expected: Mapping) -> bool:
    """Whether what ``held`` knows agrees with ``expected``."""
    for key, value in held.items():
        values = value if isinstance(value, list) else [value]
        wanted = expected[key] if isinstance(expected[key],
                                             list) else [expected[key]]
        if any(v is not None and v != w for v, w in zip(values, wanted)):
            return False
    return True


def _per_stage(settings: Mapping) -> dict:
    ratios = settings['mlp_ratios']
    if isinstance(ratios, (int, float)):
        ratios = [ratios] * len(settings['embed_dims'])
    return dict(settings, mlp_ratios=ratios)
