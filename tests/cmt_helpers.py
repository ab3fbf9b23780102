"""What the CMT backbone's tests share: small arches, models with the same
weights and BatchNorm statistics away from 0 and 1, the bytes autograd
keeps, the autocast dtypes this CPU runs, and the float64 tolerances.

How the model tests' tolerances are derived (each test states its rule and
numbers), so that they hold on any CPU:

- **Exact** (``torch.equal``) where both sides run the same operations on
  the same values (a checkpointed block computed again, padding inside the
  model or before it, a bias resized by the load hook or by hand).
- **Ten times the largest error measured**, rounded up to 1, 2 or 5 times a
  power of ten, where two computations of the same function round
  differently. Measured over 5 to 10 seeds with each of two kernel sets of
  an AMD EPYC (AVX2, no AVX-512): ATen's default dispatch (AVX2) and
  ``ATEN_CPU_CAPABILITY=default`` (2026-12-07). Between seeds the largest
  error is up to 7 times the median and the two kernel sets agree within a
  factor of 2; ten times the largest leaves room for other CPUs' kernels
  (the same precision, other orders of summation) and stays orders of
  magnitude below what a wrong computation gives. The error is
  :func:`~mmcmt.utils.relative_error` (the largest difference relative to
  the reference's largest value), of each output and of all the gradients
  together (a gradient that is 0 but for rounding, a bias's right before a
  training BatchNorm, is measured at the scale of them all).
- **A ratio of two errors** (one form's and another's, both against a more
  precise computation): its mean plus five standard deviations over the
  seeds, rounded up.
"""
import sys

import torch
from torch.nn.modules.batchnorm import _BatchNorm

from mmcmt.compat import autocast_supported
from mmcmt.models import CMT
from mmcmt.utils import relative_error

#: float64 comparisons of two computations of one training step (the lean
#: forms against the plain layers, two processes against one under SyncBN):
#: outputs, all gradients together and the BatchNorms' running statistics.
#: Ten times the largest measured (10 seeds per setting, 6 with the
#: default kernels): outputs 1.7e-14, gradients 4.6e-14, statistics 2.6e-15
#: (about 75, 210 and 12 float64 epsilons).
FLOAT64_TOL = dict(outputs=2e-13, gradients=5e-13, buffers=5e-14)

TINY = dict(
    embed_dims=[8, 16, 24, 32],
    depths=[1, 1, 2, 1],
    num_heads=[1, 2, 2, 4],
    mlp_ratios=2,
    sr_ratios=[8, 4, 2, 1],
    stem_channels=8)

CP_ARCH = dict(
    embed_dims=[16, 32, 48, 64],
    depths=[2, 2, 3, 2],
    num_heads=[1, 2, 2, 4],
    mlp_ratios=4,
    sr_ratios=[8, 4, 2, 1],
    stem_channels=8)

AMP = [
    dtype for dtype in (torch.bfloat16, torch.float16)
    if autocast_supported('cpu', dtype)
]


def randomize_norms(model):
    """BatchNorm statistics and affines away from 0 / 1."""
    for module in model.modules():
        if isinstance(module, _BatchNorm):
            module.running_mean.normal_()
            module.running_var.uniform_(0.5, 2)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.normal_()


def same_models_with_random_norms(lean_training, seed=0, **kwargs):
    """A CMT (``CP_ARCH``) for each of the settings ``lean_training``, all
    with the same weights (drawn after ``seed``), the BatchNorms' statistics
    and affines away from 0 and 1."""
    torch.manual_seed(seed)
    models = [
        CMT(CP_ARCH, pretrain_img_size=64, lean_training=lean, **kwargs)
        for lean in lean_training
    ]
    models[0].init_weights()
    randomize_norms(models[0])
    for model in models[1:]:
        model.load_state_dict(models[0].state_dict())
    return models


def saved_bytes(model, x):
    """Bytes of the distinct storages that autograd saves for the backward
    pass during ``model(x)`` (parameters aside), and the outputs. A
    non-reentrant checkpoint saves its inputs through these hooks too (so
    they count); inside it, its own hooks take over and keep nothing."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    storages = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in params:
            storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        outs = model(x)
    return sum(storages.values()), outs


def assert_close_float64(got, expected):
    """``got`` and ``expected``, each ``(outputs, gradients, buffers)`` as
    lists of tensors, within :data:`FLOAT64_TOL`: each output, the
    gradients together, the buffers together."""
    for a, b in zip(got[0], expected[0]):
        assert relative_error(a, b) < FLOAT64_TOL['outputs']
    for key, index in (('gradients', 1), ('buffers', 2)):
        a, b = (
            torch.cat([t.flatten().double() for t in ts])
            for ts in (got[index], expected[index]))
        error = relative_error(a, b)
        assert error < FLOAT64_TOL[key], (key, error)


#: Under autocast the lean forms' gradients differ from the plain layers'
#: by the rounding of the BatchNorm outputs they compute again (another
#: kernel, then rounded to the low precision), a fraction of autocast's own
#: error. The ratio of the two errors (all gradients, in norm), over 10
#: seeds and five settings: in float16 mean 0.20, sd 0.086, up to 0.30; in
#: bfloat16 up to 0.29; 0 with the default kernels and under SyncBN. Bound,
#: the mean plus five standard deviations: 0.7.
AUTOCAST_RATIO = 0.7


def assert_autocast_error_below_autocasts(lean, plain, full, what):
    """The gradients ``lean`` (the lean forms under autocast) as far from
    ``plain`` (the plain layers under the same autocast) as at most
    :data:`AUTOCAST_RATIO` times these are from ``full`` (float32)."""
    g1, g2, g32 = (
        torch.cat([g.flatten().float() for g in gs])
        for gs in (lean, plain, full))
    lean_error, amp_error = (g1 - g2).norm(), (g2 - g32).norm()
    ratio = (lean_error / amp_error).item()
    print(f'{what}: lean / autocast error {ratio:.3f}', file=sys.stderr)
    assert ratio <= AUTOCAST_RATIO, (what, ratio)
