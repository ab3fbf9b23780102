"""What checkpoints name besides tensors, and whether mmcmt's safe loader
allows it.

    python tools/checkpoint_corpus.py FILE [FILE ...]   # your checkpoints
    python tools/checkpoint_corpus.py --corpus WORK_DIR  # what runs write
    python tools/checkpoint_corpus.py --write-fixture   # this stack's file

With files: each file's globals beyond torch's own list (read without
building anything the file names, so safe on untrusted files) and whether
the safe loader allows each. With ``--corpus``: mmengine's Runner writes
the corpus of ``tools/corpus_runs.py`` (every registered parameter
scheduler, optimizer wrapper and stateful hook) into WORK_DIR (a new
folder) and the same table is printed for it, each run loaded back safely.
``--write-fixture`` writes ``tests/data/checkpoints/<stack>.pth``, the file
that the other stack's tests load (replacing this stack's older one).
"""
import quiet_imports  # noqa: F401 isort: skip (first: import noise)
import argparse
import os
import os.path as osp
import shutil
import tempfile

import corpus_runs as corpus

from mmcmt.checkpoint.inspection import pickled_globals
from mmcmt.checkpoint.safe_load import CheckpointError, is_allowed, load_file
from mmcmt.engine import UsageError, run_main
from mmcmt.utils import check_new_folder

FIXTURES = osp.join(
    osp.dirname(osp.dirname(osp.abspath(__file__))), 'tests', 'data',
    'checkpoints')


def write(run, work_dir: str) -> str:
    """Train ``run`` in ``work_dir``; its last checkpoint's path."""
    corpus.train_run(run, work_dir).train()
    return osp.join(work_dir, 'epoch_2.pth')


def report(paths: dict) -> int:
    """Print name | globals beyond torch's list | loads; the number of
    files that do not load."""
    from torch._weights_only_unpickler import _get_allowed_globals
    torch_own = set(_get_allowed_globals())
    failures = 0
    print('| checkpoint | what it names besides torch\'s list | loads |')
    print('|---|---|---|')
    for name, path in paths.items():
        names = sorted(pickled_globals(path) - torch_own)
        shown = ', '.join(
            n if is_allowed(n) else f'**{n}** (refused)' for n in names) or '-'
        try:
            load_file(path)
            loads = 'yes'
        except CheckpointError as error:
            loads, failures = f'no: {error}', failures + 1
        print(f'| {name} | {shown} | {loads} |')
    return failures


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('files', nargs='*', help='checkpoints to inspect')
    parser.add_argument(
        '--corpus', metavar='WORK_DIR', help='write and inspect the corpus')
    parser.add_argument(
        '--write-fixture',
        action='store_true',
        help=f'write this stack\'s fixture into {FIXTURES}')
    args = parser.parse_args(argv)
    if not (args.files or args.corpus or args.write_fixture):
        raise UsageError('name checkpoint files, --corpus WORK_DIR or '
                         '--write-fixture')
    paths = {}
    for path in args.files:
        if not osp.isfile(path):
            raise FileNotFoundError(f'checkpoint not found: {path!r}')
        paths[path] = path
    if args.corpus:
        try:
            check_new_folder(args.corpus,
                             'choose a new folder (nothing is overwritten)')
        except FileExistsError as error:
            raise UsageError(error) from None
        for run in corpus.corpus_runs():
            paths[run.name] = write(run, osp.join(args.corpus, run.name))
    if args.write_fixture:
        with tempfile.TemporaryDirectory() as tmp:
            written = write(corpus.fixture_run(), tmp)
            os.makedirs(FIXTURES, exist_ok=True)
            target = osp.join(FIXTURES, f'{corpus.stack_name()}.pth')
            shutil.copyfile(written, target)
        paths[target] = target
    if report(paths):
        raise SystemExit(1)


if __name__ == '__main__':
    run_main(main)
