"""Reading state dicts from checkpoint files or URLs, and loading them into
a module with a clear report of what did not match."""
import os
from collections import OrderedDict
from typing import Dict, Optional

import torch
from mmengine.logging import print_log

from .official import RELEASE_URL
from .safe_load import CheckpointError, is_url, load_file, load_url


class ArchMismatchError(CheckpointError, ValueError):
    """A checkpoint saved from another arch than the model's: one line that
    names both, raised before anything is loaded."""


def sub_state_dict(state_dict: Dict[str, torch.Tensor],
                   prefix: str) -> 'OrderedDict[str, torch.Tensor]':
    """The entries of ``state_dict`` under ``prefix`` (such as
    ``'backbone.'``), with the prefix removed."""
    return OrderedDict((k[len(prefix):], v) for k, v in state_dict.items()
                       if k.startswith(prefix))


def read_checkpoint(
        path: str,
        prefix: Optional[str] = None) -> 'OrderedDict[str, torch.Tensor]':
    """Read a state dict from a released or an mmcmt/mmengine checkpoint.

    Accepts the state dict at the top level or under ``model`` or
    ``state_dict``, strips a ``module.`` prefix (DDP) and, when given,
    keeps only the keys under ``prefix`` (for example ``backbone.`` of a
    detector checkpoint) with that prefix removed. Files are read by
    :func:`.safe_load.load_file` (``torch.load(weights_only=True)``,
    one-line errors for untrusted or corrupt files); http(s) URLs are
    downloaded once into torch's hub cache by :func:`.safe_load.load_url`
    and read the same way.
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
        state_dict = sub_state_dict(state_dict, prefix)
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
