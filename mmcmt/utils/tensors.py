"""Comparing tensors."""
import torch


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest absolute difference of ``a`` and ``b``, relative to the
    largest magnitude of the reference ``b``."""
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-12)).item()
