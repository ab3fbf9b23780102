from .relative_position import resize_relative_position_bias

__all__ = ['resize_relative_position_bias']
