"""Speed and memory of CMT beside mmdet's ResNet-50, Swin-T, PVT-S and
PVTv2-b2 and a straightforward CMT: one process, the same inputs, after
warm-up, the median of repeated runs.

    python tools/benchmark.py [--device cpu|cuda] [--amp bf16|fp16]
        [--models NAME ...] [--tasks TASK ...] [--repeats 5] [--out FILE]
        [--compile]

Tasks (sizes are options):

- ``det``: backbone inference (eval, no grad) at 1x3x800x1216, a 1333x800
  COCO image after mmdet's resize and padding to a multiple of 32;
- ``cls``: backbone inference at 8x3x224x224;
- ``train``: one training step of the backbone (forward, then backward of
  the mean of its outputs) at 2x3x800x1216, and its peak memory (CPU: growth
  of the peak resident set, measured in a forked copy of the process with
  glibc returning freed memory at once; CUDA:
  ``torch.cuda.max_memory_allocated``);
- ``train_cp``: the same with ``with_cp=True`` (gradient checkpointing);
- ``retinanet``: the whole RetinaNet (backbone, FPN, head, post-processing)
  of each backbone's mmdet/mmcmt COCO config, inference at 800x1216.

Rows: the backbones, ``CMT-S fused`` (:meth:`CMT.fuse`, inference only) and
``CMT-S naive`` (:class:`mmcmt.testing.NaiveCMT`: separate q/k/v, an explicit
attention matrix, token/map reshapes, the bias resized on every forward, as
the released code would run on detection inputs). ``--compile`` adds
``torch.compile`` rows. Each row shows its multiply-adds (convolutions,
linear layers and attention products) so that time per multiply-add can be
compared. The table is printed, written to ``--out`` (markdown) and
followed by the README's goals, each checked.
"""
import quiet_imports  # noqa: F401  (first: third-party import noise)
import argparse
import ctypes
import datetime
import gc
import os
import os.path as osp
import platform
import statistics
import sys
import time
import warnings
from collections import OrderedDict

import torch

from mmcmt.models import CMT
from mmcmt.testing import (NaiveCMT, custom_arch_official_shapes,
                           random_official_state_dict)
from mmcmt.utils import count_flops, count_params, dummy_data_samples

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
TASKS = ('det', 'cls', 'train', 'train_cp', 'retinanet')
BASELINE = 'ResNet-50'

# name -> (backbone config, RetinaNet config); all four outputs, random init
BACKBONES = OrderedDict([
    ('ResNet-50', (dict(type='mmdet.ResNet', depth=50),
                   'mmdet::retinanet/retinanet_r50_fpn_1x_coco.py')),
    ('Swin-T', (dict(type='mmdet.SwinTransformer', embed_dims=96,
                     depths=[2, 2, 6, 2], num_heads=[3, 6, 12, 24],
                     window_size=7, out_indices=(0, 1, 2, 3)),
                'mmdet::swin/retinanet_swin-t-p4-w7_fpn_1x_coco.py')),
    ('PVT-S', (dict(type='mmdet.PyramidVisionTransformer',
                    num_layers=[3, 4, 6, 3]),
               'mmdet::pvt/retinanet_pvt-s_fpn_1x_coco.py')),
    ('PVTv2-b2', (dict(type='mmdet.PyramidVisionTransformerV2',
                       embed_dims=64, num_layers=[3, 4, 6, 3]),
                  'mmdet::pvt/retinanet_pvtv2-b2_fpn_1x_coco.py')),
] + [(f'CMT-{short}', (dict(type='mmdet.CMT', arch=arch),
                       f'configs/retinanet_cmt_{short.lower()}_fpn_1x_coco.py'))
     for short, arch in (('Ti', 'tiny'), ('XS', 'xs'), ('S', 'small'),
                         ('B', 'base'))])
# variant rows: name -> (backbone row, variant)
VARIANTS = OrderedDict([('CMT-S fused', ('CMT-S', 'fused')),
                        ('CMT-S naive', ('CMT-S', 'naive'))])
COMPILED = OrderedDict([('ResNet-50 compiled', ('ResNet-50', 'compiled')),
                        ('CMT-S fused compiled', ('CMT-S', 'fused compiled'))])
NO_CP = ('PVT-S', 'PVTv2-b2')  # mmdet's PVTs have no with_cp


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split('\n')[0],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--device', default='cpu', help='cpu or cuda')
    parser.add_argument('--amp', choices=['bf16', 'fp16'],
                        help='run under torch.autocast with this dtype')
    parser.add_argument('--models', nargs='+', help='rows to run (default: '
                        'all; ResNet-50 is always run, as the baseline)')
    parser.add_argument('--tasks', nargs='+', choices=TASKS,
                        default=list(TASKS))
    parser.add_argument('--compile', action='store_true',
                        help='add torch.compile rows (compile time is '
                        'reported, not timed)')
    parser.add_argument('--repeats', type=int, default=5)
    parser.add_argument('--train-repeats', type=int,
                        help='repeats of the training tasks (default: '
                        '--repeats; a step at 800x1216 takes tens of seconds '
                        'on a CPU)')
    parser.add_argument('--warmup', type=int, default=1)
    parser.add_argument('--det-shape', type=int, nargs=3,
                        default=[1, 800, 1216], metavar=('B', 'H', 'W'))
    parser.add_argument('--cls-shape', type=int, nargs=3,
                        default=[8, 224, 224], metavar=('B', 'H', 'W'))
    parser.add_argument('--train-shape', type=int, nargs=3,
                        default=[2, 800, 1216], metavar=('B', 'H', 'W'))
    parser.add_argument('--threads', type=int,
                        help='torch CPU threads (default: torch\'s)')
    parser.add_argument('--out', help='markdown file to write (default: '
                        'work_dirs/benchmark/<device>_<time>.md); an existing'
                        ' file is never overwritten')
    args = parser.parse_args(argv)
    rows = OrderedDict([(name, (name, '')) for name in BACKBONES] +
                       list(VARIANTS.items()) +
                       (list(COMPILED.items()) if args.compile else []))
    names = args.models or list(rows)
    unknown = [n for n in names if n not in rows]
    if unknown:
        parser.error(f'unknown models {unknown}; choose from {list(rows)}')
    if BASELINE not in names:
        names.insert(0, BASELINE)
    args.rows = OrderedDict((n, rows[n]) for n in rows if n in names)
    if args.out and osp.exists(args.out):
        parser.error(f'{args.out} exists; choose another --out (results '
                     f'are never overwritten)')
    return args


# ---------------------------------------------------------------- measuring
def synchronize(device):
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def median_time(fn, device, warmup, repeats):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


M_MMAP_THRESHOLD = -3  # glibc mallopt parameter


def cuda_peak_memory(fn, device):
    """The caching allocator's peak (bytes) during ``fn()`` above what was
    allocated before."""
    gc.collect()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    fn()
    synchronize(device)
    return torch.cuda.max_memory_allocated(device) - base


def cpu_peak_memory(args, base, variant, with_cp):
    """Peak memory (bytes) of one CPU training step, or None (not Linux).

    Measured in a fresh process, which builds the same model and inputs: the
    growth of its peak resident set (VmHWM) over the step, with glibc
    serving every allocation of 64 KiB or more by its own mapping and
    unmapping it on free, so that the figure counts live memory, not what
    the allocator keeps cached from other rows.
    """
    if not osp.exists('/proc/self/clear_refs'):
        return None
    gc.collect()
    ctypes.CDLL('libc.so.6').malloc_trim(0)  # room for the child
    import multiprocessing
    context = multiprocessing.get_context('spawn')
    queue = context.SimpleQueue()
    child = context.Process(target=_child_train_memory,
                            args=(args, base, variant, with_cp, queue))
    child.start()
    child.join()
    if child.exitcode != 0 or queue.empty():
        raise RuntimeError(f'memory measurement of {base} failed '
                           f'(exit code {child.exitcode})')
    return queue.get()


def _child_train_memory(args, base, variant, with_cp, queue):
    ctypes.CDLL('libc.so.6').mallopt(M_MMAP_THRESHOLD, 64 << 10)
    if args.threads:
        torch.set_num_threads(args.threads)
    setup_process()
    model = build_backbone(base, variant, with_cp=with_cp)
    model.train()
    x = make_inputs(args, torch.device('cpu'))['train']
    gc.collect()
    ctypes.CDLL('libc.so.6').malloc_trim(0)
    start = _status_kib('VmRSS')
    with open('/proc/self/clear_refs', 'w') as f:
        f.write('5')  # reset VmHWM to the current RSS
    train_step(model, x, args.amp)
    queue.put((_status_kib('VmHWM') - start) * 1024)


def setup_process():
    """Registries, a quiet logger (init_weights logs every parameter at
    INFO) and the seed, in the main process and in memory-measuring ones."""
    import mmcmt  # noqa: F401  (registers CMT in mmdet)
    from mmengine.logging import MMLogger
    from mmengine.registry import init_default_scope
    MMLogger.get_instance('benchmark', log_level='WARNING')
    init_default_scope('mmdet')
    torch.manual_seed(0)


def _status_kib(field):
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith(field + ':'):
                return int(line.split()[1])
    raise RuntimeError(f'{field} not in /proc/self/status')


# ------------------------------------------------------------------- models
def build_backbone(name, variant, with_cp=False):
    from mmdet.registry import MODELS
    cfg = dict(BACKBONES[name][0])
    if variant == 'naive':
        settings = CMT.parse_arch(cfg['arch'])
        shapes = custom_arch_official_shapes(
            CMT, cfg['arch'], img_size=settings['pretrain_img_size'])
        state = {k: v for k, v in random_official_state_dict(shapes).items()
                 if not k.startswith(('_fc', '_bn', 'head'))}
        return NaiveCMT(state, settings)
    if with_cp:
        cfg['with_cp'] = True
    model = MODELS.build(cfg)
    model.init_weights()
    return model


def inference_model(model, variant):
    model.eval()  # (mmdet's ResNet.train() returns None: no chaining)
    if 'fused' in variant:
        model.fuse()
    if 'compiled' in variant:
        model = torch.compile(model)
    return model


def build_retinanet(name, variant):
    from mmengine.config import Config
    from mmengine.hub import get_config
    from mmdet.registry import MODELS
    path = BACKBONES[name][1]
    cfg = get_config(path) if '::' in path else Config.fromfile(
        osp.join(ROOT, path))
    cfg.model.backbone.init_cfg = None
    cfg.model.pop('data_preprocessor', None)
    model = MODELS.build(cfg.model)
    model.init_weights()
    model.eval()
    if 'fused' in variant:
        model.backbone.fuse()
    if 'compiled' in variant:
        model.backbone = torch.compile(model.backbone)
    return model


def count_macs(model, shape):
    """Multiply-adds (G) of one ``1 x 3 x H x W`` image, or None."""
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter('ignore')  # the tracer's chatter
            flops = count_flops(model, (torch.rand(1, 3, *shape[1:]), ))
        return flops['macs'] / 1e9
    except Exception as error:  # a model the tracer cannot follow
        print(f'  (MACs not counted: {error})', file=sys.stderr)
        return None


# -------------------------------------------------------------------- tasks
class Bench:

    def __init__(self, args):
        self.args = args
        self.device = torch.device(args.device)
        self.inputs = make_inputs(args, self.device)

    def autocast(self):
        return autocast(self.device, self.args.amp)

    def time(self, fn, repeats=None):
        return median_time(fn, self.device, self.args.warmup,
                           repeats or self.args.repeats)

    def infer(self, model, x):
        def run():
            with torch.no_grad(), self.autocast():
                model(x)
        return self.time(run)

    def train_step(self, model, base, variant, with_cp=False):
        """Median time and peak memory of a training step."""
        model.train()
        x = self.inputs['train']

        def step():
            train_step(model, x, self.args.amp)

        if self.device.type == 'cuda':
            return (self.time(step, self.args.train_repeats),
                    cuda_peak_memory(step, self.device))
        # memory first, while this process holds little
        memory = cpu_peak_memory(self.args, base, variant, with_cp)
        return self.time(step, self.args.train_repeats), memory

    def retinanet(self, model):
        x = self.inputs['det']
        samples = [s.to(self.device) for s in dummy_data_samples(
            'mmdet', *x.shape[-2:], batch_size=x.shape[0])]

        def run():
            with torch.no_grad(), self.autocast():
                model.predict(x, samples)
        return self.time(run)


def make_inputs(args, device):
    """The random inputs of the tasks, the same in every process."""
    generator = torch.Generator().manual_seed(0)
    inputs = {}
    for task in ('det', 'cls', 'train'):
        batch, height, width = getattr(args, f'{task}_shape')
        inputs[task] = torch.randn(batch, 3, height, width,
                                   generator=generator).to(device)
    return inputs


def autocast(device, amp):
    if not amp:
        return torch.autocast(device.type, enabled=False)
    dtype = dict(bf16=torch.bfloat16, fp16=torch.float16)[amp]
    return torch.autocast(device.type, dtype=dtype)


def train_step(model, x, amp):
    """Forward, backward of the mean of the outputs, gradients dropped."""
    with autocast(x.device, amp):
        loss = sum(out.float().mean() for out in model(x))
    loss.backward()
    for p in model.parameters():
        p.grad = None


def measure_row(bench, name, base, variant, tasks):
    """Figures of one row: ``{column: value}``."""
    args, device = bench.args, bench.device
    row = {}
    model = build_backbone(base, variant).to(device)
    row['params'] = count_params(model) / 1e6
    if 'compiled' not in variant:  # the tracer counts the eager model
        model.eval()  # (mmdet's ResNet.train() returns None: no chaining)
        for task in ('det', 'cls'):
            row[f'{task}_macs'] = count_macs(model,
                                             getattr(args, f'{task}_shape'))
    if variant == 'naive':
        row['check'] = naive_matches_cmt(model, bench)
    if 'train' in tasks and variant in ('', 'naive'):
        row['train'], row['train_mem'] = bench.train_step(model, base,
                                                           variant)
    model = inference_model(model, variant)
    start = time.perf_counter()
    for task in ('det', 'cls'):
        if task in tasks:
            row[task] = bench.infer(model, bench.inputs[task])
    if 'compiled' in variant:
        row['note'] = (f'compile + warm-up '
                       f'{time.perf_counter() - start:.0f} s')
    del model
    if 'train_cp' in tasks and variant == '' and base not in NO_CP:
        model = build_backbone(base, variant, with_cp=True).to(device)
        row['train_cp'], row['train_cp_mem'] = bench.train_step(
            model, base, variant, with_cp=True)
        del model
    if 'retinanet' in tasks and variant != 'naive':
        row['retinanet'] = bench.retinanet(
            build_retinanet(base, variant).to(device))
    gc.collect()
    return row


def naive_matches_cmt(naive, bench):
    """Max relative error between the naive row and mmcmt's CMT loaded with
    the same (official-layout) weights, on the ``cls`` input."""
    model = CMT(naive.settings).to(bench.device).eval()
    model.load_state_dict(naive.state(), strict=True)
    naive.eval()
    x = bench.inputs['cls'][:2]
    with torch.no_grad():
        errors = [((a - b).abs().max() / b.abs().max()).item()
                  for a, b in zip(model(x), naive(x))]
    return max(errors)


# ------------------------------------------------------------------- report
COLUMNS = [
    # (key, header, format, ratio to the baseline)
    ('params', 'params (M)', '{:.1f}', False),
    ('det_macs', 'GMACs {det}', '{:.1f}', False),
    ('det', 'infer {det} (s)', '{:.3f}', True),
    ('cls_macs', 'GMACs {cls} (per image)', '{:.2f}', False),
    ('cls', 'infer {cls} (s)', '{:.3f}', True),
    ('train', 'train step {train} (s)', '{:.2f}', True),
    ('train_mem', 'peak memory (GiB)', '{:.2f}', False),
    ('train_cp', 'train step with_cp (s)', '{:.2f}', True),
    ('train_cp_mem', 'peak memory with_cp (GiB)', '{:.2f}', False),
    ('retinanet', 'RetinaNet infer {det} (s)', '{:.3f}', True),
]


def format_table(results, args):
    sizes = {task: '{}x{}x{}'.format(*getattr(args, f'{task}_shape'))
             for task in ('det', 'cls', 'train')}
    used = [c for c in COLUMNS
            if any(c[0] in row for row in results.values())]
    headers = ['model'] + [c[1].format(**sizes) for c in used]
    lines = ['| ' + ' | '.join(headers) + ' |',
             '|' + '---|' * len(headers)]
    base = results[BASELINE]
    for name, row in results.items():
        cells = [name]
        for key, _, fmt, ratio in used:
            value = row.get(key)
            if value is None:
                cells.append('n/a')
                continue
            if key.endswith('mem'):
                value /= 2**30
            cell = fmt.format(value)
            if ratio and base.get(key):
                cell += f' ({row[key] / base[key]:.2f}x)'
            cells.append(cell)
        lines.append('| ' + ' | '.join(cells) + ' |')
    notes = [f'- {name}: {row["note"]}' for name, row in results.items()
             if row.get('note')]
    if 'CMT-S naive' in results and 'check' in results['CMT-S naive']:
        notes.append(f'- CMT-S naive computes what CMT-S computes: max '
                     f'relative error {results["CMT-S naive"]["check"]:.1e} '
                     f'on the {sizes["cls"]} input (same weights).')
    return '\n'.join(lines + [''] + notes)


def check_goals(results):
    """The README's speed and memory goals: ``[(goal, value, passed)]``."""
    r, s = results.get(BASELINE, {}), results.get('CMT-S', {})
    goals = []

    def ratio(a, b):
        return a / b if a and b else None

    def add(text, value, passed):
        if value is not None:
            goals.append((text, value, passed(value)))

    add('CMT-S det time <= 1.8x ResNet-50', ratio(s.get('det'), r.get('det')),
        lambda v: v <= 1.8)
    for other in ('PVT-S', 'PVTv2-b2'):
        add(f'CMT-S det faster than {other} (time ratio < 1)',
            ratio(s.get('det'), results.get(other, {}).get('det')),
            lambda v: v < 1)
    add('CMT-S naive det time >= 1.5x CMT-S',
        ratio(results.get('CMT-S naive', {}).get('det'), s.get('det')),
        lambda v: v >= 1.5)
    add('CMT-S cls time <= 1.15x ResNet-50',
        ratio(s.get('cls'), r.get('cls')), lambda v: v <= 1.15)
    add('CMT-S with_cp peak memory <= 0.5x without',
        ratio(s.get('train_cp_mem'), s.get('train_mem')), lambda v: v <= 0.5)
    return goals


def machine(device):
    if device.type == 'cuda':
        return torch.cuda.get_device_name(device)
    name = platform.processor() or platform.machine()
    try:
        with open('/proc/cpuinfo') as f:
            name = next(line.split(':', 1)[1].strip() for line in f
                        if line.startswith('model name'))
    except (OSError, StopIteration):
        pass
    return f'{name}, {torch.get_num_threads()} threads'


def main(argv=None):
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == 'cuda' and not torch.cuda.is_available():
        sys.exit('error: --device cuda but torch sees no CUDA device')
    setup_process()
    bench = Bench(args)
    results = OrderedDict()
    for name, (base, variant) in args.rows.items():
        print(f'{name} ...', flush=True)
        results[name] = measure_row(bench, name, base, variant, args.tasks)
    stamp = datetime.datetime.now()
    header = (f'Measured {stamp:%Y-%m-%d %H:%M} on {machine(device)}; '
              f'torch {torch.__version__}, '
              f'{"autocast " + args.amp if args.amp else "float32"}; median '
              f'of {args.repeats} runs (training: '
              f'{args.train_repeats or args.repeats}) after {args.warmup} '
              f'warm-up; ratios to {BASELINE} in parentheses; memory: '
              f'{"max_memory_allocated" if device.type == "cuda" else "peak RSS growth of a training step in a fresh process"}.')
    goals = check_goals(results)
    text = '\n'.join(
        [header, '', format_table(results, args), ''] +
        ([f'- goal: {g}: {v:.2f} {"PASS" if ok else "FAIL"}'
          for g, v, ok in goals] if goals else []))
    print('\n' + text)
    out = args.out or osp.join(
        'work_dirs', 'benchmark', f'{device.type}_{stamp:%Y%m%d_%H%M%S}.md')
    os.makedirs(osp.dirname(osp.abspath(out)), exist_ok=True)
    with open(out, 'x') as f:
        f.write(text + '\n')
    print(f'\nwrote {out}')
    return results, goals


if __name__ == '__main__':
    main()
