"""Data set helpers for mmcmt (no torch needed)."""
from .image_check import bad_images, image_problem
from .shape_crops import ObjectCrops
from .synthetic_ade import make_synthetic_ade
from .synthetic_coco import CLASSES, make_synthetic_coco

__all__ = [
    'CLASSES', 'ObjectCrops', 'bad_images', 'image_problem',
    'make_synthetic_coco', 'make_synthetic_ade'
]
