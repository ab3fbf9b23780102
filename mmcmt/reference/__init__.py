"""The released CMT computation written out plainly, independent of
:mod:`mmcmt.models`: what the fidelity tests compare mmcmt against, and
the benchmark's unoptimised baseline (:class:`NaiveCMT`, :func:`naive_cmt`),
with random state dicts in the released checkpoints' layout. Never imported
by the models."""
from .official import custom_arch_official_shapes, random_official_state_dict
from .reference_cmt import NaiveCMT, naive_cmt, reference_cmt

__all__ = [
    'NaiveCMT', 'custom_arch_official_shapes', 'naive_cmt',
    'random_official_state_dict', 'reference_cmt'
]
