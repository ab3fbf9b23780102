"""Views between the token layout of a stage and the map layout of its
convolutions, without copies.

A stage keeps its feature map as an NHWC tensor ``(B, H, W, C)``: at once
the token sequence (LayerNorm and linear layers act on its last dimension)
and, permuted, a channels-last NCHW map for convolutions and BatchNorms.
"""
import torch


def nhwc_to_nchw(x: torch.Tensor) -> torch.Tensor:
    """``(B, H, W, C) -> (B, C, H, W)``: a channels-last view, no copy."""
    return x.permute(0, 3, 1, 2)


def nchw_to_nhwc(x: torch.Tensor) -> torch.Tensor:
    """``(B, C, H, W) -> (B, H, W, C)``: a view, no copy for a
    channels-last map."""
    return x.permute(0, 2, 3, 1)
