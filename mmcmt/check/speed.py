"""Speed and memory: CMT against mmdet's ResNet-50 and Swin-T, measured by
the benchmark (:mod:`mmcmt.benchmark`, as ``tools/benchmark.py --models
Swin-T CMT-S --tasks det train`` measures): inference of the backbone (eval,
no gradient) and a training step (each backbone as its COCO RetinaNet
config trains it: forward, backward of the mean of its outputs), every
model once per round in a rotating order after a warm-up round, the ratios
taken per round, with the benchmark's steady heap; peak memory of the
training step from the device's allocator (CUDA) or as the growth of the
peak resident set of a fresh process (CPU)."""
from argparse import Namespace

from ..models import CMT
from .correctness import size_text

#: The rows the CMT arch is measured against (the first is the baseline of
#: the benchmark's ratios).
BASELINES = ('ResNet-50', 'Swin-T')


def cmt_row(arch: str) -> str:
    """The benchmark's row of ``arch`` (``'small'`` -> ``'CMT-S'``)."""
    from ..benchmark.models import BACKBONES
    settings = CMT.parse_arch(arch)
    for name, (cfg, _) in BACKBONES.items():
        if cfg['type'] == 'mmdet.CMT' and \
                CMT.parse_arch(cfg['arch']) == settings:
            return name
    raise ValueError(f'no benchmark row for the CMT arch {arch!r}')


def run(report, setup) -> None:
    device, arch, plan = setup.device, setup.arch, setup.plan
    from ..benchmark.harness import Bench
    from ..benchmark.memory import set_heap
    from ..benchmark.models import select_rows, setup_process
    from ..benchmark.tasks import run_tasks
    row = cmt_row(arch)
    args = Namespace(
        device=str(device),
        amp=None,
        rounds=plan.rounds,
        warmup=1,
        train_rounds=None,
        threads=None,
        det_shape=list(plan.det),
        train_shape=list(plan.step),
        cls_shape=[1, 32, 32],  # (unused here, but made by the harness)
        cls64_shape=[1, 32, 32],
        demo_shape=[1, 32, 32],
        stream=[])
    report.info('heap', set_heap('steady'))
    setup_process()
    bench = Bench(args)
    names = list(BASELINES) + [row]
    report.info(
        'measured', f'{", ".join(names)}; {plan.rounds} rounds after a '
        f'warm-up round, interleaved; medians [min-max]')
    results = run_tasks(bench, select_rows(names), ['det', 'train'])
    det, step = (size_text(bench.inputs[k]) for k in ('det', 'train'))
    report.info(
        'peak memory', 'the allocator\'s peak' if device.type == 'cuda' else
        'growth of the peak resident set, in a fresh process')
    report.line(f'  {"model":<10} {"params (M)":>10} {"GMACs " + det:>20} '
                f'{"infer " + det + " (s)":>26} '
                f'{"train step " + step + " (s)":>30} '
                f'{"peak memory (GiB)":>18}')
    for name in names:
        figures = results[name]
        report.line(f'  {name:<10} {figures["params"]:>10.1f} '
                    f'{_number(figures.get("det_macs"), "{:.1f}"):>20} '
                    f'{figures["det"].format("{:.3f}"):>26} '
                    f'{figures["train"].format("{:.3f}"):>30} '
                    f'{_number(_gib(figures.get("train_mem")), "{:.2f}"):>18}')
    measured = []
    for base in BASELINES:
        ours, theirs = results[row], results[base]
        ratios = [
            'inference '
            f'{ours["det"].ratio_to(theirs["det"]).format("{:.2f}x")}',
            f'training step '
            f'{ours["train"].ratio_to(theirs["train"]).format("{:.2f}x")}'
        ]
        if ours.get('train_mem') and theirs.get('train_mem'):
            ratios.append(f'peak memory '
                          f'{ours["train_mem"] / theirs["train_mem"]:.2f}x')
        report.info(f'{row} / {base}', ', '.join(ratios))
        measured += [ours['det'].median, ours['train'].median]
    report.check('speed and memory measured', all(v > 0 for v in measured),
                 f'{row} against {" and ".join(BASELINES)}')


def _gib(value):
    return None if value is None else value / 2**30


def _number(value, fmt: str) -> str:
    return 'n/a' if value is None else fmt.format(value)
