"""The speed and memory benchmark behind ``tools/benchmark.py``: CMT beside
mmdet's ResNet-50, Swin-T, PVT-S and PVTv2-b2 and a straightforward CMT,
measured in one process on the same inputs, every model once per round in a
rotating order (docs/advanced_guides/speed_and_memory.md).

- :mod:`.harness`: interleaved rotating rounds, inputs, timing
  (:class:`~.harness.MedianSpread`);
- :mod:`.memory`: the heap regime and peak memory;
- :mod:`.models`: the rows and how their models are built;
- :mod:`.tasks`: what each task measures (:mod:`.train_steps`: the
  training steps; :mod:`.distributed`: the training step in a pair of gloo
  processes, under SyncBN);
- :mod:`.report`: the markdown report and the goals (``goals.yml``).
"""
