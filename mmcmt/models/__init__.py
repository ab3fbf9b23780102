from .backbones import CMT
from .classifier import CMTClassifier

__all__ = ['CMT', 'CMTClassifier']
