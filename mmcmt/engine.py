"""What mmcmt's tools share: loading a config of either library, checking
that its data is there, building the runner (CPU distributed runs included)
and reporting a user's mistakes as one line."""
import os
import os.path as osp
import sys
from typing import Callable, Iterator, List, Optional

from mmengine.config import Config

from .datasets.image_check import bad_images, describe, image_problem
from .safe_load import CheckpointError, is_url

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


def load_config(path: str,
                cfg_options: Optional[dict] = None,
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


def check_images(cfg: Config,
                 dataloaders: List[str],
                 skip: bool = False) -> None:
    """Fail before the run, naming them, when image files (or segmentation
    maps) that a data set lists are unreadable: empty, truncated, not
    images (:func:`mmcmt.datasets.image_problem`). With ``skip`` the data
    sets leave them out instead (their ``indices``; a COCO-style evaluator
    gets a copy of its annotation file without them, in the work dir), so
    that the run evaluates on the rest, and a warning says how many."""
    from mmengine.logging import print_log
    from mmengine.registry import DATASETS, init_default_scope

    init_default_scope(cfg.default_scope)
    for name in dataloaders:
        loader = cfg.get(name)
        if not loader:
            continue
        for dataset_cfg in _datasets(loader['dataset']):
            dataset = DATASETS.build(
                dict(dataset_cfg, pipeline=[], lazy_init=False))
            found = bad_images(dataset)
            if not found:
                continue
            if not skip:
                raise UsageError(
                    f'{name}: {len(found)} unreadable image file(s) of '
                    f'{len(dataset)}: {describe(found)}; replace them, or '
                    f'pass --skip-bad-images to run without them')
            bad = {index for index, _, _ in found}
            keep = [i for i in range(len(dataset)) if i not in bad]
            given = dataset_cfg.get('indices')
            if given is not None:  # positions in the subset it selected
                given = range(given) if isinstance(given, int) else given
                dataset_cfg['indices'] = [given[i] for i in keep]
            else:
                dataset_cfg['indices'] = keep
            _evaluate_without(cfg, name, dataset, bad)
            print_log(
                f'{name}: skipping {len(bad)} image(s) with unreadable '
                f'files ({describe(found)}); running on the other '
                f'{len(keep)}',
                'current',
                level=30)


def _evaluate_without(cfg: Config, dataloader: str, dataset, bad: set) -> None:
    """Point the evaluators that read the data set's annotation file (COCO
    AP) at a copy without the images ``bad`` (indices of ``dataset``)."""
    import json
    evaluators = cfg.get(dataloader.replace('_dataloader', '_evaluator'))
    if not evaluators:
        return
    ann_file = getattr(dataset, 'ann_file', None)
    for metric in (evaluators
                   if isinstance(evaluators, list) else [evaluators]):
        if not ann_file or not metric.get('ann_file') or \
                osp.abspath(metric['ann_file']) != osp.abspath(ann_file):
            continue
        with open(ann_file) as f:
            annotations = json.load(f)
        dropped = {dataset.get_data_info(i)['img_id'] for i in bad}
        annotations['images'] = [
            image for image in annotations['images']
            if image['id'] not in dropped
        ]
        annotations['annotations'] = [
            a for a in annotations.get('annotations', [])
            if a['image_id'] not in dropped
        ]
        os.makedirs(cfg.work_dir, exist_ok=True)
        copy = osp.join(
            cfg.work_dir,
            osp.basename(ann_file).replace('.json', '.readable_images.json'))
        with open(copy, 'w') as f:
            json.dump(annotations, f)
        metric['ann_file'] = osp.abspath(copy)


IMAGE_SUFFIXES = ('.jpg', '.jpeg', '.png', '.bmp', '.webp', '.tif', '.tiff')


def list_images(path: str) -> List[str]:
    """The image ``path`` (failing at once, in one line, when it is no
    readable image) or the image files of the folder ``path``, in name
    order (checked one by one by :func:`process_images`)."""
    if not osp.isdir(path):
        check_file(path, 'image')
        problem = image_problem(path, decode=True)
        if problem:
            raise UsageError(f'image {path!r} {problem}')
        return [path]
    paths = sorted(
        osp.join(path, name) for name in os.listdir(path)
        if name.lower().endswith(IMAGE_SUFFIXES))
    if not paths:
        raise UsageError(f'no image files ({", ".join(IMAGE_SUFFIXES)}) in '
                         f'folder {path!r}')
    return paths


def process_images(paths: List[str], process: Callable[[str], object]):
    """``process`` each readable image of ``paths``; the unreadable ones
    (empty, truncated, not images) are passed over and, once the others
    are done, reported in one line (:class:`UsageError`)."""
    bad = []
    for path in paths:
        problem = image_problem(path, decode=True)
        if problem:
            bad.append(f'{path!r} {problem}')
        else:
            process(path)
    if bad:
        raise UsageError(f'{len(bad)} of {len(paths)} images were not read: ' +
                         ', '.join(bad))


def check_file(path: str, what: str) -> None:
    """Fail naming ``path`` when it is not a file; a checkpoint may also be
    an http(s) URL (downloaded by the loader, with its own errors)."""
    if what == 'checkpoint' and is_url(path):
        return
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
        print_log(
            'sync_bn ignored: SyncBatchNorm needs GPUs; each CPU '
            'process normalises with its own batch',
            'current',
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
            if any(
                    isinstance(m, torch.nn.SyncBatchNorm)
                    for m in module.modules()):
                print_log(
                    'SyncBN layers of the model run as BatchNorm: '
                    'SyncBatchNorm needs GPUs',
                    'current',
                    level=30)
                module = revert_sync_batchnorm(module)
            super().__init__(module=module, device_ids=None, **kwargs)

    return CPUDistributedDataParallel


CPUDistributedDataParallel = _register_cpu_ddp()


def add_runner_arguments(parser) -> None:
    """The flags train.py and test.py share, as mmdet spells them."""
    from mmengine.config import DictAction
    parser.add_argument('--work-dir', help='the dir to save logs and models')
    parser.add_argument(
        '--cfg-options',
        nargs='+',
        action=DictAction,
        help='override config settings, key=value')
    parser.add_argument(
        '--launcher',
        default='none',
        choices=['none', 'pytorch', 'slurm', 'mpi'])
    parser.add_argument(
        '--skip-bad-images',
        action='store_true',
        help='leave out images whose files are unreadable (empty, truncated, '
        'not images) instead of stopping before the run')
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
