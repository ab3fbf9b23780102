"""How the benchmark times: the tasks' inputs, every model once per round in
an order that rotates from round to round after warm-up rounds, the device
synchronised around each run, and what a cell reports, a
:class:`MedianSpread` (the median over the rounds with its spread; ratios
taken per round).

Rotating and interleaving is what makes the figures comparable: a slow drift
of the machine (load from other processes, frequency changes) then reaches
every model alike, and no position in the order favours one model.
"""
import statistics
import time

import torch

from mmcmt.utils import autocast

#: The padded input sizes (H, W) that mmdet's keep-ratio resize of its COCO
#: configs (``scale=(1333, 800)``: short side at most 800, long side at most
#: 1333) and padding to a multiple of 32 give for common COCO image sizes,
#: in a fixed shuffled order; from images of (H, W) 427x640, 480x480,
#: 640x427, 480x640, 360x640, 640x480, 383x640 and 400x500 in this order.
#: A size change on every image is what caches keyed on the size meet in a
#: COCO evaluation.
COCO_STREAM = [(800, 1216), (800, 800), (1216, 800), (800, 1088), (768, 1344),
               (1088, 800), (800, 1344), (800, 1024)]


def stream_sizes(scale=1.):
    """:data:`COCO_STREAM`'s sizes scaled by ``scale``, each side rounded to
    a multiple of 32 (at least 32), for quick runs."""
    return [
        tuple(max(32,
                  round(side * scale / 32) * 32) for side in size)
        for size in COCO_STREAM
    ]


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


class MedianSpread:
    """A quantity measured once per round: its values, their median and
    their spread (``low``, ``high``)."""

    def __init__(self, values):
        self.values = list(values)
        self.median = statistics.median(self.values)
        self.low, self.high = min(self.values), max(self.values)

    def ratio_to(self, base: 'MedianSpread') -> 'MedianSpread':
        """Per-round ratios ``self / base``: both were measured in the same
        rounds, so a drift of the machine cancels out round by round."""
        return MedianSpread(a / b for a, b in zip(self.values, base.values))

    def __float__(self):
        return float(self.median)

    def format(self, fmt):
        return (f'{fmt.format(self.median)} '
                f'[{fmt.format(self.low)}-{fmt.format(self.high)}]')


#: The tasks' input shapes: ``args.<name>_shape`` (the order fixes the
#: random inputs: a new one goes last).
INPUT_SHAPES = ('det', 'cls', 'cls64', 'train', 'demo')


def make_inputs(args, device):
    """The random inputs of the tasks, the same in every process (so that a
    process measuring memory gets the main process's tensors): one tensor
    per task, a list of ``1 x 3 x H x W`` tensors for the stream."""
    generator = torch.Generator().manual_seed(0)

    def randn(*shape):
        return torch.randn(*shape, generator=generator).to(device)

    inputs = {
        task: randn(batch, 3, height, width)
        for task in INPUT_SHAPES
        for batch, height, width in [getattr(args, f'{task}_shape')]
    }
    inputs['stream'] = [randn(1, 3, *size) for size in args.stream]
    return inputs


class Bench:
    """The inputs and settings shared by the tasks, and their timing."""

    def __init__(self, args):
        self.args = args
        self.device = torch.device(args.device)
        self.inputs = make_inputs(args, self.device)

    def measure(self, runs, rounds=None):
        """name -> :class:`MedianSpread` of seconds, interleaved (a dict of
        them for runs that time themselves)."""
        times = interleaved(runs, self.device, rounds or self.args.rounds,
                            self.args.warmup)
        return {
            name:
            MedianSpread(values) if not isinstance(values[0], dict) else {
                key: MedianSpread(v[key] for v in values)
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
        """The inputs of ``task`` as a list (the RetinaNet tasks take the
        backbone tasks' inputs)."""
        key = task.replace('retinanet_', '').replace('retinanet', 'det')
        value = self.inputs[key]
        return value if isinstance(value, list) else [value]
