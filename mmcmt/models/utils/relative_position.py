"""Resizing CMT's relative position bias to another token grid."""
import math
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from mmengine.logging import print_log

Grid = Tuple[int, int]


def resize_relative_position_bias(
        bias: torch.Tensor,
        src_query: Grid,
        src_key: Grid,
        dst_query: Grid,
        dst_key: Grid,
        mode: str = 'bicubic',
        out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Resize a CMT relative position bias to other query and key grids.

    CMT stores a free bias for every (query position, key position) pair. It
    is resized as what it is, a function of (query row, query column, key
    row, key column): first over the query grid, then over the key grid,
    each by 2-D interpolation (bicubic, as the paper fine-tunes).

    The key-grid step writes the largest tensor (every query has its own
    key map): it runs as two small matrix products with the 1-D
    interpolation matrices (2-D interpolation is separable), several times
    faster than ``F.interpolate`` over that many channels and equal to it.

    Args:
        bias (Tensor): ``(heads, Hq*Wq, Hk*Wk)``, rows in row-major order.
        src_query, src_key (tuple[int, int]): grids ``bias`` was made for.
        dst_query, dst_key (tuple[int, int]): grids to resize to.
        mode (str): interpolation mode of :func:`F.interpolate`.
        out (Tensor, optional): memory of at least the result's size to
            write it into (no gradient): a cache reusing its buffer saves
            the page faults of a fresh allocation of this size.

    Returns:
        Tensor: ``(heads, hq*wq, hk*wk)``. ``bias`` itself when the grids
        are unchanged.
    """
    heads, num_queries, num_keys = _check_grids(bias, src_query, src_key)
    src_query, src_key = tuple(src_query), tuple(src_key)
    dst_query, dst_key = tuple(dst_query), tuple(dst_key)
    align = None if mode == 'nearest' else False
    if dst_query != src_query:
        # (heads, Nq, Nk) -> (heads, Nk, Hq, Wq): keys become channels.
        x = bias.transpose(1, 2).reshape(heads, num_keys, *src_query)
        x = F.interpolate(x, size=dst_query, mode=mode, align_corners=align)
        bias = x.flatten(2).transpose(1, 2)
        num_queries = dst_query[0] * dst_query[1]
    if dst_key == src_key:
        return bias.contiguous()
    if torch.jit.is_tracing():
        # a traced graph (FLOP counting) keeps the interpolation, which
        # counters, like the paper, do not count as multiply-adds
        x = bias.reshape(heads, num_queries, *src_key)
        x = F.interpolate(x, size=dst_key, mode=mode, align_corners=align)
        return x.flatten(2)
    # (heads * Nq, Hk, Wk): along the key rows, then the key columns
    rows = interpolation_matrix(src_key[0], dst_key[0], mode, bias)
    cols = interpolation_matrix(src_key[1], dst_key[1], mode, bias)
    # (contiguous: matmul loops over the batch of a strangely strided one)
    x = bias.reshape(heads * num_queries, *src_key).contiguous()
    if out is not None:
        out = out.view(-1)[:x.shape[0] * math.prod(dst_key)].view(
            x.shape[0], *dst_key)
    # in the bias's own precision, also under autocast (as F.interpolate)
    with torch.autocast(bias.device.type, enabled=False):
        x = torch.matmul(x.transpose(1, 2), rows.T).transpose(1, 2)
        x = torch.matmul(x, cols.T, out=out)
    return x.view(heads, num_queries, -1)


def resize_relative_position_bias_backward(
        grad: torch.Tensor,
        bias: torch.Tensor,
        src_query: Grid,
        src_key: Grid,
        dst_query: Grid,
        dst_key: Grid,
        mode: str = 'bicubic') -> torch.Tensor:
    """The gradient of :func:`resize_relative_position_bias`'s result with
    respect to ``bias``, given the result's gradient ``grad``, without the
    result: the key-grid step's matrix products transposed (as autograd
    computes them), then autograd through the query-grid interpolation
    (a map of the stored key grid's size, small)."""
    heads, _, num_keys = _check_grids(bias, src_query, src_key)
    src_key, dst_key = tuple(src_key), tuple(dst_key)
    with torch.enable_grad():
        leaf = bias.detach().requires_grad_()
        x = leaf
        if tuple(dst_query) != tuple(src_query):
            x = x.transpose(1, 2).reshape(heads, num_keys, *src_query)
            x = F.interpolate(
                x,
                size=tuple(dst_query),
                mode=mode,
                align_corners=None if mode == 'nearest' else False)
            x = x.flatten(2).transpose(1, 2)
        x = x.reshape(-1, *src_key).contiguous()  # (heads * Nq, Hk, Wk)
    if dst_key != src_key:
        rows = interpolation_matrix(src_key[0], dst_key[0], mode, bias)
        cols = interpolation_matrix(src_key[1], dst_key[1], mode, bias)
        with torch.autocast(bias.device.type, enabled=False):
            grad = torch.matmul(grad.reshape(x.shape[0], *dst_key), cols)
            grad = torch.matmul(grad.transpose(1, 2), rows).transpose(1, 2)
    return torch.autograd.grad(x, leaf, grad.reshape(x.shape))[0]


def interpolation_matrix(src: int, dst: int, mode: str,
                         like: torch.Tensor) -> torch.Tensor:
    """``(dst, src)``: the weights ``F.interpolate`` gives each source
    sample along one axis (the interpolation of the identity)."""
    eye = torch.eye(src, dtype=like.dtype, device=like.device)
    x = F.interpolate(
        eye.reshape(1, src, src, 1),
        size=(dst, 1),
        mode=mode,
        align_corners=None if mode == 'nearest' else False)
    return x.reshape(src, dst).T


def factored_relative_position_bias(
        bias: torch.Tensor,
        src_query: Grid,
        src_key: Grid,
        dst_query: Grid,
        dst_key: Grid,
        mode: str = 'bicubic') -> Tuple[torch.Tensor, torch.Tensor]:
    """The resized bias as a product of two thin factors, never formed.

    The resize is linear along each grid: ``resized = R_q · B · R_kᵀ`` per
    head, with ``R_q`` and ``R_k`` the interpolation matrices of the query
    and key grids. So ``rows = R_q · B`` (the stored bias resized over the
    query grid only) and ``cols = R_k`` (the key grid's interpolation of the
    identity) give ``rows @ cols.T`` equal to
    :func:`resize_relative_position_bias`'s result, and attention can add
    it as ``Hk*Wk``-independent extra channels of q and k
    (:func:`..attention.factored_biased_attention`).

    Returns:
        tuple[Tensor, Tensor]: ``rows`` ``(heads, hq*wq, Hk*Wk)`` and
        ``cols`` ``(hk*wk, Hk*Wk)``.
    """
    heads, num_queries, num_keys = _check_grids(bias, src_query, src_key)
    align = None if mode == 'nearest' else False
    # over the query grid as products with the 1-D interpolation matrices:
    # an ONNX Resize over Hk*Wk channels costs ten times more
    x = bias.transpose(1, 2).reshape(heads, num_keys, *src_query)
    x = interpolation_matrix(src_query[0], dst_query[0], mode, bias) @ x
    x = x @ interpolation_matrix(src_query[1], dst_query[1], mode, bias).T
    rows = x.flatten(2).transpose(1, 2)
    eye = torch.eye(num_keys, dtype=bias.dtype, device=bias.device)
    x = F.interpolate(
        eye.reshape(1, num_keys, *src_key),
        size=tuple(dst_key),
        mode=mode,
        align_corners=align)
    cols = x.reshape(num_keys, -1).transpose(0, 1)
    return rows, cols


def _check_grids(bias: torch.Tensor, src_query: Grid, src_key: Grid):
    """``bias``'s (heads, queries, keys), which must fill the grids."""
    heads, num_queries, num_keys = bias.shape
    if num_queries != src_query[0] * src_query[1] or \
            num_keys != src_key[0] * src_key[1]:
        raise ValueError(
            f'relative position bias of shape {tuple(bias.shape)} does not '
            f'match a {src_query} query grid and a {src_key} key grid')
    return heads, num_queries, num_keys


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


class BiasResizer:
    """A stage's relative position bias, stored for its pre-training query
    grid, resized to the running grid (:func:`resize_relative_position_bias`
    and its backward pass, :func:`factored_relative_position_bias`).

    In eval mode the last resize is kept (:meth:`resized_and_kept`); and a
    saved bias of another grid is resized as it is loaded
    (:meth:`resize_saved_bias`).

    Args:
        pretrain_grid (tuple[int, int]): the stored query grid.
        sr_ratio (int): the keys' grid is the query grid's divided by it.
    """

    def __init__(self, pretrain_grid: Grid, sr_ratio: int):
        self.pretrain_grid = tuple(pretrain_grid)
        self.sr_ratio = sr_ratio
        self._kept = None  # (key, bias) of the last eval-mode grid
        self._memory = None  # its memory, kept for the next size

    def key_grid(self, grid: Grid) -> Grid:
        return grid[0] // self.sr_ratio, grid[1] // self.sr_ratio

    def _grids(self, grid: Grid):
        """The stored and the running query and key grids, as the resize
        functions take them."""
        grid = tuple(grid)
        return (self.pretrain_grid, self.key_grid(self.pretrain_grid), grid,
                self.key_grid(grid))

    def resize(self,
               bias: torch.Tensor,
               grid: Grid,
               out: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The stored ``bias`` resized to the query ``grid``."""
        return resize_relative_position_bias(bias, *self._grids(grid), out=out)

    def resize_backward(self, grad: torch.Tensor, bias: torch.Tensor,
                        grid: Grid) -> torch.Tensor:
        """The gradient of :meth:`resize`'s result with respect to ``bias``,
        from the result's gradient ``grad``."""
        return resize_relative_position_bias_backward(grad, bias,
                                                      *self._grids(grid))

    def factors(self, bias: torch.Tensor,
                grid: Grid) -> Tuple[torch.Tensor, torch.Tensor]:
        """:meth:`resize`'s result as the factors ``(rows, cols)``."""
        return factored_relative_position_bias(bias, *self._grids(grid))

    def resized_and_kept(self, bias: torch.Tensor, grid: Grid) -> torch.Tensor:
        """:meth:`resize` (``bias`` itself at the stored grid), kept until
        the grid, ``bias`` or its version changes (so that an update in
        place is never missed). A new size (in a COCO evaluation, most
        images) is written into the last one's memory when it fits: a fresh
        allocation of this size costs more in page faults than the resize
        itself."""
        grid = tuple(grid)
        if grid == self.pretrain_grid:
            return bias
        key = (grid, bias.device, bias.dtype, bias._version)
        if self._kept is None or self._kept[0] != key:
            self._kept = None
            size = bias.shape[0] * math.prod(grid) * math.prod(
                self.key_grid(grid))
            memory = self._memory
            if memory is None or memory.numel() < size or (
                    memory.device, memory.dtype) != (bias.device, bias.dtype):
                self._memory = memory = None  # freed before the new one
                memory = self._memory = bias.new_empty(size)
            self._kept = (key, self.resize(bias, grid, memory))
        return self._kept[1]

    def clear(self) -> None:
        """Free what :meth:`resized_and_kept` keeps."""
        self._kept = self._memory = None

    def resize_saved_bias(self, module, state_dict, prefix, *args) -> None:
        """Load-state-dict pre-hook of the module whose parameter
        ``relative_position_bias`` this resizes: a bias saved at another
        grid (say, by a detector fine-tuned with another
        ``pretrain_img_size``) is resized to the stored grid."""
        key = prefix + 'relative_position_bias'
        saved = state_dict.get(key)
        target = module.relative_position_bias
        if saved is None or saved.shape == target.shape or \
                saved.shape[0] != target.shape[0]:
            return  # a head-count mismatch is reported by load_state_dict
        state_dict[key] = resize_relative_position_bias(
            saved.to(target.dtype), infer_square_grid(saved.shape[1]),
            infer_square_grid(saved.shape[2]), self.pretrain_grid,
            self.key_grid(self.pretrain_grid))
        print_log(
            f'resized {key} from {tuple(saved.shape)} to '
            f'{tuple(target.shape)}', 'current')
