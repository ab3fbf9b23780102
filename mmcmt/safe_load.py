"""Safe checkpoint loading, installed once when mmcmt is imported.

torch 2.6+ reads files with ``torch.load(weights_only=True)`` by default: a
restricted unpickler that builds tensors and plain containers and refuses
everything else, so a checkpoint cannot run code. mmengine's checkpoints hold
more than tensors: the runner's message hub (``HistoryBuffer`` log buffers of
numpy arrays and scalars, with references to their statistics methods), so
without help mmdet's and mmseg's own ``tools/test.py``, ``--resume``,
``init_detector`` and the inferencers cannot read the checkpoints their own
``tools/train.py`` wrote.

:func:`install` (run by ``import mmcmt``, hence by every config with
``custom_imports=dict(imports=['mmcmt'])``) keeps the safety on and

- allow-lists exactly what mmengine stores besides tensors: ``HistoryBuffer``,
  numpy arrays, dtypes and scalars, and ``getattr`` restricted to the
  statistics methods of ``HistoryBuffer`` (pickled as
  ``getattr(HistoryBuffer, 'mean')``; a general ``getattr`` would reopen the
  door to arbitrary code);
- makes mmengine's loader of local files (``CheckpointLoader``'s default
  scheme, behind ``load_checkpoint``, ``load_from`` and ``resume``) fail with
  one line that names the file and what is wrong: a refused object (the file
  is not trusted), or a truncated or corrupt file. Never is the advice given
  to switch ``weights_only`` off.
"""
import os.path as osp
import pickle
import re

import torch

__all__ = [
    'CheckpointError', 'UntrustedCheckpointError', 'CorruptCheckpointError',
    'allow_mmengine_checkpoints', 'load_file', 'install'
]

#: The statistics of a HistoryBuffer that its pickled form may refer to.
_HISTORY_BUFFER_METHODS = {'min', 'max', 'current', 'mean'}


class CheckpointError(RuntimeError):
    """A checkpoint file that cannot be loaded; the message is one line."""


class UntrustedCheckpointError(CheckpointError, pickle.UnpicklingError):
    """The file holds an object the safe loader refuses to build."""


class CorruptCheckpointError(CheckpointError):
    """The file is truncated or is not a checkpoint."""


def allow_mmengine_checkpoints() -> None:
    """Let ``torch.load(weights_only=True)`` read mmengine checkpoints (see
    the module docstring). Idempotent."""
    import numpy as np
    from mmengine.logging import HistoryBuffer
    if not hasattr(torch.serialization, 'add_safe_globals'):
        return  # torch < 2.4: torch.load is unrestricted by default

    def history_buffer_method(owner, name):
        methods = _HISTORY_BUFFER_METHODS | set(
            HistoryBuffer._statistics_methods)  # registered ones too
        if owner is HistoryBuffer and name in methods:
            return getattr(owner, name)
        raise pickle.UnpicklingError(
            f'refusing getattr({owner!r}, {name!r}) in a checkpoint')

    multiarray = np.core.multiarray if np.__version__ < '2' else \
        np._core.multiarray
    torch.serialization.add_safe_globals([
        HistoryBuffer, multiarray._reconstruct, multiarray.scalar,
        np.ndarray, np.dtype, (history_buffer_method, 'builtins.getattr')
    ] + [type(np.dtype(t)) for t in (np.float64, np.float32, np.int64,
                                      np.int32, np.bool_)])


def load_file(path: str, map_location='cpu'):
    """``torch.load(path, weights_only=True)``, failing with a one-line
    :class:`CheckpointError` that names the file."""
    if not osp.isfile(path):
        raise FileNotFoundError(f'checkpoint not found: {path!r}')
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        refused = _refused_object(str(error))
        if refused:
            raise UntrustedCheckpointError(
                f'refusing to load checkpoint {path!r}: it holds {refused}, '
                f'which a checkpoint of weights never needs; the file is not '
                f'trusted, so it was not loaded') from None
        # an opcode or a structure the safe unpickler does not know
        raise CorruptCheckpointError(
            f'cannot read checkpoint {path!r}: the file is truncated or '
            f'corrupt, or not a checkpoint ({_reason(error)})') from None
    except (RuntimeError, EOFError, KeyError, ValueError, OSError,
            IndexError, TypeError) as error:
        # torch's zip reader, or the legacy format's unpickler, on a file
        # that is cut short or is no checkpoint at all
        raise CorruptCheckpointError(
            f'cannot read checkpoint {path!r}: the file is truncated or '
            f'corrupt ({type(error).__name__}: {_first_line(error)})'
        ) from None


def _refused_object(message: str):
    """The global the safe unpickler refused, as torch names it."""
    match = re.search(r'GLOBAL ([\w.]+)', message)
    return match[1] if match else None


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0][:200] if text else 'no details'


def _reason(error: pickle.UnpicklingError) -> str:
    """What the safe unpickler stumbled on, without torch's advice."""
    text = str(error)
    if 'WeightsUnpickler error:' in text:
        after = text.split('WeightsUnpickler error:', 1)[1].strip()
        return after.splitlines()[0][:200] if after else 'no details'
    return _first_line(error)


def _load_from_local(filename: str, map_location=None):
    """mmengine's loader of local files, with :func:`load_file`'s errors."""
    return load_file(osp.expanduser(filename), map_location)


def install() -> None:
    """Allow-list mmengine's checkpoint contents and give mmengine's local
    checkpoint loader clean errors. Called by ``import mmcmt``."""
    allow_mmengine_checkpoints()
    from mmengine.runner.checkpoint import CheckpointLoader
    CheckpointLoader.register_scheme(
        prefixes='', loader=_load_from_local, force=True)
