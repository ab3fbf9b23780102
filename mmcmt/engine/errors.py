"""A user's mistakes reported as one line with exit code 2, as argparse
reports its own."""
import os
import os.path as osp
import sys
from typing import Callable

from ..checkpoint import CheckpointError, is_url


class UsageError(Exception):
    """A mistake in a tool's arguments: reported as one line, exit code 2."""


def run_main(main: Callable[[], object]) -> None:
    """Run a tool's ``main()``. The user's mistakes (bad arguments, a
    missing file, an untrusted or corrupt checkpoint) end the tool with one
    line on stderr and exit code 2, as argparse's errors do; anything else
    keeps its traceback."""
    try:
        main()
    except (UsageError, FileNotFoundError, CheckpointError) as error:
        print(f'{osp.basename(sys.argv[0])}: error: {error}', file=sys.stderr)
        sys.exit(2)


def check_file(path: str, what: str) -> None:
    """Fail naming ``path`` when it is not a file; a checkpoint may also be
    an http(s) URL (downloaded by the loader, with its own errors)."""
    if what == 'checkpoint' and is_url(path):
        return
    if not osp.isfile(path):
        raise FileNotFoundError(
            f'{what} not found: {path!r} (working directory {os.getcwd()})')
