"""Classification crops of the objects of a COCO-format detection data set.

:class:`ObjectCrops` cuts a square window around each annotated object (and,
optionally, windows of background) and resizes it to a fixed size: the data
on which ``tools/pretrain_shapes.py`` trains a CMT classifier whose weights
then start a detector, as ImageNet weights do for COCO. Training crops are
augmented (window size and position, rotation, flip); evaluation crops are
not. Only numpy, OpenCV and the standard library are used.
"""
import json
import os.path as osp

import cv2
import numpy as np


class ObjectCrops:
    """The objects of one split of a COCO-format data set, as square crops.

    Args:
        ann_file (str): COCO annotation file (``instances_train2017.json``).
        img_dir (str): folder of its images.
        size (int): side of the crops, in pixels.
        background (bool): add one crop of background (a window clear of
            every object) per image, labelled ``len(classes)``. Defaults to
            True.

    Attributes:
        classes (tuple[str]): category names, in the order of their ids;
            ``'background'`` appended when ``background`` is set.
    """

    #: Window side over the object's longer box side: range when augmenting,
    #: value otherwise (the object with some of its surroundings).
    CONTEXT = (1.2, 2.0)
    EVAL_CONTEXT = 1.5

    def __init__(self, ann_file, img_dir, size, background=True):
        with open(ann_file) as f:
            coco = json.load(f)
        categories = sorted(coco['categories'], key=lambda c: c['id'])
        label_of = {c['id']: i for i, c in enumerate(categories)}
        self.classes = tuple(c['name'] for c in categories)
        self.size = size
        index_of = {}
        self.images = []
        for i, info in enumerate(coco['images']):
            path = osp.join(img_dir, info['file_name'])
            image = cv2.imread(path, cv2.IMREAD_COLOR)
            if image is None:
                raise FileNotFoundError(f'cannot read image {path}')
            self.images.append(cv2.cvtColor(image, cv2.COLOR_BGR2RGB))
            index_of[info['id']] = i
        # (image index, x0, y0, x1, y1, label) per object
        self.objects = [
            (index_of[a['image_id']], a['bbox'][0], a['bbox'][1],
             a['bbox'][0] + a['bbox'][2], a['bbox'][1] + a['bbox'][3],
             label_of[a['category_id']]) for a in coco['annotations']
            if not a.get('iscrowd')
        ]
        self.background = background
        if background:
            self.classes += ('background', )
            self.boxes_of = [[] for _ in self.images]
            for i, *box, _ in self.objects:
                self.boxes_of[i].append(box)

    def __len__(self):
        return len(self.objects) + (len(self.images) if self.background else 0)

    def sample(self, rng=None):
        """All crops, in a random order, with their labels.

        Args:
            rng (numpy.random.Generator, optional): augments the crops (and
                draws the background windows) when given; None gives the
                fixed evaluation crops.

        Returns:
            tuple: ``(N, size, size, 3)`` uint8 RGB crops and ``(N,)`` int64
            labels.
        """
        fixed = np.random.default_rng(0)  # background windows when no rng
        windows = []  # (image index, centre x, centre y, side, label)
        for i, x0, y0, x1, y1, label in self.objects:
            side = max(x1 - x0, y1 - y0)
            cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
            if rng is None:
                side *= self.EVAL_CONTEXT
            else:
                side *= rng.uniform(*self.CONTEXT)
                cx, cy = np.array([cx, cy]) + rng.uniform(-0.1, 0.1, 2) * side
            windows.append((i, cx, cy, side, label))
        if self.background:
            for i in range(len(self.images)):
                window = self._background_window(i, rng or fixed)
                if window is not None:
                    windows.append(window)
        order = rng.permutation(len(windows)) if rng is not None else range(
            len(windows))
        crops = np.empty((len(windows), self.size, self.size, 3), np.uint8)
        labels = np.empty(len(windows), np.int64)
        for n, k in enumerate(order):
            i, cx, cy, side, labels[n] = windows[k]
            crops[n] = self._crop(self.images[i], cx, cy, side, rng)
        return crops, labels

    def _background_window(self, i, rng):
        """A window of image ``i`` clear of its objects, or None."""
        h, w = self.images[i].shape[:2]
        for _ in range(20):
            side = rng.uniform(0.15, 0.4) * min(h, w)
            x0, y0 = rng.uniform(0, w - side), rng.uniform(0, h - side)
            if all(x0 >= bx1 or x0 + side <= bx0 or y0 >= by1 or y0 +
                   side <= by0 for bx0, by0, bx1, by1 in self.boxes_of[i]):
                return (i, x0 + side / 2, y0 + side / 2, side,
                        len(self.classes) - 1)
        return None

    def _crop(self, image, cx, cy, side, rng):
        """The square window (centre, side) resized to ``size``; rotated and
        flipped at random when ``rng`` is given. Outside the image: its
        border pixels repeated (a mirror would copy shapes near the edge)."""
        scale = self.size / side
        angle = 0. if rng is None else rng.uniform(0, 360)
        matrix = cv2.getRotationMatrix2D((cx, cy), angle, scale)
        matrix[:, 2] += self.size / 2 - np.array([cx, cy])
        crop = cv2.warpAffine(
            image,
            matrix, (self.size, self.size),
            flags=cv2.INTER_LINEAR,
            borderMode=cv2.BORDER_REPLICATE)
        if rng is not None and rng.random() < 0.5:
            crop = crop[:, ::-1]
        return crop
