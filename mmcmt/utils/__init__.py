from .amp import AMP_DTYPES, autocast, autocast_networks
from .complexity import complexity, complexity_table, count_flops, count_params
from .data_samples import dummy_data_samples
from .files import check_new_folder
from .tensors import relative_error

__all__ = [
    'AMP_DTYPES', 'autocast', 'autocast_networks', 'check_new_folder',
    'complexity', 'complexity_table', 'count_flops', 'count_params',
    'dummy_data_samples', 'relative_error'
]
