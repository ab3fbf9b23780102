"""Shared test helpers: the released checkpoints' key shapes and arch
names."""
import json
import os

from mmcmt.testing import (custom_arch_official_shapes,  # noqa: F401
                           random_official_state_dict)

SHAPES_FILE = os.path.join(os.path.dirname(__file__), 'data',
                           'official_cmt_shapes.json')
ARCH_OF_VARIANT = {'cmt_ti': 'tiny', 'cmt_xs': 'xs', 'cmt_s': 'small',
                   'cmt_b': 'base'}


def official_shapes():
    """``{variant: {'img_size', 'params', 'state_dict': {key: shape}}}`` of
    the released checkpoints."""
    with open(SHAPES_FILE) as f:
        return json.load(f)


def relative_error(a, b):
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-12)).item()
