from .cmt import CMT

__all__ = ['CMT']
