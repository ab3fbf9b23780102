from .amp import autocast_networks
from .complexity import count_flops, count_params
from .data_samples import dummy_data_samples

__all__ = [
    'autocast_networks', 'count_flops', 'count_params', 'dummy_data_samples'
]
