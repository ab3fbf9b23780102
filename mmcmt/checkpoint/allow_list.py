"""What mmcmt's safe loader lets a checkpoint hold besides what torch's
``weights_only`` unpickler builds by itself (tensors, storages, dtypes,
plain containers), and why; and how a user allows one more name.

The list is exactly what runs of mmengine, mmdet and mmseg write:
``tools/corpus_runs.py`` writes a checkpoint for every registered parameter
scheduler, optimizer wrapper and stateful hook with mmengine's Runner, and
``tests/test_checkpoint_corpus.py`` checks on both supported stacks that
every name those checkpoints hold is allowed (here or by torch) and that
every name here is held by one of them (or by the other stack's
checkpoints kept in ``tests/data/checkpoints/``). Each entry is an exact
name: nothing is allowed by module or prefix, and an attribute reference
(pickled as ``getattr(owner, name)``) only for the named attributes.
``docs/notes/safe_loading.md`` shows the same list.
"""
import importlib
from typing import Callable, Dict, Set, Tuple, Union

import numpy as np

__all__ = [
    'GLOBALS', 'NUMPY_DTYPES', 'ATTRIBUTES', 'NEVER_ALLOWED_MODULES',
    'add_user_globals', 'allowed_globals', 'allowed_attributes',
    'listed_names', 'never_allowed', 'user_globals'
]

_NUMPY_ARRAYS = ("numpy arrays and scalars: the message hub's log buffers, "
                 'metrics (numpy 1.x names the module numpy.core, 2.x '
                 'numpy._core; either stack reads both)')
_HISTORY_BUFFER = 'mmengine.logging.history_buffer.HistoryBuffer'
_ONE_CYCLE = 'mmengine.optim.scheduler.param_scheduler.OneCycleParamScheduler'

#: Classes and functions a checkpoint may name, by the name its pickle gives
#: them, and why they are there.
GLOBALS: Dict[str, str] = {
    _HISTORY_BUFFER:
    "the message hub's log buffers (every checkpoint)",
    'numpy.ndarray':
    _NUMPY_ARRAYS,
    'numpy.dtype':
    _NUMPY_ARRAYS,
    'numpy.core.multiarray._reconstruct':
    _NUMPY_ARRAYS,
    'numpy.core.multiarray.scalar':
    _NUMPY_ARRAYS,
    'numpy._core.multiarray._reconstruct':
    _NUMPY_ARRAYS,
    'numpy._core.multiarray.scalar':
    _NUMPY_ARRAYS,
    '_codecs.encode':
    'bytes as protocol 2 pickles them (the data of numpy '
    "arrays on numpy 1.x); newer torch allows it, torch 2.1 doesn't",
    'collections.Counter':
    "the milestones of MultiStepLR/-Momentum/"
    "-ParamScheduler; newer torch allows it, torch 2.1 doesn't",
}

#: The kinds of numpy dtype a checkpoint may build (numpy.dtype('f8', ...);
#: each kind is a class of its own, which the unpickler must be allowed to
#: build): those of the message hub's log buffers.
NUMPY_DTYPES: Dict[str, str] = {
    'b1': _NUMPY_ARRAYS,
    'i8': _NUMPY_ARRAYS,
    'f4': _NUMPY_ARRAYS,
    'f8': _NUMPY_ARRAYS,
}

#: Attribute references a checkpoint may make, pickled as
#: ``getattr(owner, name)``: (owner, name) -> why. The owner is allowed only
#: as the first argument of these references: it cannot be called or built.
ATTRIBUTES: Dict[Tuple[str, str], str] = {
    **{(_HISTORY_BUFFER, method):
       "the statistics methods of HistoryBuffer, which each buffer's "
       'pickle refers to'
       for method in ('min', 'max', 'current', 'mean')},
    **{(_ONE_CYCLE, function):
       "OneCycle's annealing function (its anneal_func: 'cos' or 'linear')"
       for function in ('_annealing_cos', '_annealing_linear')},
}  # yapf: disable

#: Modules whose objects run code or reach the system: never allowed, not
#: even by :func:`.safe_load.allow_globals`, and a checkpoint that names one
#: is refused as untrusted.
NEVER_ALLOWED_MODULES = frozenset({
    'builtins', 'os', 'posix', 'nt', 'sys', 'subprocess', 'shutil', 'socket',
    'runpy', 'importlib', 'pickle', '_pickle', 'marshal', 'code', 'codeop',
    'pty', 'ctypes', 'multiprocessing', 'webbrowser', 'signal', 'io',
    'tempfile', 'pathlib', 'functools', 'operator', 'types', 'inspect',
    'torch.hub', 'torch.ops', 'torch._ops'
})


def resolve(name: str):
    """The object a pickle's ``module.name`` refers to, importing its
    module. numpy's core module is taken under the name the installed numpy
    gives it, so checkpoints of numpy 1.x and 2.x load with either."""
    module, _, attribute = name.rpartition('.')
    if module in ('numpy.core.multiarray', 'numpy._core.multiarray'):
        module = 'numpy.core.multiarray' if np.__version__ < '2' else \
            'numpy._core.multiarray'
    return getattr(importlib.import_module(module), attribute)


def allowed_globals() -> Dict[str, object]:
    """:data:`GLOBALS`, the classes of :data:`NUMPY_DTYPES` and the user's
    (:func:`user_globals`), name -> object."""
    found = {name: resolve(name) for name in GLOBALS}
    for kind in NUMPY_DTYPES:
        cls = type(np.dtype(kind))
        found[f'{cls.__module__}.{cls.__qualname__}'] = cls
    found.update(_USER_GLOBALS)
    return found


def allowed_attributes() -> Dict[str, Dict[str, object]]:
    """Owner name -> {attribute: the object} of :data:`ATTRIBUTES`, with
    the statistics methods registered on ``HistoryBuffer`` at run time."""
    from mmengine.logging import HistoryBuffer
    found: Dict[str, Dict[str, object]] = {}
    for owner, attribute in ATTRIBUTES:
        found.setdefault(owner,
                         {})[attribute] = getattr(resolve(owner), attribute)
    for method in HistoryBuffer._statistics_methods:  # registered ones
        found[_HISTORY_BUFFER].setdefault(method,
                                          getattr(HistoryBuffer, method))
    return found


def listed_names() -> Set[str]:
    """Every entry of this list as :func:`.inspection.pickled_globals` writes
    what a checkpoint names: ``module.name``, ``getattr(module.Owner,
    name)``, ``numpy.dtype(kind)``; ``builtins.getattr`` for the attribute
    references."""
    return ({'builtins.getattr'} | set(GLOBALS)
            | {f'getattr({o}, {a})'
               for o, a in ATTRIBUTES}
            | {f'numpy.dtype({k})'
               for k in NUMPY_DTYPES})


_USER_GLOBALS: Dict[str, object] = {}


def user_globals() -> Dict[str, object]:
    """What the user allowed (:func:`.safe_load.allow_globals`), name ->
    object."""
    return dict(_USER_GLOBALS)


def add_user_globals(*objects: Union[str, type, Callable]) -> None:
    """Add classes or functions, given as objects or as ``'module.Name'``
    strings, to :func:`user_globals` (:func:`.safe_load.allow_globals`
    adds them and tells torch).

    Raises:
        ValueError: a name of a module that runs code or reaches the system
            (:data:`NEVER_ALLOWED_MODULES`), or one that does not import.
    """
    for item in objects:
        if isinstance(item, str):
            name = item
            if never_allowed(name):
                raise ValueError(_never_allowed_message(name))
            try:
                obj = resolve(name)
            except (ImportError, AttributeError, ValueError) as error:
                raise ValueError(
                    f'cannot allow {name!r} in checkpoints: it does not '
                    f'import ({error}); give the full name, module.Name'
                ) from None
        else:
            obj = item
            name = f'{obj.__module__}.{obj.__qualname__}'
            if never_allowed(name):
                raise ValueError(_never_allowed_message(name))
        _USER_GLOBALS[name] = obj


def _never_allowed_message(name: str) -> str:
    return (f'{name} can run code or reach the system: checkpoints may '
            f'never hold it, so it cannot be allowed')


def never_allowed(name: str) -> bool:
    """Whether ``name`` (``module.name``) is in a module that runs code or
    reaches the system (:data:`NEVER_ALLOWED_MODULES`)."""
    module = name.rpartition('.')[0]
    return any(module == m or module.startswith(m + '.')
               for m in NEVER_ALLOWED_MODULES)
