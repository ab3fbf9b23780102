"""``python -m mmcmt.check``: one command that tells a user, on their own
machine and device, that mmcmt computes what it should, how, and how fast;
its output is what to send with a bug report, and its exit status (1 on any
failure) lets a CI run it. Modelled on ``torch.utils.collect_env`` and
``python -m xformers.info``.

Sections, each a module:

- :mod:`.environment`: versions, the device, mmcv's ops on it, the
  capabilities of :mod:`mmcmt.compat` (the fallbacks in force);
- :mod:`.correctness`: CMT on the device against the released computation
  on the CPU (float32): inference, the bias resized, a training step's
  gradients, the ONNX export in ONNX Runtime;
- :mod:`.where`: which attention kernels and IRFFN forms run, from the
  profiler;
- :mod:`.precision`: a float16 and a bfloat16 training step against
  float32;
- :mod:`.speed`: speed and memory against ResNet-50 and Swin-T, by
  :mod:`mmcmt.benchmark`.

:mod:`.plan` holds the sizes (``--quick`` shrinks them on a CPU) and
:mod:`.report` the output and the counts; :mod:`.cli` the command line.
"""
from .cli import main

__all__ = ['main']
