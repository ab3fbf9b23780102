"""Convert a released CMT checkpoint to an mmcmt backbone checkpoint.

    python tools/convert_official_cmt.py cmt_small.pth \
        checkpoints/cmt_small_mmcmt.pth

The output holds the backbone only (``state_dict`` in mmcmt key names, the
classification head dropped) and loads with ``init_cfg=dict(
type='Pretrained', checkpoint=...)`` or ``load_state_dict``. mmcmt also
loads the released files directly; convert when you prefer converted files.
An existing output file is never overwritten.
"""
import quiet_imports  # noqa: F401 isort: skip (first: import noise)
import argparse
import os

import torch

from mmcmt.checkpoint import (convert_official_cmt, is_official_cmt,
                              read_checkpoint, sub_state_dict)
from mmcmt.engine import UsageError, run_main


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('src', help='released checkpoint (cmt_small.pth ...)')
    parser.add_argument('dst', help='mmcmt checkpoint to write')
    args = parser.parse_args(argv)
    if os.path.exists(args.dst):
        raise UsageError(f'{args.dst} exists; choose another output path '
                         f'or remove it first (it is never overwritten)')
    state_dict = read_checkpoint(args.src)
    if not is_official_cmt(state_dict):
        raise UsageError(f'{args.src} is not in the layout of the released '
                         f'CMT checkpoints (stem_conv1, blocks_a.0 ...)')
    backbone = sub_state_dict(convert_official_cmt(state_dict), 'backbone.')
    os.makedirs(os.path.dirname(os.path.abspath(args.dst)), exist_ok=True)
    torch.save(
        {
            'state_dict': backbone,
            'meta': {
                'converted_from': os.path.basename(args.src)
            }
        }, args.dst)
    print(f'wrote {len(backbone)} backbone tensors to {args.dst}')


if __name__ == '__main__':
    run_main(main)
