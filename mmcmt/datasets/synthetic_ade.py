"""A small, deterministic, ADE20K-format segmentation data set of shapes.

It lets the segmentation configs be trained and evaluated end to end without
downloading ADE20K: :func:`make_synthetic_ade` writes the layout of mmseg's
``data/ade/ADEChallengeData2016/``::

    out_dir/
        images/training/ADE_train_00000001.jpg ...
        images/validation/ADE_val_00000001.jpg ...
        annotations/training/ADE_train_00000001.png ...
        annotations/validation/ADE_val_00000001.png ...

The images are those of the detection data set
(:mod:`mmcmt.datasets.synthetic_coco`, same drawing code): 1-4
non-overlapping filled shapes (circle, square, triangle, cross) of varied
colour, size and rotation on a varied background (a colour gradient, smooth
noise or stripes). The label PNGs follow ADE20K's convention, which mmseg
reads with ``reduce_zero_label=True``:

- 0: unlabelled, ignored in training and evaluation; here a band along the
  edge of each shape (the pixel on each side of its border, which JPEG
  compression blends);
- 1..5: the classes of :data:`CLASSES`, in order: ``background``, then the
  four shapes (mmseg's class indices 0..4).

Only numpy and OpenCV are used. The same arguments give the same files, byte
for byte: each image has its own random generator, seeded from ``seed``, the
split and the image's index.
"""
import os
import os.path as osp

import cv2
import numpy as np

from . import synthetic_coco
from .synthetic_coco import draw_shapes, prepare_out_dir, write_jpeg

#: Class names, in the order of mmseg's class indices (label PNG value - 1).
CLASSES = ('background', ) + synthetic_coco.CLASSES

#: Colours (RGB) of the classes in mmseg's pictures.
PALETTE = [[120, 120, 120], [220, 20, 60], [0, 142, 255], [255, 200, 0],
           [0, 200, 80]]

#: Sub-folders of ``images/`` and ``annotations/``, and file name prefixes.
SPLITS = {'training': 'ADE_train', 'validation': 'ADE_val'}

#: The label PNG value of unlabelled pixels.
UNLABELLED = 0


def make_synthetic_ade(out_dir,
                       num_train=2000,
                       num_val=100,
                       img_size=(128, 128),
                       seed=0,
                       overwrite=False):
    """Write a synthetic ADE20K-format segmentation data set to ``out_dir``.

    Args:
        out_dir (str): folder to write (created if needed).
        num_train (int): number of training images. Defaults to 2000.
        num_val (int): number of validation images. Defaults to 100.
        img_size (tuple[int, int]): image ``(width, height)``, each at least
            64. Defaults to (128, 128).
        seed (int): seed of all random choices. Defaults to 0.
        overwrite (bool): replace the files of an earlier data set in a
            non-empty ``out_dir`` (only ``images/`` and ``annotations/`` are
            removed). Defaults to False, which refuses.

    Returns:
        dict: for each split (``'training'``, ``'validation'``) the number of
        ``images`` and of ``shapes`` written and the ``pixels`` of each
        label value 0..5 (0: unlabelled, then :data:`CLASSES`).

    Raises:
        FileExistsError: ``out_dir`` is not empty and ``overwrite`` is False.
    """
    width, height = (int(s) for s in img_size)
    if width < 64 or height < 64:
        raise ValueError(f'img_size must be at least (64, 64), got {img_size}')
    if num_train < 0 or num_val < 0:
        raise ValueError('num_train and num_val must not be negative')
    prepare_out_dir(out_dir, ('images', 'annotations'), overwrite)

    summary = {}
    for split_index, ((split, prefix), num_images) in enumerate(
            zip(SPLITS.items(), (num_train, num_val))):
        image_dir = osp.join(out_dir, 'images', split)
        label_dir = osp.join(out_dir, 'annotations', split)
        os.makedirs(image_dir)
        os.makedirs(label_dir)
        shapes_written = 0
        pixels = np.zeros(len(CLASSES) + 1, np.int64)
        for index in range(num_images):
            # Seeded as the detection set's images (another seed offset, so
            # that the two sets differ).
            rng = np.random.default_rng([seed, 1000 + split_index, index])
            image, shapes = draw_shapes(rng, width, height)
            label = label_map(shapes, width, height)
            name = f'{prefix}_{index + 1:08d}'
            write_jpeg(osp.join(image_dir, name + '.jpg'), image)
            _write_png(osp.join(label_dir, name + '.png'), label)
            shapes_written += len(shapes)
            pixels += np.bincount(label.ravel(), minlength=len(pixels))
        summary[split] = dict(
            images=num_images, shapes=shapes_written, pixels=pixels.tolist())
    return summary


def label_map(shapes, width, height):
    """The ADE-style uint8 label map of shapes from
    :func:`~mmcmt.datasets.synthetic_coco.draw_shapes`: 1 for the
    background, 2.. for the shapes, 0 along their edges."""
    label = np.ones((height, width), np.uint8)
    edges = np.zeros((height, width), bool)
    kernel = cv2.getStructuringElement(cv2.MORPH_CROSS, (3, 3))
    for index, mask, _polygon in shapes:
        label[mask] = index + 2
        mask = mask.astype(np.uint8)
        edges |= (cv2.dilate(mask, kernel) != cv2.erode(mask, kernel))
    label[edges] = UNLABELLED
    return label


def _write_png(path, label):
    ok, data = cv2.imencode('.png', label)
    if not ok:
        raise RuntimeError(f'could not encode {path}')
    with open(path, 'wb') as f:
        f.write(data.tobytes())
