"""Registers mmcmt's models in the OpenMMLab registries that are installed.

``type='CMT'`` then builds from mmdet and mmseg configs (with
``custom_imports = dict(imports=['mmcmt'], allow_failed_imports=False)``).
mmdet and mmseg are optional here: without them, mmcmt is plain PyTorch.
"""
import importlib

from mmengine.registry import MODELS as MMENGINE_MODELS

DOWNSTREAM = ('mmdet', 'mmseg')


def register_models(*modules):
    """Register ``modules`` in mmengine's root registry and in those of mmdet
    and mmseg, when installed."""
    registries = [MMENGINE_MODELS]
    for library in DOWNSTREAM:
        try:
            registries.append(
                importlib.import_module(f'{library}.registry').MODELS)
        except ImportError:
            continue
    for registry in registries:
        for module in modules:
            registry.register_module(module=module, force=True)


def register_detection_components():
    """Register mmcmt's hook and metric in mmdet's registries, when mmdet is
    installed (``type='ClassAgnosticDetVisualizationHook'`` in
    ``default_hooks``, ``type='FoundObjectsMetric'`` in ``val_evaluator``).
    """
    try:
        from mmdet.registry import HOOKS, METRICS
    except ImportError:
        return
    from .evaluation import FoundObjectsMetric
    from .visualization import ClassAgnosticDetVisualizationHook
    HOOKS.register_module(module=ClassAgnosticDetVisualizationHook, force=True)
    METRICS.register_module(module=FoundObjectsMetric, force=True)
