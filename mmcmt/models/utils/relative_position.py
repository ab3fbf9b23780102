"""Resizing CMT's relative position bias to another token grid."""
import math
from typing import Tuple

import torch
import torch.nn.functional as F

Grid = Tuple[int, int]


def resize_relative_position_bias(bias: torch.Tensor,
                                  src_query: Grid,
                                  src_key: Grid,
                                  dst_query: Grid,
                                  dst_key: Grid,
                                  mode: str = 'bicubic',
                                  always: bool = False) -> torch.Tensor:
    """Resize a CMT relative position bias to other query and key grids.

    CMT stores a free bias for every (query position, key position) pair. It
    is resized as what it is, a function of (query row, query column, key
    row, key column): first over the query grid, then over the key grid,
    each by 2-D interpolation (bicubic, as the paper fine-tunes).

    Args:
        bias (Tensor): ``(heads, Hq*Wq, Hk*Wk)``, rows in row-major order.
        src_query, src_key (tuple[int, int]): grids ``bias`` was made for.
        dst_query, dst_key (tuple[int, int]): grids to resize to.
        mode (str): interpolation mode of :func:`F.interpolate`.
        always (bool): interpolate even to the same grid (an identity), so
            that a traced graph resizes at any input size.

    Returns:
        Tensor: ``(heads, hq*wq, hk*wk)``. ``bias`` itself when the grids
        are unchanged.
    """
    heads, num_queries, num_keys = bias.shape
    if num_queries != src_query[0] * src_query[1] or \
            num_keys != src_key[0] * src_key[1]:
        raise ValueError(
            f'relative position bias of shape {tuple(bias.shape)} does not '
            f'match a {src_query} query grid and a {src_key} key grid')
    src_query, src_key = tuple(src_query), tuple(src_key)
    dst_query, dst_key = tuple(dst_query), tuple(dst_key)
    align = None if mode == 'nearest' else False
    if always or dst_query != src_query:
        # (heads, Nq, Nk) -> (heads, Nk, Hq, Wq): keys become channels.
        x = bias.transpose(1, 2).reshape(heads, num_keys, *src_query)
        x = F.interpolate(x, size=dst_query, mode=mode, align_corners=align)
        bias = x.flatten(2).transpose(1, 2)
        num_queries = dst_query[0] * dst_query[1]
    if always or dst_key != src_key:
        # (heads, Nq, Nk) -> (heads, Nq, Hk, Wk): queries become channels.
        x = bias.reshape(heads, num_queries, *src_key)
        x = F.interpolate(x, size=dst_key, mode=mode, align_corners=align)
        bias = x.flatten(2)
    return bias.contiguous()


def infer_square_grid(num_tokens: int) -> Grid:
    """The square grid of ``num_tokens`` tokens (a saved bias stores no
    grid; released checkpoints are square)."""
    side = math.isqrt(num_tokens)
    if side * side != num_tokens:
        raise ValueError(
            f'cannot infer the grid of a relative position bias with '
            f'{num_tokens} positions: it is not a square grid. Resize it with '
            f'mmcmt.models.utils.resize_relative_position_bias before '
            f'loading.')
    return side, side
