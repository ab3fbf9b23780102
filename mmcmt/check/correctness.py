"""Correctness on the device: mmcmt's CMT on the device against the
released computation on the CPU in float32 (:class:`~mmcmt.reference.
NaiveCMT`, what the fidelity tests compare against, with the same random
weights in the released layout): inference at the stored bias's grid,
inference at other sizes (the bias resized, through the eval-mode cache), a
training step's outputs and gradients (every parameter's and the input's),
and the model exported to ONNX in ONNX Runtime.

The error is :func:`~mmcmt.utils.relative_error` (largest difference over
the reference's largest magnitude), the largest over the four outputs.
Float32 throughout: on CUDA, TF32 is turned off for these checks (it is on
by default for convolutions, and loses about three decimal digits)."""
import contextlib
import copy
import os.path as osp
import tempfile

import torch

from ..checkpoint import convert_official_cmt
from ..models import CMT
from ..reference import naive_cmt
from ..utils import relative_error

#: Largest relative error, on the CPU (the fidelity tests' contract) and on
#: other devices (other kernels, other orders of summation).
INFERENCE_TOL = dict(cpu=1e-5, other=1e-4)
#: The same for a training step: its batch statistics amplify round-off
#: (measured on a CPU for CMT-S: outputs 4e-6, gradients 5e-6).
TRAINING_TOL = dict(cpu=5e-5, other=5e-4)
#: ONNX Runtime (BatchNorms folded, the bias factored) against the
#: reference.
ONNX_TOL = 1e-4
#: The parameter that ``--plant-mismatch`` perturbs, and by how much.
PLANTED = ('stages.0.blocks.0.attn.q.weight', 1e-2)


def tolerance(table: dict, device: torch.device) -> float:
    return table['cpu' if device.type == 'cpu' else 'other']


@contextlib.contextmanager
def full_float32(device: torch.device):
    """TF32 off on CUDA while the block runs."""
    if device.type != 'cuda':
        yield
        return
    saved = (torch.backends.cuda.matmul.allow_tf32,
             torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        (torch.backends.cuda.matmul.allow_tf32,
         torch.backends.cudnn.allow_tf32) = saved


def reference_and_device_copy(arch, device: torch.device, plant=False):
    """The reference (CPU, float32, random weights in the released layout)
    and :class:`CMT` loaded with the same weights on ``device``; with
    ``plant``, one of its weights perturbed (:data:`PLANTED`), a mismatch
    that the checks must catch."""
    naive = naive_cmt(CMT, arch)
    model = CMT(naive.settings)
    model.load_state_dict(naive.state(), strict=True)
    if plant:
        name, scale = PLANTED
        with torch.no_grad():
            model.get_parameter(name).mul_(1 + scale)
    return naive, model.to(device)


def random_input(shape, seed=0, channels=3):
    """A ``B x channels x H x W`` normal tensor on the CPU, seeded."""
    batch, height, width = shape
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, channels, height, width, generator=generator)


def max_error(outputs, references) -> float:
    return max(
        relative_error(o.detach().float().cpu(), r.detach())
        for o, r in zip(outputs, references))


def size_text(x: torch.Tensor) -> str:
    return 'x'.join(map(str, x.shape))


def run(report, setup) -> None:
    device, plan, plant = setup.device, setup.plan, setup.plant
    arch = setup.arch
    naive, model = reference_and_device_copy(arch, device, plant)
    if plant:
        report.info(
            'planted mismatch', f'{PLANTED[0]} scaled by '
            f'1 + {PLANTED[1]:g} on the device copy')
    infer_tol = tolerance(INFERENCE_TOL, device)
    with full_float32(device):
        model.eval()
        naive.eval()
        with report.guard('inference at the stored bias\'s grid'):
            side = model.pretrain_img_size
            x = random_input((2, *side))
            error = _inference_error(model, naive, [x], device)
            report.check(
                f'inference {size_text(x)} (the stored bias\'s grid)', error
                < infer_tol,
                f'rel. error {error:.1e} (threshold {infer_tol:.0e})')
        with report.guard('inference at other sizes'):
            first, second = (random_input(s, i + 1)
                             for i, s in enumerate(plan.resize))
            error = _inference_error(model, naive, [first, second, first],
                                     device)
            report.check(
                f'position bias resized: inference {size_text(first)}, '
                f'{size_text(second)}, {size_text(first)} again (cached)',
                error < infer_tol,
                f'rel. error {error:.1e} (threshold {infer_tol:.0e})')
        with report.guard('ONNX Runtime'):
            _check_onnx(report, model, naive, plan)
        with report.guard('training step'):
            _check_training(report, model, naive, plan, device)


def _inference_error(model, naive, inputs, device) -> float:
    errors = []
    with torch.no_grad():
        for x in inputs:
            errors.append(max_error(model(x.to(device)), naive(x)))
    return max(errors)


def _check_onnx(report, model, naive, plan) -> None:
    from ..deploy import MissingExtrasError, export_backbone, run_backbone
    from ..deploy.extras import require_onnx
    try:
        require_onnx()
    except MissingExtrasError as error:
        report.info('ONNX Runtime', f'not checked: {error}')
        return
    exported = copy.deepcopy(model).cpu().eval().fuse()
    x = random_input(plan.onnx, seed=3)
    with tempfile.TemporaryDirectory(prefix='mmcmt_check_') as folder:
        path = osp.join(folder, 'cmt.onnx')
        export_backbone(exported, path, exported.pretrain_img_size)
        outputs = run_backbone(path, x)
    with torch.no_grad():
        error = max_error(outputs, naive(x))
    side = 'x'.join(map(str, exported.pretrain_img_size))
    report.check(
        f'ONNX Runtime (CPU): exported at 1x3x{side}, BatchNorms folded, '
        f'run at {size_text(x)}', error < ONNX_TOL,
        f'rel. error {error:.1e} (threshold {ONNX_TOL:.0e})')


def _check_training(report, model, naive, plan, device) -> None:
    """Training mode (batch statistics): the outputs and the gradients of
    the input and of every parameter, for a fixed random cotangent."""
    model.train()
    naive.train()
    x = random_input(plan.train, seed=4)
    generator = torch.Generator().manual_seed(5)
    ref_x = x.clone().requires_grad_()
    ref_outputs = naive(ref_x)
    cotangents = [
        torch.randn(o.shape, generator=generator) for o in ref_outputs
    ]
    sum((o * c).sum() for o, c in zip(ref_outputs, cotangents)).backward()
    references = convert_official_cmt({
        name.replace('__', '.'): p.grad
        for name, p in naive.weights.items()
    })

    dev_x = x.to(device).requires_grad_()
    outputs = model(dev_x)
    params = dict(model.named_parameters())
    grads = torch.autograd.grad(
        sum((o * c.to(device)).sum() for o, c in zip(outputs, cotangents)),
        [dev_x] + list(params.values()))
    tol = tolerance(TRAINING_TOL, device)
    errors = dict(
        outputs=max_error(outputs, ref_outputs),
        input=relative_error(grads[0].cpu(), ref_x.grad))
    # one vector of all parameters' gradients: a bias in front of a
    # batch-statistics BatchNorm has a zero gradient, which round-off
    # alone makes "wrong" relative to itself
    got = torch.cat([g.detach().cpu().flatten() for g in grads[1:]])
    expected = torch.cat(
        [references['backbone.' + name].flatten() for name in params])
    errors['parameters'] = relative_error(got, expected)
    worst = max(errors.values())
    report.check(
        f'training step {size_text(x)} (batch statistics): outputs and '
        f'gradients of the input and of all {len(params)} parameters', worst
        < tol,
        ', '.join(f'{k} {v:.1e}'
                  for k, v in errors.items()) + f' (threshold {tol:.0e})')
