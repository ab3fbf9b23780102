"""Parameters and FLOPs (mmcmt.utils.complexity, tools/get_flops.py): the
counts of a module small enough to count by hand, and the CMT variants'
figures against configs/metafile.yml, from which the docs' tables are
printed (the detectors' and segmentors': tests/test_detection.py,
tests/test_segmentation.py)."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from helpers import (assert_metafile_figures, get_flops_rows, metafile_model,
                     run_tool)

from mmcmt.utils import complexity, complexity_table


class Attention(nn.Module):
    """q, k, v from one linear layer (8 -> 12), one head of 4 channels over
    5 tokens, then a LayerNorm."""

    def __init__(self):
        super().__init__()
        self.qkv = nn.Linear(8, 12)
        self.norm = nn.LayerNorm(4)

    def forward(self, x):
        q, k, v = self.qkv(x).unsqueeze(1).chunk(3, dim=-1)
        return self.norm(F.scaled_dot_product_attention(q, k, v))


def test_complexity_counts_by_hand():
    figures = complexity(Attention(), (torch.rand(1, 5, 8), ))
    linear = 5 * 8 * 12  # tokens x in x out
    attention = 5 * 5 * (4 + 4)  # q.k^T and attn.v: queries x keys x dims
    assert figures['params'] == pytest.approx((8 * 12 + 12 + 4 + 4) / 1e6)
    assert figures['flops'] == pytest.approx((linear + attention) / 1e9)
    assert figures['attention'] == pytest.approx(attention / 1e9)
    assert figures['flops_without_attention'] == pytest.approx(linear / 1e9)
    # mmengine's convention adds the norm
    assert figures['flops_mmengine'] > figures['flops']


def test_complexity_table_rounds_each_row_as_asked():
    figures = dict(
        params=9.4871,
        flops=0.6449,
        flops_mmengine=0.6512,
        attention=0.0234,
        flops_without_attention=0.6215)
    table = complexity_table([('a', (160, 160), figures, 2),
                              ('b', (800, 1280), figures, 1)])
    lines = table.splitlines()
    assert lines[0].startswith('| model | input (W x H) | params (M) |')
    assert lines[2] == '| a | 160x160 | 9.49 | 0.64 | 0.65 | 0.02 | 0.62 |'
    assert lines[3] == '| b | 1280x800 | 9.49 | 0.6 | 0.7 | 0.0 | 0.6 |'


def test_get_flops_arch_reports_the_metafile_figures():
    """``tools/get_flops.py --arch tiny``: the released classifier at its
    pre-training size and the backbone alone at 1280x800, as
    configs/metafile.yml holds them; ``tools/complexity.py``, its older
    name, prints the same."""
    out = run_tool('tools/get_flops.py', '--arch', 'tiny').stdout
    rows = get_flops_rows(out)
    assert set(rows) == {'CMT-tiny classifier', 'CMT-tiny backbone'}
    model = metafile_model('cmt-tiny_3rdparty_in1k')['Metadata']
    assert_metafile_figures(rows['CMT-tiny classifier'], model)
    assert_metafile_figures(rows['CMT-tiny backbone'], model['Backbone Only'])
    small = ['tiny', '--shape', '64']
    assert run_tool('tools/complexity.py',
                    *small).stdout == run_tool('tools/get_flops.py', '--arch',
                                               *small).stdout
