"""Data set helpers for mmcmt (no torch needed)."""
from .synthetic_coco import CLASSES, make_synthetic_coco

__all__ = ['CLASSES', 'make_synthetic_coco']
