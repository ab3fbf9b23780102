"""What mmcmt's tools share: loading a config of either library, checking
that its data is there, building the runner (CPU distributed runs included)
and reporting a user's mistakes as one line."""
import os
import os.path as osp
import sys
from typing import Callable, Iterator, List, Optional

from mmengine.config import Config

from .safe_load import CheckpointError

LIBRARIES = {'mmdet': 'detection', 'mmseg': 'segmentation'}


class UsageError(Exception):
    """A mistake in a tool's arguments: reported as one line, exit code 2."""


def run_main(main: Callable[[], object]) -> None:
    """Run a tool's ``main()``. The user's mistakes (bad arguments, a
    missing file, an untrusted or corrupt checkpoint) end the tool with one
    line on stderr and exit code 2, as argparse's errors do; anything else
    keeps its traceback."""
    try:
        main()
    except (UsageError, FileNotFoundError, CheckpointError) as error:
        print(f'{osp.basename(sys.argv[0])}: error: {error}', file=sys.stderr)
        sys.exit(2)


def load_config(path: str, cfg_options: Optional[dict] = None,
                work_dir: Optional[str] = None,
                launcher: str = 'none') -> Config:
    """Load a detection or segmentation config, apply ``--cfg-options`` and
    set ``work_dir`` (CLI, else the config's, else
    ``work_dirs/<config name>``) and the launcher."""
    if not osp.isfile(path):
        raise FileNotFoundError(f'config file not found: {path!r}')
    cfg = Config.fromfile(path)
    if cfg.get('default_scope') not in LIBRARIES:
        raise UsageError(
            f'{path}: default_scope is {cfg.get("default_scope")!r}; mmcmt '
            f'tools run mmdet (detection) and mmseg (segmentation) configs')
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    cfg.launcher = launcher
    if work_dir is not None:
        cfg.work_dir = work_dir
    elif cfg.get('work_dir') is None:
        cfg.work_dir = osp.join('work_dirs',
                                osp.splitext(osp.basename(path))[0])
    return cfg


def _datasets(cfg) -> Iterator[dict]:
    """Leaf dataset configs under wrappers (RepeatDataset, ConcatDataset)."""
    if 'dataset' in cfg:
        yield from _datasets(cfg['dataset'])
    elif 'datasets' in cfg:
        for dataset in cfg['datasets']:
            yield from _datasets(dataset)
    else:
        yield cfg


def check_data(cfg: Config, dataloaders: List[str]) -> None:
    """Fail early, naming the expected paths, when a dataset is missing."""
    for name in dataloaders:
        loader = cfg.get(name)
        if not loader:
            continue
        for dataset in _datasets(loader['dataset']):
            root = dataset.get('data_root') or ''
            expected = []
            if dataset.get('ann_file'):
                expected.append(osp.join(root, dataset['ann_file']))
            for prefix in (dataset.get('data_prefix') or {}).values():
                expected.append(osp.join(root, prefix))
            missing = [p for p in expected or [root] if not osp.exists(p)]
            if missing:
                raise FileNotFoundError(
                    f'{name}: dataset not found, expected {missing} '
                    f'(data_root={root!r}). Put the dataset there, or point '
                    f'the config at it with --cfg-options '
                    f'{name}.dataset.data_root=PATH')


def check_file(path: str, what: str) -> None:
    if not osp.isfile(path):
        raise FileNotFoundError(
            f'{what} not found: {path!r} (working directory {os.getcwd()})')


def setup_cpu_distributed(cfg: Config) -> None:
    """Make ``--launcher pytorch`` work on machines without CUDA (gloo).

    mmengine's launcher assumes GPUs: it calls ``torch.cuda.set_device`` and
    wraps the model in DDP with ``device_ids``. Without CUDA, the process
    group is started here on gloo (so mmengine does not start its own), the
    model is wrapped for CPU, and ``sync_bn`` is dropped with a warning
    (torch's SyncBatchNorm runs on GPUs only); SyncBN layers that the config
    builds itself (``norm_cfg=dict(type='SyncBN')`` in mmseg's heads) are
    turned back into BatchNorms by the wrapper.
    """
    import torch
    import torch.distributed as dist
    from mmengine.logging import print_log
    if cfg.launcher == 'none' or torch.cuda.is_available():
        return
    if not dist.is_initialized():
        dist.init_process_group('gloo')
    cfg.model_wrapper_cfg = dict(type='CPUDistributedDataParallel')
    if cfg.get('sync_bn'):
        print_log('sync_bn ignored: SyncBatchNorm needs GPUs; each CPU '
                  'process normalises with its own batch', 'current',
                  level=30)
        cfg.sync_bn = None


def _register_cpu_ddp():
    import torch
    from mmengine.model import MMDistributedDataParallel
    from mmengine.registry import MODEL_WRAPPERS

    @MODEL_WRAPPERS.register_module(force=True)
    class CPUDistributedDataParallel(MMDistributedDataParallel):
        """mmengine's DDP wrapper for a model on the CPU (no device ids)."""

        def __init__(self, module, device_ids=None, **kwargs):
            from mmengine.logging import print_log
            from mmengine.model import revert_sync_batchnorm
            kwargs.setdefault('broadcast_buffers', False)
            if any(isinstance(m, torch.nn.SyncBatchNorm)
                   for m in module.modules()):
                print_log('SyncBN layers of the model run as BatchNorm: '
                          'SyncBatchNorm needs GPUs', 'current', level=30)
                module = revert_sync_batchnorm(module)
            super().__init__(module=module, device_ids=None, **kwargs)

    return CPUDistributedDataParallel


CPUDistributedDataParallel = _register_cpu_ddp()


def add_runner_arguments(parser) -> None:
    """The flags train.py and test.py share, as mmdet spells them."""
    from mmengine.config import DictAction
    parser.add_argument('--work-dir', help='the dir to save logs and models')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config settings, key=value')
    parser.add_argument('--launcher', default='none',
                        choices=['none', 'pytorch', 'slurm', 'mpi'])
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)


def parse_runner_args(parser, argv=None):
    args = parser.parse_args(argv)
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    return args


def build_runner(cfg: Config):
    """mmengine's Runner (or the config's ``runner_type``), after making
    distributed launches work without CUDA."""
    from mmengine.registry import RUNNERS
    from mmengine.runner import Runner
    setup_cpu_distributed(cfg)
    if 'runner_type' in cfg:
        return RUNNERS.build(cfg)
    return Runner.from_cfg(cfg)
