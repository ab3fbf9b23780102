"""Classify an image with a released CMT ImageNet checkpoint.

    python tools/classify.py demo.jpg --arch small --checkpoint cmt_small.pth

Prints the top-5 ImageNet classes: a quick check of a downloaded checkpoint
(a path or the release's URL). IMAGE may be a folder: each of its images in
turn, headed by its name; unreadable files (empty, truncated, not images)
are passed over and listed at the end (exit code 2).
The image is resized (shorter side to 256/224 of the input size) and
centre-cropped to the arch's ImageNet resolution, then normalised with the
ImageNet mean and std, as the released models were evaluated.
"""
import quiet_imports  # noqa: F401 isort: skip (first: import noise)
import argparse

import cv2
import numpy as np
import torch

from mmcmt.engine import UsageError, list_images, process_images, run_main
from mmcmt.models import CMT, CMTClassifier

MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


def class_names(path=None, num_classes=1000):
    """Class names from a text file (one per line), else mmpretrain's
    ImageNet list when it is installed, else class indices."""
    if path:
        with open(path) as f:
            names = [line.strip() for line in f if line.strip()]
        if len(names) != num_classes:
            raise UsageError(f'{path} lists {len(names)} classes, the model '
                             f'has {num_classes}')
        return names
    try:
        from mmpretrain.datasets.categories import IMAGENET_CATEGORIES
        return list(IMAGENET_CATEGORIES)
    except ImportError:
        return [f'class {i}' for i in range(num_classes)]


def preprocess(path, size):
    image = cv2.imread(path, cv2.IMREAD_COLOR)  # readable: list_images
    image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    short = int(size * 256 / 224)
    h, w = image.shape[:2]
    scale = short / min(h, w)
    image = cv2.resize(
        image, (round(w * scale), round(h * scale)),
        interpolation=cv2.INTER_CUBIC)
    h, w = image.shape[:2]
    top, left = (h - size) // 2, (w - size) // 2
    image = image[top:top + size, left:left + size].astype(np.float32) / 255
    image = (image - MEAN) / STD
    return torch.from_numpy(image.transpose(2, 0, 1)).unsqueeze(0)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('image')
    parser.add_argument(
        '--arch', default='small', help='tiny, xs, small or base')
    parser.add_argument(
        '--checkpoint',
        required=True,
        help='released checkpoint (cmt_small.pth ...), a '
        'path or a URL')
    parser.add_argument('--topk', type=int, default=5)
    parser.add_argument(
        '--classes',
        help='text file with the 1000 ImageNet class names, one per line '
        '(default: mmpretrain\'s list if installed, else indices)')
    args = parser.parse_args(argv)
    classes = class_names(args.classes)
    images = list_images(args.image)
    try:
        size = CMT.parse_arch(args.arch)['pretrain_img_size']
    except ValueError as error:
        raise UsageError(error) from None
    model = CMTClassifier(
        args.arch,
        init_cfg=dict(type='Pretrained', checkpoint=args.checkpoint))
    model.init_weights()
    model.eval()

    def classify(path):
        if len(images) > 1:
            print(path)
        with torch.no_grad():
            probs = model(preprocess(path, size)).softmax(-1)[0]
        for p, i in zip(*probs.topk(args.topk)):
            print(f'{p.item():7.2%}  {i.item():4d}  {classes[i]}')

    process_images(images, classify)


if __name__ == '__main__':
    run_main(main)
