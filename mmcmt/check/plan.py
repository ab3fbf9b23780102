"""What the check runs at: the input sizes (batch, height, width) and the
timed rounds, in full or with ``--quick``. The speed section and the
kernels of "what runs where" use the detection sizes of the issue: one
1x3x800x1216 image for inference, a 2x3x800x1216 batch for a training
step. On a CPU, ``--quick`` shrinks them (and the others) so that the whole
check takes minutes on two cores; on a GPU it only takes fewer rounds."""
import copy
from dataclasses import dataclass, fields
from typing import Tuple

Shape = Tuple[int, int, int]


@dataclass
class Plan:
    #: two sizes away from the pre-training one (the bias resized; the
    #: first run again after the second, through the eval-mode cache)
    resize: Tuple[Shape, Shape] = ((2, 320, 480), (1, 256, 352))
    #: the training step checked against the reference
    train: Shape = (2, 256, 320)
    #: the exported graph run at a size other than the traced one
    onnx: Shape = (1, 256, 352)
    #: the mixed-precision training steps
    amp: Shape = (2, 256, 384)
    #: inference, in "what runs where" and the speed section
    det: Shape = (1, 800, 1216)
    #: a training step, in "what runs where" and the speed section
    step: Shape = (2, 800, 1216)
    #: timed rounds of the speed section (after one warm-up round)
    rounds: int = 3


#: --quick on a CPU: every size smaller, two timed rounds.
QUICK_CPU = Plan(
    resize=((2, 128, 192), (1, 160, 128)),
    train=(2, 128, 192),
    onnx=(1, 160, 128),
    amp=(2, 64, 96),
    det=(1, 256, 384),
    step=(2, 256, 384),
    rounds=2)


def make_plan(device_type: str, quick: bool) -> Plan:
    if not quick:
        return Plan()
    if device_type == 'cpu':
        return copy.deepcopy(QUICK_CPU)
    return Plan(rounds=2)


def shrunk(plan: Plan) -> str:
    """What ``plan`` changes from the full one, one ``name a -> b`` each."""
    full = Plan()
    return '; '.join(f'{f.name} {_text(getattr(full, f.name))} -> '
                     f'{_text(getattr(plan, f.name))}' for f in fields(Plan)
                     if getattr(plan, f.name) != getattr(full, f.name))


def _text(value) -> str:
    if isinstance(value, tuple) and isinstance(value[0], tuple):
        return ', '.join(_text(v) for v in value)
    if isinstance(value, tuple):
        return 'x'.join(map(str, (value[0], 3) + value[1:]))
    return str(value)
