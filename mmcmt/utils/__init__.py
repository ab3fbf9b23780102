from .complexity import count_flops, count_params

__all__ = ['count_flops', 'count_params']
