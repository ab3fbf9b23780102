"""mmcmt: CMT backbones for MMDetection and MMSegmentation."""
from .checkpoint import safe_load
from .engine import hooks  # noqa: F401 (registers AllowCheckpointGlobalsHook)
from .models import CMT, CMTClassifier
from .registry import register_detection_components, register_models
from .version import __version__

__all__ = ['CMT', 'CMTClassifier', '__version__']

safe_load.install()
register_models(CMT, CMTClassifier)
register_detection_components()
