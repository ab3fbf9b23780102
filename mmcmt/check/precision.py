"""Mixed precision: one training step under ``torch.autocast`` in float16
and in bfloat16, each where this torch and device support it
(:func:`mmcmt.compat.autocast_supported`), against the same step in
float32 on the same device: finite, and close within a stated tolerance
(outputs and the gradients of all parameters, relative to their largest
magnitude; the step's batch statistics amplify the rounding of half
precision)."""
import torch

from ..compat import autocast_supported
from ..utils import AMP_DTYPES, autocast, relative_error
from .correctness import random_input, reference_and_device_copy, size_text

#: Largest relative error against float32 (bfloat16 keeps 8 bits of
#: mantissa, float16 11; measured on a CPU for CMT-S at 64x96 to 256x384:
#: fp16 4e-3 to 1.6e-2, bf16 4e-2 to 7e-2).
AMP_TOL = dict(fp16=5e-2, bf16=2e-1)


def training_step(model, x, cotangents, amp=''):
    """Outputs (float32) and parameter gradients (one flat vector) of a
    training step, under autocast to ``amp`` (``'fp16'``, ``'bf16'``) or
    in float32 (``''``)."""
    with autocast(x.device, amp):
        outputs = [o.float() for o in model(x)]
    params = [p for p in model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(
        sum((o * c).sum() for o, c in zip(outputs, cotangents)), params)
    return ([o.detach()
             for o in outputs], torch.cat([g.flatten() for g in grads]))


def run(report, setup) -> None:
    device, arch, plan = setup.device, setup.arch, setup.plan
    _, model = reference_and_device_copy(arch, device)
    model.train()
    x = random_input(plan.amp, seed=6).to(device)
    generator = torch.Generator().manual_seed(7)
    with torch.no_grad():
        shapes = [o.shape for o in model(x)]
    # a loss of means, as detection losses are (a sum would take the
    # gradients of the first layers past float16's range)
    cotangents = [
        torch.randn(s, generator=generator).div_(s.numel()).to(device)
        for s in shapes
    ]
    reference = None
    for name, dtype in AMP_DTYPES.items():
        label = f'{name} training step {size_text(x)}'
        if not autocast_supported(device.type, dtype):
            report.info(
                label, f'not run: autocast on {device.type} does '
                f'not support {dtype} in this torch')
            continue
        with report.guard(label):
            if reference is None:
                reference = training_step(model, x, cotangents)
            outputs, grads = training_step(model, x, cotangents, name)
            finite = all(o.isfinite().all()
                         for o in outputs) and bool(grads.isfinite().all())
            errors = dict(
                outputs=max(
                    relative_error(o, r)
                    for o, r in zip(outputs, reference[0])),
                gradients=relative_error(grads, reference[1]))
            tol = AMP_TOL[name]
            report.check(
                f'{label} (autocast) against float32', finite
                and max(errors.values()) < tol,
                f'{"finite" if finite else "NOT FINITE"}, ' +
                ', '.join(f'{k} rel. error {v:.1e}'
                          for k, v in errors.items()) +
                f' (threshold {tol:.0e})')
