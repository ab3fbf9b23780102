"""The report: a header (when, on what machine, with which settings), the
markdown table (medians [spread] and per-round ratios to the baseline), its
notes, and the goals (data: ``goals.yml`` beside this file) each checked;
written to a file that is never overwritten."""
import operator
import os
import os.path as osp
import platform

import torch
import yaml

from .harness import INPUT_SHAPES, MedianSpread
from .models import BASELINE
from .tasks import train_rounds

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
    ('demo', 'infer {demo} (s)', '{:.3f}', True),
    ('demo_train', 'train step {demo} (s)', '{:.3f}', True),
    ('demo_train_mem', 'peak memory {demo} (GiB)', '{:.2f}', False),
    ('retinanet', 'RetinaNet infer {det} (s)', '{:.3f}', True),
    ('retinanet_stream', 'RetinaNet COCO stream (s)', '{:.2f}', True),
    ('train', 'train step {train} (s)', '{:.2f}', True),
    ('train_mem', 'peak memory (GiB)', '{:.2f}', False),
    ('train_cp', 'train step with_cp (s)', '{:.2f}', True),
    ('train_cp_mem', 'peak memory with_cp (GiB)', '{:.2f}', False),
    ('train_attention', 'its attention alone, forward + backward (s)',
     '{:.2f}', False),
    ('train_attention_fused',
     'the same, SDPA with the bias as a constant mask (s)', '{:.2f}', False),
    ('train_syncbn', 'train step SyncBN, 2 processes {train} (s)', '{:.2f}',
     True),
    ('train_syncbn_mem', 'peak memory SyncBN (GiB per process)', '{:.2f}',
     False),
    ('retinanet_train', 'RetinaNet train iteration {train} (s)', '{:.2f}',
     True),
    ('retinanet_train_mem', 'RetinaNet peak memory (GiB)', '{:.2f}', False),
    ('deploy_eager', 'RetinaNet {det}, PyTorch eager (s)', '{:.3f}', True),
    ('deploy_ort', 'RetinaNet {det}, ONNX Runtime (s)', '{:.3f}', True),
    ('deploy_speedup', 'eager / ONNX Runtime', '{:.2f}x', False),
    ('deploy_features_eager', 'backbone+FPN {det}, PyTorch eager (s)',
     '{:.3f}', True),
    ('deploy_features_ort', 'backbone+FPN {det}, ONNX Runtime (s)', '{:.3f}',
     True),
    ('deploy_stream_eager', 'RetinaNet COCO stream, PyTorch eager (s)',
     '{:.2f}', True),
    ('deploy_stream_ort', 'RetinaNet COCO stream, ONNX Runtime (s)', '{:.2f}',
     True),
    ('deploy_stream_speedup', 'eager / ONNX Runtime, COCO stream', '{:.2f}x',
     False),
]
GOALS_FILE = osp.join(osp.dirname(osp.abspath(__file__)), 'goals.yml')
#: The bounds a goal may set on its ratio's median.
BOUNDS = dict(at_most=operator.le, below=operator.lt, at_least=operator.ge)


def format_table(results, args):
    """The markdown table of ``results`` (row -> key -> figure), only the
    measured columns, then its notes."""
    names = {
        task: '{}x{}x{}'.format(*getattr(args, f'{task}_shape'))
        for task in INPUT_SHAPES
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
            elif isinstance(value, MedianSpread):
                cell = value.format(fmt)
                if ratio and isinstance(base.get(key), MedianSpread):
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
                     'time per operator type (profiler, 2 runs at a known '
                     'size): ' + ', '.join(f'{op} {share:.1%}'
                                           for op, share in shares.items()
                                           if share >= 0.001) +
                     f'. Its position biases, computed once per input size, '
                     f'took {results["CMT-S"]["ort_size_inputs"]:.3f} s.')
    notes += attention_notes(results)
    if 'CMT-S naive' in results and 'check' in results['CMT-S naive']:
        notes.append(f'- CMT-S naive computes what CMT-S computes: max '
                     f'relative error {results["CMT-S naive"]["check"]:.1e} '
                     f'on the {names["cls"]} input (same weights).')
    return '\n'.join(lines + [''] + notes)


def attention_notes(results):
    """For the rows whose attention was timed: its share of the row's
    training step and its ratio to the ResNet-50 step (the unfrozen one
    when measured), per round."""
    base_name = next((name for name in ('ResNet-50 unfrozen', BASELINE)
                      if 'train' in results.get(name, {})), None)
    notes = []
    for name, row in results.items():
        if 'train_attention' not in row:
            continue
        ours, fused = row['train_attention'], row['train_attention_fused']
        text = (f'- {name}: its attention alone (every block, forward and '
                f'backward, the bias\'s gradient included) takes '
                f'{ours.ratio_to(row["train"]).format("{:.0%}")} of its '
                f'training step')
        if base_name:
            base = results[base_name]['train']
            text += (f' and {ours.ratio_to(base).format("{:.2f}x")} the '
                     f'{base_name} step; PyTorch\'s fused kernel (the bias '
                     f'as a constant mask, no bias gradient) '
                     f'{fused.ratio_to(base).format("{:.2f}x")}')
        notes.append(text + '.')
    return notes


def load_goals(path=GOALS_FILE):
    """The goals of ``path`` (see its comments), checked for form."""
    with open(path) as f:
        goals = yaml.safe_load(f)
    for goal in goals:
        bounds = [key for key in goal if key in BOUNDS]
        if set(goal) != {'goal', 'ratio', *bounds} or len(bounds) != 1:
            raise ValueError(f'{path}: a goal has goal, ratio and one of '
                             f'{sorted(BOUNDS)}: {goal}')
    return goals


def _figure(results, term):
    """The figure of ``term`` ('ROW KEY' or a [numerator, denominator]
    list) as a :class:`MedianSpread`, or None if not measured. A single
    number (a peak memory) counts as one round."""
    if isinstance(term, list):
        top, bottom = (_figure(results, t) for t in term)
        if top is None or bottom is None:
            return None
        return top.ratio_to(bottom)
    row, key = term.rsplit(' ', 1)
    value = results.get(row, {}).get(key)
    if isinstance(value, MedianSpread):
        return value
    if isinstance(value, (int, float)) and value:
        return MedianSpread([value])
    return None


def check_goals(results, goals=None):
    """``[(goal, MedianSpread, passed)]`` for each goal (default: those of
    ``goals.yml``) whose figures were measured; ratios per round."""
    checked = []
    for goal in load_goals() if goals is None else goals:
        value = _figure(results, goal['ratio'])
        if value is not None:
            (bound, limit), = ((k, v) for k, v in goal.items() if k in BOUNDS)
            checked.append((goal['goal'], value, BOUNDS[bound](float(value),
                                                               limit)))
    return checked


def machine(device):
    """The device's name; for a CPU with the threads torch uses."""
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


def report(results, args, heap, stamp, goals):
    """The whole report: header, table and notes, goals."""
    device = torch.device(args.device)
    memory = ('max_memory_allocated' if device.type == 'cuda' else
              'peak RSS growth of a training step in a fresh process')
    header = (f'Measured {stamp:%Y-%m-%d %H:%M} on {machine(device)}; '
              f'torch {torch.__version__}, '
              f'{"autocast " + args.amp if args.amp else "float32"}; '
              f'heap: {heap}; '
              f'{args.rounds} rounds (training: '
              f'{train_rounds(args)}) after {args.warmup} '
              f'warm-up, every model once per round in a rotating order; '
              f'median [min-max] over the rounds; in parentheses the ratio '
              f'to {BASELINE} computed per round; memory: {memory}.')
    return '\n'.join([header, '', format_table(results, args), ''] + [
        f'- goal: {g}: {v.format("{:.2f}")} {"PASS" if ok else "FAIL"}'
        for g, v, ok in goals
    ])


def default_path(device, stamp):
    """Where a report goes unless told: named after the device and time."""
    return osp.join('work_dirs', 'benchmark',
                    f'{device.type}_{stamp:%Y%m%d_%H%M%S}.md')


def write_report(text, out):
    """Write ``text`` to a new file ``out`` (FileExistsError if it exists:
    results are never overwritten)."""
    os.makedirs(osp.dirname(osp.abspath(out)), exist_ok=True)
    with open(out, 'x') as f:
        f.write(text + '\n')
