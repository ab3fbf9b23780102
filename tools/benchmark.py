"""Speed and memory of CMT beside mmdet's ResNet-50, Swin-T, PVT-S and
PVTv2-b2 and a straightforward CMT, measured fairly: one process, the same
inputs, every model once per round in a rotating order, after warm-up.

    python tools/benchmark.py [--device cpu|cuda] [--amp bf16|fp16]
        [--models NAME ...] [--tasks TASK ...] [--rounds 5] [--out FILE]
        [--compile]

Tasks (sizes are options):

- ``det``: backbone inference (eval, no grad) at 1x3x800x1216, a 1333x800
  COCO image after mmdet's resize and padding to a multiple of 32;
- ``stream``: backbone inference over a COCO-like stream of sizes, the
  padded sizes mmdet's 1333x800 keep-ratio resize gives for common COCO
  image shapes, in a fixed shuffled order (so that caches keyed on the size
  are exercised as in a COCO evaluation); the time of the whole stream,
  and beside it the same-size time: each image is run a second time right
  after, and those second runs (the size unchanged) are summed;
- ``cls`` and ``cls64``: backbone inference at 8x3x224x224 and 64x3x224x224;
- ``retinanet`` and ``retinanet_stream``: the whole RetinaNet (backbone,
  FPN, head, post-processing) of each backbone's COCO config at 800x1216
  and over the stream;
- ``train``: one training step of the backbone (forward, then backward of
  the mean of its outputs) at 2x3x800x1216, and its peak memory (CPU: growth
  of the peak resident set, measured in a fresh process with glibc returning
  freed memory at once; CUDA: ``torch.cuda.max_memory_allocated``);
- ``train_cp``: the same with ``with_cp=True`` (gradient checkpointing);
- ``deploy``: the whole RetinaNet at 800x1216 exported by
  :func:`mmcmt.deploy.export_detector` and run by ONNX Runtime (CPU, all
  graph optimisations, as many threads as torch), its networks' graphs plus
  mmdet's post-processing, interleaved with the same model in PyTorch
  (eager); for ResNet-50, CMT-Ti and CMT-S. Then the share of ONNX
  Runtime's kernel time per operator type for CMT-S (its profiler), so
  that what softmax, GELU and LayerNorm cost is measured.

How it measures: for each task every row's model is built, then each round
runs every model once, starting one model further along each round, after
``--warmup`` rounds; so slow drifts of the machine reach every model alike.
Each cell gives the median time over the rounds with its spread
``[min-max]``, and the ratio to ResNet-50 computed per round (the median of
the per-round ratios, with their spread).

The heap (``--heap``): glibc serves a large allocation (above its mmap
threshold, which it raises up to 32 MB as large blocks are freed) with a
fresh mapping, whose every page faults on first touch. How many a model
takes then depends on what ran before in the process, not on the model:
ResNet-50 at 1x3x800x1216 took 0.23-0.42 M minor faults per forward and
1.5-1.9 s in fresh processes, 1.2 s with 3-4 thousand faults when freed
memory is kept; 1.27-1.69 s in runs of this tool that left glibc alone,
while CMT-S stayed at 2.3-2.4 s. So by default (``steady``) the
benchmark has glibc keep freed memory for reuse, as jemalloc and tcmalloc
do: the timed runs take almost no page faults and measure the models'
computation. ``--heap default`` leaves glibc's settings as they are.

Rows: the backbones, ``CMT-S fused`` (:meth:`CMT.fuse`, inference only) and
``CMT-S naive`` (:class:`mmcmt.reference.NaiveCMT`: separate q/k/v, an explicit
attention matrix, token/map reshapes, the bias resized on every forward, as
the released code would run on detection inputs). ``--compile`` adds
``torch.compile`` rows (compile time reported in a note). Each row shows its
multiply-adds (convolutions, linear layers and attention products). With
``--amp`` a column gives each backbone's relative error against float32 on
the ``det`` input. The table is printed, written to ``--out`` (markdown)
and followed by the speed and memory goals (docs/advanced_guides/
speed_and_memory.md), each checked.
"""
import quiet_imports  # noqa: F401 isort: skip (first: import noise)
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

from mmcmt.engine import run_main
from mmcmt.models import CMT
from mmcmt.reference import (NaiveCMT, custom_arch_official_shapes,
                           random_official_state_dict)
from mmcmt.utils import (autocast_networks, count_flops, count_params,
                         dummy_data_samples)

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
INFER_TASKS = ('det', 'stream', 'cls', 'cls64')
DETECTOR_TASKS = ('retinanet', 'retinanet_stream')
TRAIN_TASKS = ('train', 'train_cp')
DEPLOY_TASKS = ('deploy', )
TASKS = INFER_TASKS + DETECTOR_TASKS + TRAIN_TASKS + DEPLOY_TASKS
#: Rows of the ``deploy`` task.
DEPLOY_ROWS = ('ResNet-50', 'CMT-Ti', 'CMT-S')
BASELINE = 'ResNet-50'
#: Padded input sizes (H, W) of mmdet's 1333x800 keep-ratio resize for
#: common COCO image shapes (640x480, 640x427, 480x640, 640x360, 500x375,
#: 480x480, 427x640, 640x383), in a fixed shuffled order.
COCO_STREAM = [(800, 1216), (800, 800), (1216, 800), (800, 1088), (768, 1344),
               (1088, 800), (800, 1344), (800, 1024)]

# name -> (backbone config, RetinaNet config); all four outputs, random init
BACKBONES = OrderedDict([
    ('ResNet-50', (dict(type='mmdet.ResNet', depth=50),
                   'mmdet::retinanet/retinanet_r50_fpn_1x_coco.py')),
    ('Swin-T', (dict(
        type='mmdet.SwinTransformer',
        embed_dims=96,
        depths=[2, 2, 6, 2],
        num_heads=[3, 6, 12, 24],
        window_size=7,
        out_indices=(0, 1, 2, 3)),
                'mmdet::swin/retinanet_swin-t-p4-w7_fpn_1x_coco.py')),
    ('PVT-S',
     (dict(type='mmdet.PyramidVisionTransformer', num_layers=[3, 4, 6, 3]),
      'mmdet::pvt/retinanet_pvt-s_fpn_1x_coco.py')),
    ('PVTv2-b2', (dict(
        type='mmdet.PyramidVisionTransformerV2',
        embed_dims=64,
        num_layers=[3, 4, 6, 3]),
                  'mmdet::pvt/retinanet_pvtv2-b2_fpn_1x_coco.py')),
] + [(f'CMT-{short}',
      (dict(type='mmdet.CMT', arch=arch),
       f'configs/retinanet_cmt_{short.lower()}_fpn_1x_coco.py'))
     for short, arch in (('Ti', 'tiny'), ('XS', 'xs'), ('S', 'small'),
                         ('B', 'base'))])
# variant rows: name -> (backbone row, variant)
VARIANTS = OrderedDict([('CMT-S fused', ('CMT-S', 'fused')),
                        ('CMT-S naive', ('CMT-S', 'naive'))])
COMPILED = OrderedDict([('ResNet-50 compiled', ('ResNet-50', 'compiled')),
                        ('CMT-S compiled', ('CMT-S', 'compiled'))])
NO_CP = ('PVT-S', 'PVTv2-b2')  # mmdet's PVTs have no with_cp


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split('\n')[0],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--device', default='cpu', help='cpu or cuda')
    parser.add_argument(
        '--amp',
        choices=['bf16', 'fp16'],
        help='run under torch.autocast with this dtype')
    parser.add_argument(
        '--models',
        nargs='+',
        help='rows to run (default: '
        'all; ResNet-50 is always run, as the baseline)')
    parser.add_argument(
        '--tasks', nargs='+', choices=TASKS, default=list(TASKS))
    parser.add_argument(
        '--compile',
        action='store_true',
        help='add torch.compile rows (compile time is '
        'reported, not timed)')
    parser.add_argument(
        '--rounds',
        type=int,
        default=5,
        help='measured rounds (each runs every model once)')
    parser.add_argument(
        '--train-rounds',
        type=int,
        help='rounds of the training tasks (default: '
        '--rounds; a step at 800x1216 takes tens of seconds '
        'on a CPU)')
    parser.add_argument(
        '--warmup',
        type=int,
        default=1,
        help='warm-up rounds before the measured ones')
    parser.add_argument(
        '--det-shape',
        type=int,
        nargs=3,
        default=[1, 800, 1216],
        metavar=('B', 'H', 'W'))
    parser.add_argument(
        '--cls-shape',
        type=int,
        nargs=3,
        default=[8, 224, 224],
        metavar=('B', 'H', 'W'))
    parser.add_argument(
        '--cls64-shape',
        type=int,
        nargs=3,
        default=[64, 224, 224],
        metavar=('B', 'H', 'W'))
    parser.add_argument(
        '--train-shape',
        type=int,
        nargs=3,
        default=[2, 800, 1216],
        metavar=('B', 'H', 'W'))
    parser.add_argument(
        '--stream-scale',
        type=float,
        default=1.,
        help='scale the stream\'s sizes (to a multiple of '
        '32), for quick runs')
    parser.add_argument(
        '--heap',
        choices=['steady', 'default'],
        default='steady',
        help='steady: glibc keeps freed memory for reuse, '
        'so timings do not depend on page faults; default: '
        'glibc\'s own settings (see the docstring)')
    parser.add_argument(
        '--threads', type=int, help='torch CPU threads (default: torch\'s)')
    parser.add_argument(
        '--out',
        help='markdown file to write (default: '
        'work_dirs/benchmark/<device>_<time>.md); an existing'
        ' file is never overwritten')
    args = parser.parse_args(argv)
    rows = OrderedDict([(name, (name, ''))
                        for name in BACKBONES] + list(VARIANTS.items()) +
                       (list(COMPILED.items()) if args.compile else []))
    names = args.models or list(rows)
    unknown = [n for n in names if n not in rows]
    if unknown:
        parser.error(f'unknown models {unknown}; choose from {list(rows)}')
    if BASELINE not in names:
        names.insert(0, BASELINE)
    args.rows = OrderedDict((n, rows[n]) for n in rows if n in names)
    if 'deploy' in args.tasks and (args.device != 'cpu' or args.amp):
        parser.error('the deploy task measures ONNX Runtime on the CPU in '
                     'float32: leave it out (--tasks) with --device cuda or '
                     '--amp')
    if args.rounds < 1 or args.warmup < 0:
        parser.error('--rounds must be at least 1 and --warmup at least 0')
    args.stream = [
        tuple(
            max(32,
                round(side * args.stream_scale / 32) * 32) for side in size)
        for size in COCO_STREAM
    ]
    if args.out and osp.exists(args.out):
        parser.error(f'{args.out} exists; choose another --out (results '
                     f'are never overwritten)')
    return args


# ---------------------------------------------------------------- measuring
def synchronize(device):
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def interleaved(runs, device, rounds, warmup):
    """Time each of ``runs`` (name -> function) once per round, in an order
    that starts one further along each round. Returns name -> the measured
    rounds' times (seconds); the first ``warmup`` rounds are not kept. A
    function may return its own timings (a dict, key -> seconds): they are
    kept instead of its wall time."""
    names = list(runs)
    times = {name: [] for name in names}
    for index in range(warmup + rounds):
        shift = index % len(names)
        for name in names[shift:] + names[:shift]:
            synchronize(device)
            start = time.perf_counter()
            timings = runs[name]()
            synchronize(device)
            if index >= warmup:
                times[name].append(
                    timings if isinstance(timings, dict
                                          ) else time.perf_counter() - start)
    return times


class Figure:
    """A measured quantity: its median and spread over rounds."""

    def __init__(self, values):
        self.values = list(values)
        self.median = statistics.median(self.values)
        self.low, self.high = min(self.values), max(self.values)

    def ratio_to(self, base: 'Figure') -> 'Figure':
        """Per-round ratios ``self / base``."""
        return Figure(a / b for a, b in zip(self.values, base.values))

    def __float__(self):
        return float(self.median)

    def format(self, fmt):
        return (f'{fmt.format(self.median)} '
                f'[{fmt.format(self.low)}-{fmt.format(self.high)}]')


M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc mallopt parameters


def set_heap(mode):
    """Put this process's allocator in the ``--heap`` regime (see the
    module's docstring); returns its description for the table's header."""
    if mode == 'default':
        return ('glibc defaults (tensors above its mmap threshold mapped '
                'afresh, with page faults)')
    try:
        libc = ctypes.CDLL('libc.so.6')
    except OSError:
        return 'the platform\'s allocator (not glibc: left as it is)'
    if not (libc.mallopt(M_MMAP_THRESHOLD, 1 << 30)
            and libc.mallopt(M_TRIM_THRESHOLD, 2**31 - 1)):
        return 'glibc defaults (mallopt refused the steady settings)'
    return 'steady (glibc keeps freed memory for reuse: no page faults)'


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
    child = context.Process(
        target=_child_train_memory, args=(args, base, variant, with_cp, queue))
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
    from mmengine.logging import MMLogger
    from mmengine.registry import init_default_scope

    import mmcmt  # noqa: F401  (registers CMT in mmdet)
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
        state = {
            k: v
            for k, v in random_official_state_dict(shapes).items()
            if not k.startswith(('_fc', '_bn', 'head'))
        }
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


def retinanet_config(name):
    """The COCO RetinaNet config of a backbone row, without pretrained
    weights."""
    from mmengine.config import Config
    from mmengine.hub import get_config
    path = BACKBONES[name][1]
    cfg = get_config(path) if '::' in path else Config.fromfile(
        osp.join(ROOT, path))
    cfg.model.backbone.init_cfg = None
    return cfg


def build_retinanet(name, variant):
    """The RetinaNet (random weights, eval mode) without its data
    preprocessor: the inputs are normalised tensors already."""
    from mmdet.registry import MODELS
    cfg = retinanet_config(name)
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
def make_inputs(args, device):
    """The random inputs of the tasks, the same in every process: one tensor
    per task, a list of ``1 x 3 x H x W`` tensors for the stream."""
    generator = torch.Generator().manual_seed(0)

    def randn(*shape):
        return torch.randn(*shape, generator=generator).to(device)

    inputs = {
        task: randn(batch, 3, height, width)
        for task in ('det', 'cls', 'cls64', 'train')
        for batch, height, width in [getattr(args, f'{task}_shape')]
    }
    inputs['stream'] = [randn(1, 3, *size) for size in args.stream]
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


class Bench:
    """The inputs and settings shared by the tasks."""

    def __init__(self, args):
        self.args = args
        self.device = torch.device(args.device)
        self.inputs = make_inputs(args, self.device)

    def measure(self, runs, rounds=None):
        """name -> :class:`Figure` of seconds, interleaved (a dict of them
        for runs that time themselves)."""
        times = interleaved(runs, self.device, rounds or self.args.rounds,
                            self.args.warmup)
        return {
            name: Figure(values) if not isinstance(values[0], dict) else {
                key: Figure(v[key] for v in values)
                for key in values[0]
            }
            for name, values in times.items()
        }

    def inference(self, fn, inputs, amp=True):
        """A function running ``fn`` on each of ``inputs``, no grad, under
        autocast as asked (unless ``amp`` is False)."""

        def run():
            with torch.no_grad(), autocast(self.device, amp and self.args.amp):
                for x in inputs:
                    fn(x)

        return run

    def stream(self, fn, inputs):
        """A function running ``fn`` over the stream: each image as it comes
        (its size new to the model), then the same image again (its size
        the last one); returns both sums, ``stream`` and ``stream_same``."""

        def run():
            sums = dict(stream=0., stream_same=0.)
            with torch.no_grad(), autocast(self.device, self.args.amp):
                for x in inputs:
                    for key in sums:
                        synchronize(self.device)
                        start = time.perf_counter()
                        fn(x)
                        synchronize(self.device)
                        sums[key] += time.perf_counter() - start
            return sums

        return run

    def task_inputs(self, task):
        key = task.replace('retinanet_', '').replace('retinanet', 'det')
        value = self.inputs[key]
        return value if isinstance(value, list) else [value]


def backbone_tasks(bench, rows, tasks, results):
    """Inference of every row's backbone; its parameters and multiply-adds;
    with ``--amp``, its error against float32."""
    args = bench.args
    models = OrderedDict()
    for name, (base, variant) in rows.items():
        model = build_backbone(base, variant).to(bench.device)
        row = results[name]
        row['params'] = count_params(model) / 1e6
        model.eval()  # (mmdet's ResNet.train() returns None: no chaining)
        if 'compiled' not in variant:  # the tracer counts the eager model
            for task in ('det', 'cls'):
                row[f'{task}_macs'] = count_macs(
                    model, getattr(args, f'{task}_shape'))
        if variant == 'naive':
            row['check'] = naive_matches_cmt(model, bench)
        models[name] = inference_model(model, variant)
        if args.amp and 'compiled' not in variant:
            row['amp_error'] = amp_error(models[name], bench)
    for task in tasks:
        print(f'  {task}: {len(models)} models, interleaved', flush=True)
        timed = bench.stream if task == 'stream' else bench.inference
        runs = OrderedDict((name, timed(model, bench.task_inputs(task)))
                           for name, model in models.items())
        compile_notes(runs, rows, results)
        for name, figure in bench.measure(runs).items():
            results[name].update(
                figure if isinstance(figure, dict) else {task: figure})


def compile_notes(runs, rows, results):
    """Compile the compiled rows (their first calls), timed for a note."""
    for name, run in runs.items():
        if 'compiled' in rows[name][1] and 'note' not in results[name]:
            start = time.perf_counter()
            run()
            results[name]['note'] = (f'compile and first calls '
                                     f'{time.perf_counter() - start:.0f} s')


def detector_tasks(bench, rows, tasks, results):
    """Inference of every row's whole RetinaNet. With ``--amp`` only its
    networks run under autocast (:func:`autocast_networks`): boxes are
    decoded and suppressed in float32."""
    models = OrderedDict(
        (name, build_retinanet(base, variant).to(bench.device))
        for name, (base, variant) in rows.items() if variant != 'naive')
    if bench.args.amp:
        for model in models.values():
            autocast_networks(model, bench.args.amp, bench.device.type)
    for task in tasks:
        print(f'  {task}: {len(models)} models, interleaved', flush=True)
        inputs = bench.task_inputs(task)
        samples = {
            id(x): [
                s.to(bench.device) for s in dummy_data_samples(
                    'mmdet', *x.shape[-2:], batch_size=x.shape[0])
            ]
            for x in inputs
        }
        runs = OrderedDict(
            (name,
             bench.inference(
                 lambda x, model=model: model.predict(x, samples[id(x)]),
                 inputs,
                 amp=False)) for name, model in models.items())
        compile_notes(runs, rows, results)
        for name, figure in bench.measure(runs).items():
            results[name][task] = figure


def training_tasks(bench, rows, tasks, results):
    """Training steps of the backbones (no fused or compiled rows), their
    peak memory first, each in a fresh process."""
    args = bench.args
    for task in tasks:
        with_cp = task == 'train_cp'
        names = [
            name for name, (base, variant) in rows.items() if variant in (
                '', 'naive') and not (with_cp and (variant or base in NO_CP))
        ]
        for name in names:
            base, variant = rows[name]
            results[name][f'{task}_mem'] = (
                cpu_peak_memory(args, base, variant, with_cp)
                if bench.device.type == 'cpu' else None)
        models = OrderedDict()
        for name in names:
            model = build_backbone(*rows[name], with_cp=with_cp)
            model.train()  # (mmdet's ResNet.train() returns None)
            models[name] = model.to(bench.device)
        print(f'  {task}: {len(models)} models, interleaved', flush=True)
        runs = OrderedDict((name, lambda model=model: train_step(
            model, bench.inputs['train'], args.amp))
                           for name, model in models.items())
        if bench.device.type == 'cuda':
            for name, run in runs.items():
                results[name][f'{task}_mem'] = cuda_peak_memory(
                    run, bench.device)
        for name, figure in bench.measure(runs, args.train_rounds
                                          or args.rounds).items():
            results[name][task] = figure
        del models, runs
        gc.collect()


def deploy_task(bench, rows, results):
    """PyTorch eager against ONNX Runtime, whole RetinaNet, ``det`` input;
    the operator shares of CMT-S in ONNX Runtime."""
    import tempfile

    from mmcmt.deploy import (end_profiling, export_detector,
                              load_onnx_detector, op_time_shares)
    names = [n for n in rows if n in DEPLOY_ROWS]
    x = bench.inputs['det'].cpu()
    samples = dummy_data_samples('mmdet', *x.shape[-2:], batch_size=x.shape[0])
    threads = torch.get_num_threads()
    runs, exports = OrderedDict(), {}
    work = tempfile.mkdtemp(prefix='mmcmt_deploy_')
    for name in names:
        print(f'  deploy: exporting {name}', flush=True)
        eager = build_retinanet(name, '')
        cfg = retinanet_config(name)
        cfg.model.pop('data_preprocessor', None)  # as build_retinanet
        exports[name] = osp.join(work, name)
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')  # the tracer's chatter
            export_detector(eager, cfg, exports[name], shape=x.shape[-2:])
        deployed = load_onnx_detector(exports[name], threads=threads)
        for kind, model in (('eager', eager), ('ORT', deployed)):
            runs[(name, kind)] = bench.inference(
                lambda x, model=model: model.predict(x, samples), [x],
                amp=False)
    print(f'  deploy: {len(runs)} models, interleaved', flush=True)
    for (name, kind), figure in bench.measure(runs).items():
        results[name][f'deploy_{kind.lower()}'] = figure
    for name in names:
        row = results[name]
        row['deploy_speedup'] = row['deploy_eager'].ratio_to(row['deploy_ort'])
    if 'CMT-S' in exports:
        profiled = load_onnx_detector(
            exports['CMT-S'],
            threads=threads,
            profile_prefix=osp.join(work, 'prof'))
        with torch.no_grad():
            for _ in range(2):
                profiled.predict(x, samples)
        results['CMT-S']['ort_shares'] = op_time_shares(
            end_profiling(profiled), grouped=True)


def naive_matches_cmt(naive, bench):
    """Max relative error between the naive row and mmcmt's CMT loaded with
    the same (official-layout) weights, on the ``cls`` input."""
    model = CMT(naive.settings).to(bench.device).eval()
    model.load_state_dict(naive.state(), strict=True)
    naive.eval()
    x = bench.inputs['cls'][:2]
    with torch.no_grad():
        errors = [relative_error(a, b) for a, b in zip(model(x), naive(x))]
    return max(errors)


def amp_error(model, bench):
    """Max relative error of the outputs under autocast against float32, on
    the ``det`` input."""
    x = bench.inputs['det']
    with torch.no_grad():
        reference = model(x)
        with autocast(bench.device, bench.args.amp):
            outputs = model(x)
    return max(
        relative_error(a.float(), b) for a, b in zip(outputs, reference))


def relative_error(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


# ------------------------------------------------------------------- report
COLUMNS = [
    # (key, header, format, ratio to the baseline)
    ('params', 'params (M)', '{:.1f}', False),
    ('det_macs', 'GMACs {det}', '{:.1f}', False),
    ('amp_error', '{amp} rel. error {det}', '{:.1e}', False),
    ('det', 'infer {det} (s)', '{:.3f}', True),
    ('stream', 'infer COCO stream, {n} images (s)', '{:.2f}', True),
    ('stream_same', 'the same, each image twice: second runs (s)', '{:.2f}',
     True),
    ('cls_macs', 'GMACs {cls} (per image)', '{:.2f}', False),
    ('cls', 'infer {cls} (s)', '{:.3f}', True),
    ('cls64', 'infer {cls64} (s)', '{:.2f}', True),
    ('retinanet', 'RetinaNet infer {det} (s)', '{:.3f}', True),
    ('retinanet_stream', 'RetinaNet COCO stream (s)', '{:.2f}', True),
    ('train', 'train step {train} (s)', '{:.2f}', True),
    ('train_mem', 'peak memory (GiB)', '{:.2f}', False),
    ('train_cp', 'train step with_cp (s)', '{:.2f}', True),
    ('train_cp_mem', 'peak memory with_cp (GiB)', '{:.2f}', False),
    ('deploy_eager', 'RetinaNet {det}, PyTorch eager (s)', '{:.3f}', True),
    ('deploy_ort', 'RetinaNet {det}, ONNX Runtime (s)', '{:.3f}', True),
    ('deploy_speedup', 'eager / ONNX Runtime', '{:.2f}x', False),
]


def format_table(results, args):
    names = {
        task: '{}x{}x{}'.format(*getattr(args, f'{task}_shape'))
        for task in ('det', 'cls', 'cls64', 'train')
    }
    names.update(amp=args.amp or '', n=len(args.stream))
    used = [
        c for c in COLUMNS if any(
            row.get(c[0]) is not None for row in results.values())
    ]
    headers = ['model'] + [c[1].format(**names) for c in used]
    lines = ['| ' + ' | '.join(headers) + ' |', '|' + '---|' * len(headers)]
    base = results[BASELINE]
    for name, row in results.items():
        cells = [name]
        for key, _, fmt, ratio in used:
            value = row.get(key)
            if value is None:
                cells.append('n/a')
            elif isinstance(value, Figure):
                cell = value.format(fmt)
                if ratio and isinstance(base.get(key), Figure):
                    cell += f' ({value.ratio_to(base[key]).format("{:.2f}x")})'
                cells.append(cell)
            else:
                cells.append(
                    fmt.format(value /
                               2**30 if key.endswith('mem') else value))
        lines.append('| ' + ' | '.join(cells) + ' |')
    notes = [
        f'- {name}: {row["note"]}' for name, row in results.items()
        if row.get('note')
    ]
    if any(c[0].endswith('stream') for c in used):
        notes.append('- COCO stream: ' + ', '.join(f'{h}x{w}'
                                                   for h, w in args.stream) +
                     ' (one image each, in '
                     'this order).')
    shares = results.get('CMT-S', {}).get('ort_shares')
    if shares:
        notes.append('- CMT-S RetinaNet in ONNX Runtime, share of kernel '
                     'time per operator type (profiler, 2 runs): ' +
                     ', '.join(f'{op} {share:.1%}'
                               for op, share in shares.items()
                               if share >= 0.001) + '.')
    if 'CMT-S naive' in results and 'check' in results['CMT-S naive']:
        notes.append(f'- CMT-S naive computes what CMT-S computes: max '
                     f'relative error {results["CMT-S naive"]["check"]:.1e} '
                     f'on the {names["cls"]} input (same weights).')
    return '\n'.join(lines + [''] + notes)


def check_goals(results):
    """The speed and memory goals: ``[(goal, Figure, passed)]``,
    ratios per round."""
    r, s = results.get(BASELINE, {}), results.get('CMT-S', {})
    goals = []

    def ratio(a, b):
        if isinstance(a, Figure) and isinstance(b, Figure):
            return a.ratio_to(b)
        return None

    def add(text, value, passed):
        if value is not None:
            goals.append((text, value, passed(float(value))))

    det = ratio(s.get('det'), r.get('det'))
    add('CMT-S det time <= 1.8x ResNet-50', det, lambda v: v <= 1.8)
    stream = ratio(s.get('stream'), r.get('stream'))
    same = ratio(s.get('stream_same'), r.get('stream_same'))
    if stream is not None and same is not None:
        add('CMT-S COCO-stream ratio <= 1.05x its same-size ratio',
            stream.ratio_to(same), lambda v: v <= 1.05)
    for task in ('cls', 'cls64'):
        add(f'CMT-S {task} time <= 1.15x ResNet-50',
            ratio(s.get(task), r.get(task)), lambda v: v <= 1.15)
    for other in ('PVT-S', 'PVTv2-b2'):
        add(f'CMT-S det faster than {other} (time ratio < 1)',
            ratio(s.get('det'),
                  results.get(other, {}).get('det')), lambda v: v < 1)
    add('CMT-S naive det time >= 1.5x CMT-S',
        ratio(results.get('CMT-S naive', {}).get('det'), s.get('det')),
        lambda v: v >= 1.5)
    if s.get('train_cp_mem') and s.get('train_mem'):
        add('CMT-S with_cp peak memory <= 0.5x without',
            Figure([s['train_cp_mem'] / s['train_mem']]), lambda v: v <= 0.5)
    return goals


def machine(device):
    if device.type == 'cuda':
        return torch.cuda.get_device_name(device)
    name = platform.processor() or platform.machine()
    try:
        with open('/proc/cpuinfo') as f:
            name = next(
                line.split(':', 1)[1].strip() for line in f
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
    heap = set_heap(args.heap)
    setup_process()
    bench = Bench(args)
    results = OrderedDict((name, {}) for name in args.rows)
    groups = [(backbone_tasks, INFER_TASKS), (detector_tasks, DETECTOR_TASKS),
              (training_tasks, TRAIN_TASKS)]
    for measure, group in groups:
        tasks = [t for t in args.tasks if t in group]
        if tasks:
            measure(bench, args.rows, tasks, results)
            gc.collect()
    if 'deploy' in args.tasks:
        deploy_task(bench, args.rows, results)
    stamp = datetime.datetime.now()
    memory = ('max_memory_allocated' if device.type == 'cuda' else
              'peak RSS growth of a training step in a fresh process')
    header = (f'Measured {stamp:%Y-%m-%d %H:%M} on {machine(device)}; '
              f'torch {torch.__version__}, '
              f'{"autocast " + args.amp if args.amp else "float32"}; '
              f'heap: {heap}; '
              f'{args.rounds} rounds (training: '
              f'{args.train_rounds or args.rounds}) after {args.warmup} '
              f'warm-up, every model once per round in a rotating order; '
              f'median [min-max] over the rounds; in parentheses the ratio '
              f'to {BASELINE} computed per round; memory: {memory}.')
    goals = check_goals(results)
    text = '\n'.join([header, '', format_table(results, args), ''] + [
        f'- goal: {g}: {v.format("{:.2f}")} {"PASS" if ok else "FAIL"}'
        for g, v, ok in goals
    ])
    print('\n' + text)
    out = args.out or osp.join('work_dirs', 'benchmark',
                               f'{device.type}_{stamp:%Y%m%d_%H%M%S}.md')
    os.makedirs(osp.dirname(osp.abspath(out)), exist_ok=True)
    with open(out, 'x') as f:
        f.write(text + '\n')
    print(f'\nwrote {out}')
    return results, goals


if __name__ == '__main__':
    run_main(main)
