"""A small, deterministic, COCO-format detection data set of coloured shapes.

It lets the detection configs be trained and evaluated end to end without
downloading COCO: :func:`make_synthetic_coco` writes the layout of mmdet's
``data/coco/``::

    out_dir/
        annotations/instances_train2017.json
        annotations/instances_val2017.json
        train2017/000000000001.jpg ...
        val2017/000000000001.jpg ...

Each image shows 1-4 non-overlapping shapes (:data:`CLASSES`: filled circle,
square, triangle and cross, of varied colour, size and rotation) on a varied
background (a colour gradient, smooth noise or stripes). Every shape is drawn
from a polygon, which is stored as its ``segmentation``; its ``bbox`` (xywh)
and ``area`` are measured on the pixels actually drawn, so they are exact.

Only numpy and OpenCV are used. The same arguments give the same files, byte
for byte: each image has its own random generator, seeded from ``seed``, the
split and the image's index, so an image does not depend on how many others
are made.
"""
import json
import os
import os.path as osp
import shutil

import cv2
import numpy as np

from ..utils.files import check_new_folder

#: Category names; their COCO category ids are 1..len(CLASSES), in order.
CLASSES = ('circle', 'square', 'triangle', 'cross')

#: Sub-folders (and annotation files) written for each split.
SPLITS = ('train2017', 'val2017')

_BACKGROUNDS = ('gradient', 'noise', 'stripes')


def make_synthetic_coco(out_dir,
                        num_train=400,
                        num_val=100,
                        img_size=(320, 320),
                        seed=0,
                        overwrite=False):
    """Write a synthetic COCO-format detection data set to ``out_dir``.

    Args:
        out_dir (str): folder to write (created if needed).
        num_train (int): number of training images. Defaults to 400.
        num_val (int): number of validation images. Defaults to 100.
        img_size (tuple[int, int]): image ``(width, height)``, each at least
            64. Defaults to (320, 320).
        seed (int): seed of all random choices. Defaults to 0.
        overwrite (bool): replace the files of an earlier data set in a
            non-empty ``out_dir`` (only ``annotations/``, ``train2017/`` and
            ``val2017/`` are removed). Defaults to False, which refuses.

    Returns:
        dict: for each split, the number of images and of objects written.

    Raises:
        FileExistsError: ``out_dir`` is not empty and ``overwrite`` is False.
    """
    width, height = (int(s) for s in img_size)
    if width < 64 or height < 64:
        raise ValueError(f'img_size must be at least (64, 64), got {img_size}')
    if num_train < 0 or num_val < 0:
        raise ValueError('num_train and num_val must not be negative')
    prepare_out_dir(out_dir, SPLITS + ('annotations', ), overwrite)
    os.makedirs(osp.join(out_dir, 'annotations'), exist_ok=True)

    summary = {}
    for split_index, (split, num_images) in enumerate(
            zip(SPLITS, (num_train, num_val))):
        os.makedirs(osp.join(out_dir, split))
        images, annotations = [], []
        for index in range(num_images):
            rng = np.random.default_rng([seed, split_index, index])
            image, objects = _draw_image(rng, width, height)
            image_id = index + 1
            file_name = f'{image_id:012d}.jpg'
            write_jpeg(osp.join(out_dir, split, file_name), image)
            images.append(
                dict(
                    id=image_id,
                    file_name=file_name,
                    width=width,
                    height=height))
            for obj in objects:
                annotations.append(
                    dict(
                        id=len(annotations) + 1,
                        image_id=image_id,
                        iscrowd=0,
                        **obj))
        coco = dict(
            info=dict(
                description='mmcmt synthetic shapes (COCO format)',
                version='1.0',
                year=2024,
                contributor='mmcmt.datasets.make_synthetic_coco',
                seed=seed),
            licenses=[],
            images=images,
            annotations=annotations,
            categories=[
                dict(id=i + 1, name=name, supercategory='shape')
                for i, name in enumerate(CLASSES)
            ])
        with open(
                osp.join(out_dir, 'annotations', f'instances_{split}.json'),
                'w') as f:
            json.dump(coco, f)
        summary[split] = dict(images=len(images), objects=len(annotations))
    return summary


def prepare_out_dir(out_dir, names, overwrite):
    """Refuse a non-empty ``out_dir`` unless ``overwrite``, and then remove
    only the sub-folders ``names`` of an earlier data set."""
    if not overwrite or not osp.isdir(out_dir):
        check_new_folder(
            out_dir, 'pass overwrite=True (--overwrite) to replace its '
            'synthetic data set')
        return
    for name in names:
        path = osp.join(out_dir, name)
        if osp.isdir(path):
            shutil.rmtree(path)


def write_jpeg(path, image):
    ok, data = cv2.imencode('.jpg', image, [cv2.IMWRITE_JPEG_QUALITY, 95])
    if not ok:
        raise RuntimeError(f'could not encode {path}')
    with open(path, 'wb') as f:
        f.write(data.tobytes())


def _draw_image(rng, width, height):
    """One BGR image and its objects' annotations (without ids)."""
    image, shapes = draw_shapes(rng, width, height)
    objects = []
    for label, mask, polygon in shapes:
        x0, y0, x1, y1 = _mask_box(mask)
        objects.append(
            dict(
                category_id=label + 1,
                bbox=[float(x0),
                      float(y0),
                      float(x1 - x0),
                      float(y1 - y0)],
                area=float(mask.sum()),
                segmentation=[[round(float(v), 2) for v in polygon.ravel()]]))
    return image, objects


def draw_shapes(rng, width, height):
    """One BGR image of 1-4 non-overlapping shapes on a random background.

    Shared by the detection and the segmentation data sets.

    Returns:
        tuple: the ``(height, width, 3)`` uint8 image and, for each shape, a
        tuple ``(label, mask, polygon)``: its index in :data:`CLASSES`, the
        boolean ``(height, width)`` mask of the pixels drawn, and the
        ``(N, 2)`` float polygon it was drawn from.
    """
    image = _background(rng, width, height)
    occupied = np.zeros((height, width), bool)
    shapes = []
    for _ in range(int(rng.integers(1, 5))):
        for _attempt in range(20):  # find a place clear of earlier shapes
            label = int(rng.integers(len(CLASSES)))
            polygon = _shape_polygon(rng, CLASSES[label], width, height)
            mask = np.zeros((height, width), np.uint8)
            cv2.fillPoly(mask, [np.round(polygon).astype(np.int32)], 1)
            mask = mask.astype(bool)
            x0, y0, x1, y1 = _mask_box(mask)
            margin = 4  # keep boxes apart so that no shape hides another
            if not occupied[max(y0 - margin, 0):y1 + margin,
                            max(x0 - margin, 0):x1 + margin].any():
                break
        else:
            continue
        occupied[y0:y1, x0:x1] = True
        image[mask] = _contrasting_colour(rng, image[mask].mean(0))
        shapes.append((label, mask, polygon))
    return image, shapes


def _background(rng, width, height):
    """A gradient, smooth noise or stripes, as a uint8 BGR image."""
    kind = _BACKGROUNDS[int(rng.integers(len(_BACKGROUNDS)))]
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    if kind == 'gradient':
        angle = rng.uniform(0, 2 * np.pi)
        t = xs * np.cos(angle) + ys * np.sin(angle)
        t = (t - t.min()) / max(float(np.ptp(t)), 1.)
        a, b = rng.uniform(0, 255, (2, 3))
        image = a + t[..., None] * (b - a)
    elif kind == 'noise':
        cells = rng.uniform(
            0, 255, (int(rng.integers(3, 9)), int(rng.integers(3, 9)), 3))
        image = cv2.resize(
            cells.astype(np.float32), (width, height),
            interpolation=cv2.INTER_CUBIC)
        image = image + rng.normal(0, 12, image.shape)
    else:  # stripes
        angle = rng.uniform(0, np.pi)
        period = rng.uniform(8, 40)
        t = xs * np.cos(angle) + ys * np.sin(angle)
        on = (np.sin(2 * np.pi * t / period) > 0)[..., None]
        a, b = rng.uniform(0, 255, (2, 3))
        image = np.where(on, a, b)
    return np.clip(image, 0, 255).astype(np.uint8)


def _shape_polygon(rng, name, width, height):
    """Vertices (N, 2) of a shape of random size, position and rotation."""
    size = rng.uniform(0.12, 0.35) * min(width, height)
    half = size / 2
    if name == 'circle':
        t = np.linspace(0, 2 * np.pi, 48, endpoint=False)
        points = np.stack([np.cos(t), np.sin(t)], 1) * half
    elif name == 'square':
        points = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]]) * half
    elif name == 'triangle':
        t = np.pi / 2 + np.array([0, 2, 4]) * np.pi / 3
        points = np.stack([np.cos(t), np.sin(t)], 1) * half
    elif name == 'cross':
        a, b = 1., 1 / 3
        points = np.array([[-b, -a], [b, -a], [b, -b], [a, -b], [a, b], [b, b],
                           [b, a], [-b, a], [-b, b], [-a, b], [-a, -b],
                           [-b, -b]]) * half
    else:
        raise ValueError(f'unknown shape {name!r}')
    if name != 'circle':
        angle = rng.uniform(0, 2 * np.pi)
        rotation = np.array([[np.cos(angle), -np.sin(angle)],
                             [np.sin(angle), np.cos(angle)]])
        points = points @ rotation.T
    # Place the shape wholly inside the image.
    low = -points.min(0)
    high = np.array([width - 1, height - 1]) - points.max(0)
    return points + rng.uniform(low, high)


def _mask_box(mask):
    """Tight box ``(x0, y0, x1, y1)`` (end exclusive) of a boolean mask."""
    ys, xs = np.nonzero(mask)
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def _contrasting_colour(rng, background):
    """A random colour that stands out from the mean ``background`` colour."""
    for _ in range(50):
        colour = rng.uniform(0, 255, 3)
        if np.abs(colour - background).sum() > 150:
            break
    else:
        colour = 255. - background
    return np.round(colour).astype(np.uint8)
