"""The images a tool is given on its command line (a file or a folder)."""
import os
import os.path as osp
from typing import Callable, List

from ..datasets.image_check import image_problem
from .errors import UsageError, check_file

IMAGE_SUFFIXES = ('.jpg', '.jpeg', '.png', '.bmp', '.webp', '.tif', '.tiff')


def list_images(path: str) -> List[str]:
    """The image ``path`` (failing at once, in one line, when it is no
    readable image) or the image files of the folder ``path``, in name
    order (checked one by one by :func:`process_images`)."""
    if not osp.isdir(path):
        check_file(path, 'image')
        problem = image_problem(path, decode=True)
        if problem:
            raise UsageError(f'image {path!r} {problem}')
        return [path]
    paths = sorted(
        osp.join(path, name) for name in os.listdir(path)
        if name.lower().endswith(IMAGE_SUFFIXES))
    if not paths:
        raise UsageError(f'no image files ({", ".join(IMAGE_SUFFIXES)}) in '
                         f'folder {path!r}')
    return paths


def process_images(paths: List[str], process: Callable[[str], object]):
    """``process`` each readable image of ``paths``; the unreadable ones
    (empty, truncated, not images) are passed over and, once the others
    are done, reported in one line (:class:`UsageError`)."""
    bad = []
    for path in paths:
        problem = image_problem(path, decode=True)
        if problem:
            bad.append(f'{path!r} {problem}')
        else:
            process(path)
    if bad:
        raise UsageError(f'{len(bad)} of {len(paths)} images were not read: ' +
                         ', '.join(bad))
