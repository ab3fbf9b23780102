"""Data set helpers for mmcmt (no torch needed)."""
from .synthetic_ade import make_synthetic_ade
from .synthetic_coco import CLASSES, make_synthetic_coco

__all__ = ['CLASSES', 'make_synthetic_coco', 'make_synthetic_ade']
