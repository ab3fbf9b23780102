"""Independent re-derivations and data for checking mmcmt: the reference
CMT computation (also the benchmark's straightforward baseline) and
official-layout state dicts. Not imported by the models."""
from .official import custom_arch_official_shapes, random_official_state_dict
from .reference_cmt import NaiveCMT, reference_cmt

__all__ = [
    'NaiveCMT', 'custom_arch_official_shapes', 'random_official_state_dict',
    'reference_cmt'
]
