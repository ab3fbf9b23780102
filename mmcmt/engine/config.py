"""Loading a detection or segmentation config and building its runner with
the flags that mmdet's train.py and test.py take."""
import contextlib
import os
import os.path as osp
import re
from typing import Optional

from mmengine.config import Config

from .distributed import setup_cpu_distributed
from .errors import UsageError

LIBRARIES = {'mmdet': 'detection', 'mmseg': 'segmentation'}


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
    for key, value in (cfg_options or {}).items():  # one by one: the culprit
        try:
            cfg.merge_from_dict({key: value})
        except (KeyError, TypeError, ValueError) as error:
            reason = str(error).strip('"\'').splitlines()[0]
            reason = re.sub(r'list \[.*', 'list', reason)[:200]  # no repr
            raise UsageError(f'--cfg-options {key}={value!r} does not fit the '
                             f'config: {reason}') from None
    cfg.launcher = launcher
    if work_dir is not None:
        cfg.work_dir = work_dir
    elif cfg.get('work_dir') is None:
        cfg.work_dir = osp.join('work_dirs',
                                osp.splitext(osp.basename(path))[0])
    return cfg


def add_cfg_options_argument(parser) -> None:
    """``--cfg-options key=value ...``, as mmdet's tools take it."""
    from mmengine.config import DictAction
    parser.add_argument(
        '--cfg-options',
        nargs='+',
        action=DictAction,
        help='override config settings, key=value')


@contextlib.contextmanager
def cfg_options_errors(cfg_options: Optional[dict]):
    """While what the config describes is built: a class that refuses an
    argument that a ``--cfg-options`` key names (``TypeError: ...
    unexpected keyword argument 'name'``, a misspelt key) ends the tool with
    one line naming the key, not the builder's traceback."""
    try:
        yield
    except TypeError as error:
        text = str(error)
        refused = re.search(r"unexpected keyword argument '(\w+)'", text)
        keys = [
            key for key in cfg_options or {}
            if refused and refused[1] in key.split('.')
        ]
        if not keys:
            raise
        # 'CMT.__init__() got ...' (Python 3.10+), '__init__() got ...'
        owner = re.search(r'(\w+)\.__init__\(\)', text)
        raise UsageError(f'--cfg-options {keys[0]}: '
                         f'{owner[1] if owner else "the object it configures"}'
                         f' takes no argument {refused[1]!r} (check the '
                         f'key\'s spelling)') from None


def add_runner_arguments(parser) -> None:
    """The flags train.py and test.py share, as mmdet spells them."""
    parser.add_argument('--work-dir', help='the dir to save logs and models')
    add_cfg_options_argument(parser)
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
