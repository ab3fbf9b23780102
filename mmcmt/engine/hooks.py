"""Hooks that mmcmt adds to mmengine's root registry (so that mmdet's and
mmseg's configs find them too)."""
from mmengine.hooks import Hook
from mmengine.registry import HOOKS

from ..checkpoint import allow_globals


@HOOKS.register_module(force=True)
class AllowCheckpointGlobalsHook(Hook):
    """The config form of :func:`mmcmt.checkpoint.allow_globals`:
    ``custom_hooks = [dict(type='AllowCheckpointGlobalsHook',
    names=['module.Name'])]``. The names are allowed when the runner builds
    its hooks, so before it loads ``load_from`` or resumes (mmdet's and
    mmseg's tools included).

    Args:
        names (str | list[str]): the classes or functions to allow, as
            ``'module.Name'``.
    """
    priority = 'VERY_HIGH'

    def __init__(self, names):
        names = [names] if isinstance(names, str) else list(names)
        allow_globals(*names)
        self.names = names
