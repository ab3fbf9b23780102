"""What mmcmt's tools share: loading a config of either library and
building its runner (:mod:`.config`, CPU distributed runs in
:mod:`.distributed`), checking its data before a run (:mod:`.data_checks`),
the images a tool is given (:mod:`.image_inputs`), reporting a user's
mistakes as one line (:mod:`.errors`) and the hooks that configs name
(:mod:`.hooks`)."""
from .config import (LIBRARIES, add_cfg_options_argument, add_runner_arguments,
                     build_runner, cfg_options_errors, load_config,
                     parse_runner_args)
from .data_checks import check_data, check_images
from .distributed import CPUDistributedDataParallel, setup_cpu_distributed
from .errors import UsageError, check_file, run_main
from .hooks import AllowCheckpointGlobalsHook
from .image_inputs import IMAGE_SUFFIXES, list_images, process_images

__all__ = [
    'AllowCheckpointGlobalsHook', 'CPUDistributedDataParallel',
    'IMAGE_SUFFIXES', 'LIBRARIES', 'UsageError', 'add_cfg_options_argument',
    'add_runner_arguments', 'build_runner', 'cfg_options_errors', 'check_data',
    'check_file', 'check_images', 'list_images', 'load_config',
    'parse_runner_args', 'process_images', 'run_main', 'setup_cpu_distributed'
]
