"""What a checkpoint's pickle names, read without building anything it
names: safe on untrusted files (``tools/checkpoint_corpus.py FILE`` prints
it; ``tests/test_checkpoint_corpus.py`` checks :mod:`.allow_list` against
it)."""
import io
import pickle
import zipfile
from typing import Set

from .safe_load import global_name

__all__ = ['pickled_globals']


class _Named:
    """What a global becomes while :func:`pickled_globals` reads a pickle:
    a stand-in that takes any arguments and state, so that nothing the
    file names is imported or called."""
    name = ''

    def __init__(self, *args, **kwargs):
        self.args = args

    def __setstate__(self, state):
        pass

    def __setitem__(self, key, value):
        pass

    def append(self, item):
        pass

    def extend(self, items):
        pass


def pickled_globals(path: str) -> Set[str]:
    """The globals that the checkpoint file at ``path`` names, as
    ``module.name``, and its attribute references (pickled as
    ``getattr(owner, name)``) as ``getattr(module.Owner, name)``. Nothing
    the file names is imported or called: safe on untrusted files."""
    names = set()

    def stand_in(full_name):
        attributes = dict(name=full_name)
        if full_name == 'builtins.getattr':

            def record(self, owner, attribute, *default):
                names.add(f'getattr({getattr(owner, "name", owner)}, '
                          f'{attribute})')

            attributes['__init__'] = record
        elif full_name == 'numpy.dtype':  # its kind decides its class

            def record(self, kind, *flags):
                names.add(f'numpy.dtype({kind})')

            attributes['__init__'] = record
        return type(full_name, (_Named, ), attributes)

    class Reader(pickle.Unpickler):

        def find_class(self, module, name):
            full_name = global_name(module, name)
            names.add(full_name)
            return stand_in(full_name)

        def persistent_load(self, pid):
            return None

    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            for name in archive.namelist():
                if name.endswith('/data.pkl') or name == 'data.pkl':
                    Reader(
                        io.BytesIO(archive.read(name)),
                        encoding='latin1').load()
    else:  # torch's legacy format: magic, protocol, system info, object
        with open(path, 'rb') as f:
            for _ in range(4):
                Reader(f, encoding='latin1').load()
    return names
