"""CMT's arches: the released settings (:data:`ARCH_ZOO`), their parsing
(:func:`parse_arch`), and the arch a state dict was saved from, read from
its shapes, so that a checkpoint of another arch fails with one line before
anything of it is resized or loaded (the released ``cmt_xs.pth`` was once a
copy of ``cmt_small.pth``; loading it gave hundreds of size mismatches)."""
import re
from typing import Dict, List, Mapping, Union

import torch

from ...checkpoint import ArchMismatchError

#: Total stride of the backbone; inputs are padded to a multiple of it.
MAX_STRIDE = 32
NUM_STAGES = 4
#: The released arches, by name and alias: per-stage settings (one
#: ``mlp_ratios`` for all stages) and the ImageNet resolution the relative
#: position biases were trained at.
ARCH_ZOO = {
    **dict.fromkeys(['ti', 'tiny'], dict(
        embed_dims=[46, 92, 184, 368], depths=[2, 2, 10, 2],
        num_heads=[1, 2, 4, 8], mlp_ratios=3.6, sr_ratios=[8, 4, 2, 1],
        stem_channels=16, pretrain_img_size=160)),
    **dict.fromkeys(['xs'], dict(
        embed_dims=[52, 104, 208, 416], depths=[3, 3, 12, 3],
        num_heads=[1, 2, 4, 8], mlp_ratios=3.77, sr_ratios=[8, 4, 2, 1],
        stem_channels=16, pretrain_img_size=192)),
    **dict.fromkeys(['s', 'small'], dict(
        embed_dims=[64, 128, 256, 512], depths=[3, 3, 16, 3],
        num_heads=[1, 2, 4, 8], mlp_ratios=4, sr_ratios=[8, 4, 2, 1],
        stem_channels=32, pretrain_img_size=224)),
    **dict.fromkeys(['b', 'base'], dict(
        embed_dims=[76, 152, 304, 608], depths=[4, 4, 20, 4],
        num_heads=[1, 2, 4, 8], mlp_ratios=4, sr_ratios=[8, 4, 2, 1],
        stem_channels=38, pretrain_img_size=256)),
}  # yapf: disable
#: The keys of an arch dict (``pretrain_img_size`` may come with them).
ARCH_KEYS = ('embed_dims', 'depths', 'num_heads', 'mlp_ratios', 'sr_ratios',
             'stem_channels')
#: What the shapes of a state dict tell of its arch, per stage.
FIELDS = ('embed_dims', 'depths', 'num_heads', 'hidden_dims')
_STAGE_KEY = re.compile(r'^stages\.(\d+)\.(.+)$')


def parse_arch(arch: Union[str, dict],
               zoo: Mapping[str, Mapping] = ARCH_ZOO) -> dict:
    """Settings of an arch name (of ``zoo``) or dict, checked, with
    per-stage lists."""
    if isinstance(arch, str):
        name = arch.lower()
        if name not in zoo:
            raise ValueError(f'unknown CMT arch {arch!r}; choose one of '
                             f'{sorted(zoo)} or pass a dict with keys '
                             f'{list(ARCH_KEYS)}')
        settings = dict(zoo[name])
    elif isinstance(arch, dict):
        missing = [k for k in ARCH_KEYS if k not in arch]
        extra = [
            k for k in arch if k not in ARCH_KEYS and k != 'pretrain_img_size'
        ]
        if missing or extra:
            raise ValueError(
                f'a CMT arch dict needs exactly the keys {list(ARCH_KEYS)}; '
                f'missing {missing}, unknown {extra}')
        settings = dict(arch)
    else:
        raise TypeError(
            f'arch must be a name or a dict, got {type(arch).__name__}')
    if isinstance(settings['mlp_ratios'], (int, float)):
        settings['mlp_ratios'] = [settings['mlp_ratios']] * NUM_STAGES
    for key in ('embed_dims', 'depths', 'num_heads', 'mlp_ratios',
                'sr_ratios'):
        value = settings[key]
        if not isinstance(value, (list, tuple)) or len(value) != NUM_STAGES:
            raise ValueError(
                f'CMT arch {key!r} must list {NUM_STAGES} values (one per '
                f'stage), got {value!r}')
        settings[key] = list(value)
    for dims, heads in zip(settings['embed_dims'], settings['num_heads']):
        if dims % heads:
            raise ValueError(f'CMT arch: embed_dims {dims} is not divisible '
                             f'by num_heads {heads}')
    for i, ratio in enumerate(settings['sr_ratios']):
        grid = MAX_STRIDE // (4 * 2**i)
        if ratio < 1 or grid % ratio:
            raise ValueError(
                f'CMT arch: sr_ratios[{i}]={ratio} must divide {grid} (the '
                f'stage grid of a {MAX_STRIDE}-multiple input)')
    return settings


def values_kept(settings: Mapping, batch: int, height: int, width: int) -> int:
    """About how many values the plain layers keep for the backward pass in
    a training call of a CMT of these arch settings (:func:`parse_arch`) on
    ``(batch, C, height, width)``, parameters aside, counted from what each
    layer keeps: the input and, at stride 2, each stem layer's three maps;
    per stage its input and patch aggregation, per block nine maps of its
    width, six of the IRFFN's hidden width and the keys' and values' side,
    and the resized relative position bias."""
    H, W = (-(-size // MAX_STRIDE) * MAX_STRIDE for size in (height, width))
    values = batch * H * W * (3 + 9 * settings['stem_channels'] / 4)
    channels = settings['stem_channels']  # the stage's input (a stride up)
    for i in range(NUM_STAGES):
        grid = H * W // (4 << i)**2
        dims, sr = settings['embed_dims'][i], settings['sr_ratios'][i]
        keys_values = 4 / sr**2 if sr > 1 else 2  # (with the reduction's)
        block = dims * (9 + 6 * settings['mlp_ratios'][i] + keys_values)
        values += batch * grid * (
            dims + (4 * channels if i else 0) + settings['depths'][i] * block)
        values += settings['num_heads'][i] * grid * grid // sr**2
        channels = dims
    return int(values)


def shape_signature(settings: Mapping) -> Dict[str, object]:
    """What a CMT of these arch settings (:func:`parse_arch`) holds:
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
                         num_stages: int = NUM_STAGES) -> Dict[str, object]:
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


def describe(signature: Mapping) -> str:
    """``CMT-S (arch='small')`` when the signature is a released arch's,
    else the custom arch's numbers."""
    names = {}  # the longest of each arch's aliases ('tiny', not 'ti')
    for name, settings in ARCH_ZOO.items():
        names[id(settings)] = max(names.get(id(settings), ''), name, key=len)
    for name, settings in ARCH_ZOO.items():
        if name == names[id(settings)] and _matches(
                signature, shape_signature(parse_arch(name))):
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
               embed_dims: List[int]) -> None:
    """Raise :class:`ArchMismatchError` when the CMT tensors of
    ``state_dict`` under ``prefix`` were saved from another arch than the
    model's (only what the state dict holds is compared)."""
    held = state_dict_signature(state_dict, prefix)
    if _matches(held, signature_of_model):
        return
    name = describe(held)
    wanted = re.search(r"arch='(\w+)'", name)
    fix = (f"set the backbone's arch='{wanted[1]}'"
           if wanted else 'build the backbone with that arch')
    dims = held['embed_dims']
    neck = (f" (and a neck's in_channels={dims})"
            if None not in dims and dims != embed_dims else '')
    raise ArchMismatchError(
        f'the checkpoint holds {name} but the model is '
        f'{describe(signature_of_model)}: {fix}{neck} to load it, or '
        f"load a checkpoint of the model's arch; nothing was loaded")


def check_loaded_arch(module, state_dict, prefix, *args) -> None:
    """Load-state-dict pre-hook of a CMT (after the layout conversion,
    before the stages resize their biases): a checkpoint of another arch
    fails with one line that names both archs."""
    check_arch(
        shape_signature(module.arch), state_dict, prefix, module.embed_dims)


def _matches(held: Mapping, expected: Mapping) -> bool:
    """Whether what ``held`` knows agrees with ``expected``."""
    for key, value in held.items():
        values = value if isinstance(value, list) else [value]
        wanted = expected[key] if isinstance(expected[key],
                                             list) else [expected[key]]
        if any(v is not None and v != w for v, w in zip(values, wanted)):
            return False
    return True
