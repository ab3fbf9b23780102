from .checkpoint import (convert_official_cmt, is_official_cmt, load_checked,
                         read_checkpoint)
from .relative_position import resize_relative_position_bias

__all__ = [
    'convert_official_cmt', 'is_official_cmt', 'load_checked',
    'read_checkpoint', 'resize_relative_position_bias'
]
