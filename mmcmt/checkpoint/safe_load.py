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

- allow-lists exactly what runs of mmengine, mmdet and mmseg store besides
  tensors (:mod:`.allow_list`, derived from and tested against the
  checkpoints that ``tools/corpus_runs.py`` writes): ``HistoryBuffer``,
  numpy arrays, dtypes and scalars, ``collections.Counter``, and
  ``getattr`` restricted to the attributes that those pickles refer to
  (``getattr(HistoryBuffer, 'mean')``, OneCycle's annealing function; a
  general ``getattr`` would reopen the door to arbitrary code), plus what
  the user allows by name (:func:`.allow_globals`);
- makes mmengine's loaders of local files and of http(s) URLs
  (``CheckpointLoader``'s schemes, behind ``load_checkpoint``,
  ``load_from``, ``resume``, ``init_detector``, the inferencers and
  ``init_cfg``) read through :func:`load_file` and fail with one line that
  names the file and what is wrong: a refused object (the file is not
  trusted), or a truncated or corrupt file. Never is the advice given to
  switch ``weights_only`` off.

URLs are downloaded into torch's hub cache (``<torch hub dir>/checkpoints``,
where mmengine and ``torch.hub`` put them) by :func:`load_url`; a file enters
the cache only once it has arrived whole and loaded safely.

torch before 2.6 cannot be taught safe globals by name (no
``add_safe_globals``, or one that takes no ``(object, name)`` pairs): there
the same allow-list is enforced by a restricted unpickler of this module's
own, on top of torch's list of what weights need.
"""
import _compat_pickle
import hashlib
import http.client
import os
import os.path as osp
import pickle
import re
import types
import urllib.error
import urllib.parse
import urllib.request
import uuid
from typing import Callable, Union

import torch

from ..compat import HAS_SAFE_GLOBALS
from .allow_list import (NUMPY_DTYPES, add_user_globals, allowed_attributes,
                         allowed_globals, never_allowed)

__all__ = [
    'CheckpointError', 'UntrustedCheckpointError', 'CorruptCheckpointError',
    'DownloadError', 'allow_globals', 'allow_mmengine_checkpoints',
    'safe_globals', 'is_allowed', 'load_file', 'load_url', 'is_url', 'install'
]


class CheckpointError(RuntimeError):
    """A checkpoint file that cannot be loaded; the message is one line."""


class UntrustedCheckpointError(CheckpointError, pickle.UnpicklingError):
    """The file holds an object the safe loader refuses to build."""


class CorruptCheckpointError(CheckpointError):
    """The file is truncated or is not a checkpoint."""


class DownloadError(CheckpointError):
    """A checkpoint URL that cannot be downloaded (no network, no file)."""


class _AttributeOwner:
    """What a checkpoint gets for a class it may name only to reach allowed
    attributes of it (``getattr(owner, name)``, :data:`.ATTRIBUTES`): it
    cannot be called or built."""

    def __init__(self, name: str):
        self.name = name

    def __call__(self, *args, **kwargs):
        raise pickle.UnpicklingError(
            f'Unsupported global: GLOBAL {self.name}()')

    def __repr__(self):
        return self.name


_OWNERS = {}  # owner name -> its _AttributeOwner, one object each


def _restricted_getattr(owner, name, *default):
    """``getattr`` as checkpoints may call it: only for the attributes that
    :func:`.allowed_attributes` lists (a general ``getattr`` would let a
    file reach anything, ``os.system`` included)."""
    owner_name = getattr(owner, 'name', None) if isinstance(
        owner, _AttributeOwner) else f'{getattr(owner, "__module__", "")}.' \
        f'{getattr(owner, "__qualname__", type(owner).__name__)}'
    allowed = allowed_attributes().get(owner_name, {})
    if isinstance(name, str) and name in allowed and (
            isinstance(owner, _AttributeOwner)
            or allowed_globals().get(owner_name) is owner):
        return allowed[name]
    raise pickle.UnpicklingError(
        f'Unsupported global: GLOBAL getattr({owner_name}, {name!r})')


def safe_globals() -> dict:
    """What the safe loader gives a checkpoint for each name it may hold
    besides torch's own list: the allowed classes and functions
    (:mod:`.allow_list`, the user's included), the owners of allowed
    attribute references and a ``getattr`` restricted to those."""
    found = allowed_globals()
    for owner in allowed_attributes():
        if owner not in found:
            found[owner] = _OWNERS.setdefault(owner, _AttributeOwner(owner))
    found['builtins.getattr'] = _restricted_getattr
    return found


def is_allowed(name: str) -> bool:
    """Whether the safe loader builds ``name``, written as
    :func:`.inspection.pickled_globals` writes what a checkpoint names."""
    from torch._weights_only_unpickler import _get_allowed_globals
    if name.startswith('getattr('):
        owner, _, attribute = name[len('getattr('):-1].partition(', ')
        return attribute in allowed_attributes().get(owner, {})
    if name.startswith('numpy.dtype('):
        return name[len('numpy.dtype('):-1] in NUMPY_DTYPES
    return name in safe_globals() or name in _get_allowed_globals()


def allow_mmengine_checkpoints() -> None:
    """Let ``torch.load(weights_only=True)`` read what mmengine, mmdet and
    mmseg runs write (:func:`safe_globals`). Idempotent; where torch cannot
    be taught named safe globals, :func:`load_file` reads through its own
    restricted unpickler instead."""
    if not HAS_SAFE_GLOBALS:
        return
    torch.serialization.add_safe_globals([
        (obj, name) for name, obj in safe_globals().items()
    ])


def allow_globals(*objects: Union[str, type, Callable]) -> None:
    """Let checkpoints hold these classes or functions, given as objects or
    as ``'module.Name'`` strings (the name the safe loader's refusal
    printed): for objects of a user's own code, such as the state that a
    custom hook keeps, in files the user trusts. In a config, the same is
    ``custom_hooks = [dict(type='AllowCheckpointGlobalsHook',
    names=['module.Name'])]``
    (:class:`mmcmt.engine.AllowCheckpointGlobalsHook`).

    Raises:
        ValueError: a name of a module that runs code or reaches the system
            (:data:`.NEVER_ALLOWED_MODULES`), or one that does not import.
    """
    add_user_globals(*objects)
    allow_mmengine_checkpoints()  # torch's own list, where it has one


def global_name(module: str, name: str) -> str:
    """``module.name`` of a pickle's global, Python 2's names (which
    protocol 2 writes: ``__builtin__``, ``copy_reg``) as pickle maps them."""
    module, name = _compat_pickle.NAME_MAPPING.get((module, name),
                                                   (module, name))
    return f'{_compat_pickle.IMPORT_MAPPING.get(module, module)}.{name}'


def _restricted_pickle() -> types.ModuleType:
    """A ``pickle_module`` for ``torch.load`` (torch without named safe
    globals) whose unpickler builds only what ``weights_only=True`` builds
    (torch's own list) and :func:`safe_globals`."""
    from torch._weights_only_unpickler import _get_allowed_globals

    class Unpickler(pickle.Unpickler):

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            # resolved once per file, the user's additions included
            self.allowed = dict(_get_allowed_globals(), **safe_globals())

        def find_class(self, module, name):
            full_name = global_name(module, name)
            found = self.allowed.get(full_name)
            if found is None:
                # worded as torch words it, for _refused_object
                shown = full_name[len('builtins.'):] if full_name.startswith(
                    'builtins.') else full_name
                raise pickle.UnpicklingError(
                    f'Unsupported global: GLOBAL {shown}')
            return found

    def load(file, **kwargs):
        return Unpickler(file, **kwargs).load()

    module = types.ModuleType('mmcmt_restricted_pickle')
    module.Unpickler, module.load = Unpickler, load
    module.UnpicklingError = pickle.UnpicklingError
    return module


def _torch_load(path: str, map_location):
    if HAS_SAFE_GLOBALS:
        return torch.load(path, map_location=map_location, weights_only=True)
    global _RESTRICTED_PICKLE
    if _RESTRICTED_PICKLE is None:
        _RESTRICTED_PICKLE = _restricted_pickle()
    return torch.load(
        path,
        map_location=map_location,
        pickle_module=_RESTRICTED_PICKLE,
        weights_only=False)


_RESTRICTED_PICKLE = None


def load_file(path: str, map_location='cpu', name: str = None):
    """``torch.load(path, weights_only=True)``, failing with a one-line
    :class:`CheckpointError` that names the file (or ``name``, where the
    file stands for something else, a URL)."""
    if not osp.isfile(path):
        raise FileNotFoundError(f'checkpoint not found: {path!r}')
    name = name or repr(path)
    try:
        return _torch_load(path, map_location)
    except pickle.UnpicklingError as error:
        refused = _refused_object(str(error))
        if refused:
            raise UntrustedCheckpointError(_refusal(name, refused)) from None
        # an opcode or a structure the safe unpickler does not know
        raise CorruptCheckpointError(
            f'cannot read checkpoint {name}: the file is truncated or '
            f'corrupt, or not a checkpoint ({_reason(error)})') from None
    except (RuntimeError, EOFError, KeyError, ValueError, OSError, IndexError,
            TypeError, AttributeError) as error:
        # torch's zip reader, or the legacy format's unpickler, on a file
        # that is cut short or is no checkpoint at all
        raise CorruptCheckpointError(
            f'cannot read checkpoint {name}: the file is truncated or '
            f'corrupt ({type(error).__name__}: {_first_line(error)})'
        ) from None


def is_url(path) -> bool:
    return isinstance(path, str) and path.startswith(('http://', 'https://'))


def cached_download(url: str, model_dir: str = None) -> str:
    """Where the download of ``url`` is kept: ``<torch hub dir>/checkpoints/
    <file name>``, as ``torch.hub`` and mmengine keep it (``TORCH_HOME``
    moves it)."""
    model_dir = model_dir or osp.join(torch.hub.get_dir(), 'checkpoints')
    return osp.join(model_dir, osp.basename(urllib.parse.urlparse(url).path))


#: Seconds a download may wait for data before it gives up.
DOWNLOAD_TIMEOUT = 60


def load_url(url: str, map_location='cpu', model_dir: str = None):
    """The checkpoint at ``url``, downloaded once into
    :func:`cached_download` and read by :func:`load_file`.

    The download goes to a temporary file beside the cache entry and takes
    its place only when it arrived whole (its ``Content-Length``, and the
    hash prefix in its name where it has one, as ``torch.hub`` checks) and
    loaded safely: a download cut short, corrupt or untrusted is never kept.

    Raises:
        DownloadError: no network, or the server has no such file; the
            message names the URL, where the file is expected and how to
            use a local copy.
        UntrustedCheckpointError, CorruptCheckpointError: as
            :func:`load_file`.
    """
    path = cached_download(url, model_dir)
    if osp.isfile(path):
        try:
            return load_file(path, map_location)
        except CorruptCheckpointError as error:
            raise CorruptCheckpointError(
                f'{error}; it is the cached download of {url}: delete it to '
                f'download the file again') from None
    os.makedirs(osp.dirname(path), exist_ok=True)
    partial = f'{path}.{uuid.uuid4().hex[:8]}.partial'
    try:
        _download(url, partial, path)
        checkpoint = load_file(partial, map_location, name=repr(url))
        os.replace(partial, path)
        return checkpoint
    finally:
        if osp.exists(partial):
            os.remove(partial)


def _download(url: str, dst: str, cache: str) -> None:
    from mmengine.logging import print_log
    print_log(f'downloading {url} to {cache}', 'current')
    digest, size, expected = hashlib.sha256(), 0, None
    try:
        with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT) as reply, \
                open(dst, 'wb') as out:
            expected = reply.headers.get('Content-Length')
            while True:
                chunk = reply.read(1 << 20)
                if not chunk:
                    break
                out.write(chunk)
                digest.update(chunk)
                size += len(chunk)
    except (urllib.error.URLError, OSError, ValueError,
            http.client.HTTPException) as error:
        reason = (f'HTTP {error.code} {error.reason}' if isinstance(
            error, urllib.error.HTTPError) else getattr(error, 'reason', None)
                  or _first_line(error))
        raise DownloadError(
            f'cannot download checkpoint {url} ({reason}); it is expected at '
            f'{cache}: put the file there, or point the config at a local '
            f'copy (init_cfg=dict(type=\'Pretrained\', checkpoint=PATH), '
            f'load_from=PATH)') from None
    if expected is not None and size != int(expected):
        raise CorruptCheckpointError(
            f'the download of {url} was cut short ({size} of {expected} '
            f'bytes arrived) and was not kept: run again')
    prefix = re.search(r'-([a-f0-9]{8,})\.', osp.basename(cache))
    if prefix and not digest.hexdigest().startswith(prefix[1]):
        raise CorruptCheckpointError(
            f'the download of {url} is corrupt (its SHA-256 does not start '
            f'with {prefix[1]}, as its name says) and was not kept')


def _refused_object(message: str):
    """The global the safe unpickler refused, as torch names it (builtins
    bare), or the attribute reference (``getattr(owner, 'name')``) or the
    call of an attribute owner (``owner()``) that it refused."""
    match = re.search(r'GLOBAL (getattr\([^)]*\)|[\w.]+(?:\(\))?)', message)
    return match[1] if match else None


def _refusal(name: str, refused: str) -> str:
    """One line: what was refused, and, for a name that could be benign (a
    class of the user's own code), how to allow it."""
    message = f'refusing to load checkpoint {name}: it holds {refused}, '
    if '.' not in refused or refused.endswith(')') or never_allowed(refused):
        return message + ('which a checkpoint of weights never needs; the '
                          'file is not trusted, so it was not loaded')
    return message + (
        "which mmcmt's safe loader does not allow (no run of mmengine, "
        'mmdet or mmseg writes it); the file is not trusted, so it was not '
        'loaded. If you trust the file and that name, allow it: '
        f"mmcmt.checkpoint.allow_globals('{refused}'), or in the config "
        f"custom_hooks=[dict(type='AllowCheckpointGlobalsHook', "
        f"names=['{refused}'])] (docs/notes/safe_loading.md)")


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


def _load_from_http(filename: str,
                    map_location=None,
                    model_dir=None,
                    **kwargs):
    """mmengine's loader of http(s) URLs, by :func:`load_url` (rank 0
    downloads first, as mmengine's does)."""
    from mmengine.dist import barrier, get_dist_info
    rank, world_size = get_dist_info()
    if rank == 0:
        checkpoint = load_url(filename, map_location, model_dir)
    if world_size > 1:
        barrier()
        if rank > 0:
            checkpoint = load_url(filename, map_location, model_dir)
    return checkpoint


def install() -> None:
    """Allow-list what mmengine, mmdet and mmseg runs write and give
    mmengine's checkpoint loaders of local files and URLs safe reading and
    clean errors. Called by ``import mmcmt``."""
    allow_mmengine_checkpoints()
    from mmengine.runner import checkpoint as mmengine_checkpoint
    loader = mmengine_checkpoint.CheckpointLoader
    loader.register_scheme(prefixes='', loader=_load_from_local, force=True)
    loader.register_scheme(
        prefixes=('http://', 'https://'), loader=_load_from_http, force=True)
    # open-mmlab://, torchvision:// and mmcls:// call this module-level
    # function directly, not through the scheme
    mmengine_checkpoint.load_from_http = _load_from_http
