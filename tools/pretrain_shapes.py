"""Pretrain a CMT classifier on crops of a COCO-format data set's objects and
save it in the layout of the released ImageNet checkpoints.

    python tools/pretrain_shapes.py data/synthetic_coco \
        work_dirs/demo/cmt_ti_shapes.pth --arch tiny

The small-scale version of ImageNet pretraining: a detector config then
starts its backbone from the file exactly as it starts from
``cmt_tiny.pth``, with ``init_cfg=dict(type='Pretrained', checkpoint=...)``
(``tools/demo.sh`` does both). The classifier (:class:`CMTClassifier`)
learns the categories of ``annotations/instances_train2017.json`` plus
background from square crops around each object
(:class:`mmcmt.datasets.ObjectCrops`, augmented); the accuracy on the
``val2017`` crops is printed after every epoch. The images are normalised
as mmdet's detectors do (RGB, ImageNet mean and standard deviation). The
output file is never overwritten.
"""
import quiet_imports  # noqa: F401 isort: skip (first: import noise)
import argparse
import math
import os
import os.path as osp
import time

import numpy as np
import torch
import torch.nn.functional as F

from mmcmt.checkpoint import to_official_cmt
from mmcmt.datasets import ObjectCrops
from mmcmt.engine import UsageError, run_main
from mmcmt.models import CMT, CMTClassifier

# mmdet's DetDataPreprocessor defaults of the configs (RGB, 0-255 scale)
MEAN = torch.tensor([123.675, 116.28, 103.53]).view(1, 3, 1, 1)
STD = torch.tensor([58.395, 57.12, 57.375]).view(1, 3, 1, 1)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument(
        'data_root',
        help='COCO-format data set (annotations/, '
        'train2017/, val2017/), e.g. data/synthetic_coco')
    parser.add_argument('out', help='checkpoint to write (never overwritten)')
    parser.add_argument(
        '--arch',
        default='tiny',
        help='tiny, xs, small or base '
        '(default: tiny)')
    parser.add_argument(
        '--size',
        type=int,
        default=64,
        help='side of the crops, a multiple of 32 (default: 64)')
    parser.add_argument('--epochs', type=int, default=10, help='default: 10')
    parser.add_argument(
        '--batch-size', type=int, default=64, help='default: 64')
    parser.add_argument(
        '--lr', type=float, default=2e-3, help='AdamW, default: 2e-3')
    parser.add_argument('--seed', type=int, default=0, help='default: 0')
    return parser.parse_args(argv)


def load_crops(data_root, split, size):
    ann_file = osp.join(data_root, 'annotations', f'instances_{split}.json')
    if not osp.isfile(ann_file):
        raise UsageError(f'{ann_file} not found: DATA_ROOT must hold a '
                         f'COCO-format data set (tools/make_synthetic.py coco '
                         f'writes one)')
    return ObjectCrops(ann_file, osp.join(data_root, split), size)


def to_input(crops):
    """``(N, S, S, 3)`` uint8 RGB -> normalised ``(N, 3, S, S)`` float."""
    x = torch.from_numpy(crops).permute(0, 3, 1, 2).float()
    return ((x - MEAN) / STD).contiguous(memory_format=torch.channels_last)


@torch.no_grad()
def accuracy(model, crops, labels, batch_size):
    model.eval()
    correct = 0
    for start in range(0, len(labels), batch_size):
        logits = model(to_input(crops[start:start + batch_size]))
        correct += (logits.argmax(1).numpy() == labels[start:start +
                                                       batch_size]).sum()
    return correct / len(labels)


def main(argv=None):
    args = parse_args(argv)
    if osp.exists(args.out):
        raise UsageError(f'{args.out} exists; choose another output path or '
                         f'remove it first (it is never overwritten)')
    if args.size % 32 or args.size < 32:
        raise UsageError(f'--size must be a multiple of 32, got {args.size}')
    try:
        CMT.parse_arch(args.arch)
    except ValueError as error:
        raise UsageError(error) from None
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    train = load_crops(args.data_root, 'train2017', args.size)
    val_crops, val_labels = load_crops(args.data_root, 'val2017',
                                       args.size).sample()
    model = CMTClassifier(
        args.arch,
        num_classes=len(train.classes),
        fc_dim=256,
        pretrain_img_size=args.size,
        drop_path_rate=0.)
    model.init_weights()
    model = model.to(memory_format=torch.channels_last)
    decay = [p for n, p in model.named_parameters() if p.dim() > 1]
    no_decay = [p for n, p in model.named_parameters() if p.dim() <= 1]
    optimizer = torch.optim.AdamW([
        dict(params=decay, weight_decay=0.05),
        dict(params=no_decay, weight_decay=0.)
    ],
                                  lr=args.lr)
    steps_per_epoch = math.ceil(len(train) / args.batch_size)
    total, warmup = args.epochs * steps_per_epoch, steps_per_epoch
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min(1., (step + 1) / warmup) * 0.5 *
        (1 + math.cos(math.pi * step / total)))
    print(f'{len(train)} training crops ({len(train.objects)} objects and '
          f'background), {len(val_labels)} validation crops of '
          f'{args.size}x{args.size}; classes: {", ".join(train.classes)}')
    start_time = time.time()
    for epoch in range(1, args.epochs + 1):
        model.train()
        crops, labels = train.sample(rng)
        losses = []
        for start in range(0, len(labels), args.batch_size):
            x = to_input(crops[start:start + args.batch_size])
            y = torch.from_numpy(labels[start:start + args.batch_size])
            loss = F.cross_entropy(model(x), y, label_smoothing=0.1)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            losses.append(loss.item())
        acc = accuracy(model, val_crops, val_labels, 2 * args.batch_size)
        print(
            f'epoch {epoch:3d}/{args.epochs}  loss {np.mean(losses):.4f}  '
            f'val accuracy {acc:.3f}  '
            f'({time.time() - start_time:.0f} s)',
            flush=True)
    os.makedirs(osp.dirname(osp.abspath(args.out)), exist_ok=True)
    torch.save(
        {
            'model': to_official_cmt(model.state_dict()),
            'meta': {
                'arch': args.arch,
                'img_size': args.size,
                'classes': list(train.classes),
                'val_accuracy': float(acc),
                'layout': 'released CMT checkpoints',
            }
        }, args.out)
    print(f'saved {args.out} (released checkpoint layout; load it with '
          f"init_cfg=dict(type='Pretrained', checkpoint='{args.out}'))")


if __name__ == '__main__':
    run_main(main)
