"""Unreadable image files (truncated downloads, empty files, other files with
an image's name), found before a run or a picture needs them.

OpenCV, which mmcv reads with, fails on such files with an assertion far from
the file's name, or, for a JPEG cut short, silently decodes the part that
arrived. :func:`image_problem` tells from a file's first and last bytes what
is wrong with it; :func:`bad_images` applies it to every image (and
segmentation map) that a config's data sets name.
"""
import os.path as osp
from typing import Iterator, List, Optional, Tuple

_JPEG, _JPEG_END, _JPEG_SCAN = b'\xff\xd8\xff', b'\xff\xd9', b'\xff\xda'
_PNG, _PNG_END = b'\x89PNG\r\n\x1a\n', b'IEND\xaeB`\x82'
#: The start of the other formats OpenCV reads: BMP, GIF, TIFF, WebP, PPM.
_OTHER = (b'BM', b'GIF8', b'II*\x00', b'MM\x00*', b'RIFF', b'P5', b'P6')
_TAIL = 64


def image_problem(path: str, decode: bool = False) -> Optional[str]:
    """What makes ``path`` unreadable as an image, or None.

    ``'does not exist'``, ``'is empty (0 bytes)'``, ``'is not an image'``,
    ``'is truncated'`` (a JPEG whose last scan has no end marker, a PNG
    without its end chunk) or, with ``decode``, ``'cannot be decoded'``
    (OpenCV, as mmcv reads it, fails on it). Without ``decode`` only the
    file's first and last bytes are read (the whole file only for a JPEG or
    PNG with data after its end marker).
    """
    if not osp.isfile(path):
        return 'does not exist'
    size = osp.getsize(path)
    if size == 0:
        return 'is empty (0 bytes)'
    with open(path, 'rb') as f:
        head = f.read(16)
        f.seek(max(0, size - _TAIL))
        tail = f.read()
    if head.startswith(_JPEG):
        if _JPEG_END not in tail and not _jpeg_ends(path):
            return 'is truncated (a JPEG without its end marker)'
    elif head.startswith(_PNG):
        if _PNG_END not in tail and not _png_ends(path):
            return 'is truncated (a PNG without its end chunk)'
    elif not head.startswith(_OTHER):
        return 'is not an image'
    if decode:
        import cv2
        import numpy as np
        if cv2.imdecode(np.fromfile(path, np.uint8),
                        cv2.IMREAD_UNCHANGED) is None:
            return 'cannot be decoded'
    return None


def _jpeg_ends(path: str) -> bool:
    """An end marker after the last scan (data may follow it; an embedded
    thumbnail's scan and end marker come before the image's)."""
    with open(path, 'rb') as f:
        data = f.read()
    scan = data.rfind(_JPEG_SCAN)
    return scan >= 0 and data.find(_JPEG_END, scan) >= 0


def _png_ends(path: str) -> bool:
    with open(path, 'rb') as f:
        return _PNG_END in f.read()


def data_set_files(dataset) -> Iterator[Tuple[int, str]]:
    """``(index, path)`` of every image and segmentation map a built
    mmengine data set names."""
    for index in range(len(dataset)):
        info = dataset.get_data_info(index)
        for key in ('img_path', 'seg_map_path'):
            if info.get(key):
                yield index, info[key]


def bad_images(dataset) -> List[Tuple[int, str, str]]:
    """``(index, path, problem)`` of the unreadable files of ``dataset``."""
    found = []
    for index, path in data_set_files(dataset):
        problem = image_problem(path)
        if problem:
            found.append((index, path, problem))
    return found


def describe(found, limit: int = 5) -> str:
    """``'PATH is truncated, PATH is empty (0 bytes) (+3 more)'``."""
    shown = ', '.join(f'{path} {problem}'
                      for _, path, problem in found[:limit])
    return shown + (f' (+{len(found) - limit} more)'
                    if len(found) > limit else '')
