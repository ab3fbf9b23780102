"""What normal runs write: a corpus of checkpoints made by mmengine's real
Runner, the test fixtures of mmcmt's safe loader (imported by
``tools/checkpoint_corpus.py`` and ``tests/test_checkpoint_corpus.py``;
not part of the installed package).

The safe loader's allow-list (:mod:`mmcmt.checkpoint.allow_list`) is
derived from and tested against this corpus, never from memory. Each run
trains a toy model (two linear layers) for two epochs of two iterations
with a validation after each epoch, saves a checkpoint per epoch, and
differs from the others in one thing that puts state into the checkpoint:

- every parameter scheduler registered in mmengine, mmdet and mmseg (LR,
  momentum and generic forms), enumerated from the registries, so that a
  scheduler a future release adds is in the corpus without anyone listing
  it (:func:`scheduler_runs`; one whose arguments this module cannot fill
  in fails loudly);
- every optimizer wrapper (:func:`optim_wrapper_runs`): ``OptimWrapper``
  with SGD, Adam and AdamW, with and without gradient clipping (by norm, by
  value) and accumulation, ``OptimWrapperDict`` and ``AmpOptimWrapper``;
- every hook that writes state into checkpoints (:func:`hook_runs`, found by
  their ``before_save_checkpoint``): ``EMAHook`` with each averaged model
  registered in mmengine, mmdet and mmseg;
- always: the message hub (log buffers of numpy scalars, numpy arrays and
  the best score of ``CheckpointHook(save_best=...)``, which the toy metric
  returns as numpy scalars of several types, as mmseg's metrics do).

``AmpOptimWrapper`` refuses to be built without a GPU. The corpus builds
it with that check bypassed and a loss scaler of the same class that
mmengine uses, switched on: torch's ``GradScaler('cpu')`` where it exists
(torch 2.3+), else torch.cuda.amp's with the flag that CUDA's absence
turned off turned on again (its state dict is then what a CUDA run saves
before its first step: Python floats and ints, the same types); the step
itself is the scaler's where it can run on a CPU and the plain optimizer's
otherwise, so the checkpoint holds ``loss_scaler`` as AMP runs save it.

What a checkpoint names is read by
:func:`mmcmt.checkpoint.inspection.pickled_globals`.
"""
import contextlib
import inspect
import os.path as osp
import sys
from typing import Callable, Dict, List, Optional

import numpy as np
import torch
import torch.nn as nn

__all__ = [
    'CorpusRun', 'corpus_runs', 'scheduler_runs', 'optim_wrapper_runs',
    'hook_runs', 'train_run', 'resume_run', 'registered_schedulers',
    'registered_optim_wrappers', 'stateful_hooks', 'averaged_models',
    'fixture_run', 'stack_name', 'toy_model', 'NOT_IN_CORPUS'
]

#: Optimizer wrappers registered in mmengine that need a package or a
#: device that no CPU-only install has; each maps to why it is left out.
NOT_IN_CORPUS = {
    'ApexOptimWrapper': 'needs NVIDIA apex (CUDA only, not on PyPI)',
    'ColossalAIOptimWrapper': 'needs colossalai (CUDA only)',
    'DeepSpeedOptimWrapper': 'needs deepspeed and its own runner strategy',
}

#: Values for the arguments that a scheduler requires, by argument name.
SCHEDULER_ARGUMENTS = dict(
    milestones=[1, 3],
    step_size=2,
    gamma=0.5,
    T_max=4,
    eta_max=0.1,
    periods=[2, 2],
    restart_weights=[1, 0.5],
    eta_min=0.,
    param_name='lr',
    total_steps=4,
)
#: Arguments whose every value a scheduler's state depends on (OneCycle
#: keeps a reference to its annealing function).
SCHEDULER_VARIANTS = dict(anneal_strategy=['cos', 'linear'])
#: What every run's schedulers share: iteration-based, over 4 iterations.
SCHEDULER_SPAN = dict(by_epoch=False, begin=0, end=4)

#: The numpy scalar types of the toy metric's values (a user's metrics may
#: return any).
NUMPY_SCALARS = (np.bool_, np.int8, np.int16, np.int32, np.int64, np.uint8,
                 np.uint16, np.uint32, np.uint64, np.float16, np.float32,
                 np.float64)


class CorpusRun(dict):
    """Runner arguments that differ from :func:`train_run`'s defaults,
    named: ``CorpusRun('MultiStepLR', param_scheduler=...)``."""

    def __init__(self, name: str, **runner_kwargs):
        super().__init__(runner_kwargs)
        self.name = name

    def __repr__(self):
        return f'CorpusRun({self.name!r})'


def toy_model():
    from mmengine.model import BaseModel
    from mmengine.optim import OptimWrapperDict

    class Toy(BaseModel):
        """Two linear layers (``backbone`` and ``head``, for one optimizer
        wrapper each in an ``OptimWrapperDict``)."""

        def __init__(self):
            super().__init__()
            self.backbone = nn.Linear(3, 4)
            self.head = nn.Linear(4, 1)

        def forward(self, inputs, data_samples=None, mode='tensor'):
            out = self.head(self.backbone(inputs))
            if mode == 'loss':
                return dict(loss=(out - data_samples).pow(2).mean())
            if mode == 'predict':
                return list(zip(out.detach(), data_samples))
            return out

        def train_step(self, data, optim_wrapper):
            if not isinstance(optim_wrapper, OptimWrapperDict):
                return super().train_step(data, optim_wrapper)
            log_vars = {}
            for name, wrapper in optim_wrapper.items():  # one loss each
                with wrapper.optim_context(self):
                    losses = self._run_forward(data, mode='loss')
                loss, log_vars = self.parse_losses(losses)
                wrapper.update_params(loss)
            return log_vars

    return Toy()


def _toy_dataset(n=4):
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(n, 3, generator=generator)
    return [
        dict(inputs=x[i], data_samples=x[i].sum(0, keepdim=True))
        for i in range(n)
    ]


def _toy_metric():
    from mmengine.evaluator import BaseMetric

    class ToyMetric(BaseMetric):
        """Scores as numpy scalars and arrays of several types (mmseg's
        metrics return numpy scalars; per-class arrays go into the message
        hub's runtime info)."""
        default_prefix = 'toy'

        def process(self, data_batch, data_samples):
            for out, target in data_samples:
                self.results.append(float((out - target).abs().sum()))

        def compute_metrics(self, results):
            error = np.asarray(results, dtype=np.float64)
            metrics = dict(
                score=np.float64(1 / (1 + error.mean())),
                per_item=error.astype(np.float32),
                plain=float(error.min()))
            for kind in NUMPY_SCALARS:
                metrics[f'as_{np.dtype(kind).name}'] = kind(len(results))
            return metrics

    return ToyMetric()


def train_run(run: CorpusRun,
              work_dir: str,
              max_epochs: int = 2,
              **extra) -> 'mmengine.runner.Runner':  # noqa: F821
    """mmengine's Runner for ``run`` on the toy model in ``work_dir``
    (``max_epochs`` epochs of 2 iterations, a validation and a checkpoint
    each epoch), not yet started. ``extra`` overrides Runner arguments
    (``load_from``, ``resume``)."""
    from mmengine.runner import Runner
    loader = dict(
        dataset=_toy_dataset(),
        sampler=dict(type='DefaultSampler', shuffle=False),
        batch_size=2,
        num_workers=0,
        collate_fn=dict(type='default_collate'))
    kwargs = dict(
        model=toy_model(),
        work_dir=work_dir,
        train_dataloader=loader,
        val_dataloader=loader,
        val_evaluator=[_toy_metric()],
        train_cfg=dict(by_epoch=True, max_epochs=max_epochs, val_interval=1),
        val_cfg=dict(),
        optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.01, momentum=0.9)),
        default_hooks=dict(
            checkpoint=dict(
                type='CheckpointHook',
                interval=1,
                save_best='toy/score',
                rule='greater'),
            logger=dict(type='LoggerHook', interval=1)),
        default_scope='mmengine',
        randomness=dict(seed=0),
        log_level='ERROR',
        experiment_name=f'corpus_{run.name}_{osp.basename(work_dir)}_'
        f'{id(work_dir)}')
    kwargs.update(run)
    kwargs.update(extra)
    return Runner(**kwargs)


def resume_run(run: CorpusRun, work_dir: str, checkpoint: str):
    """A Runner that resumes ``run`` from ``checkpoint`` for a third epoch."""
    return train_run(
        run, work_dir, max_epochs=3, load_from=checkpoint, resume=True)


# ------------------------------------------------------------------ schedulers
def registered_schedulers() -> Dict[str, type]:
    """Every parameter scheduler in the registries of mmengine, mmdet and
    mmseg (those installed), by the name a config gives it."""
    from mmengine.registry import PARAM_SCHEDULERS
    found = {}
    for scope, registry in _registries('PARAM_SCHEDULERS', PARAM_SCHEDULERS):
        for name, cls in registry.module_dict.items():
            found[name if scope == 'mmengine' else f'{scope}.{name}'] = cls
    return found


def scheduler_runs() -> List[CorpusRun]:
    """One run per registered scheduler (a warm-up before it where the
    scheduler is not one, as configs chain them)."""
    from mmengine.optim.scheduler import ReduceOnPlateauParamScheduler
    runs = []
    for name, cls in sorted(registered_schedulers().items()):
        config = dict(type=name, **_scheduler_arguments(name, cls))
        if issubclass(cls, ReduceOnPlateauParamScheduler):
            # epoch-based only, stepped on the validation's metric
            config.update(
                by_epoch=True,
                end=3,
                monitor='toy/score',
                rule='greater',
                patience=0)
        variants = [('', config)]
        for argument, values in SCHEDULER_VARIANTS.items():
            if argument in _init_parameters(cls):
                variants = [(f'-{argument}={value}',
                             dict(config, **{argument: value}))
                            for value in values]
        for suffix, variant in variants:
            runs.append(CorpusRun(name + suffix, param_scheduler=[variant]))
    return runs


def _scheduler_arguments(name: str, cls: type) -> dict:
    parameters = _init_parameters(cls)
    arguments = {
        k: v
        for k, v in SCHEDULER_SPAN.items()
        if k in parameters or _takes_kwargs(cls)
    }
    for parameter in parameters.values():
        if parameter.name in ('self', 'optimizer'):
            continue
        if parameter.default is parameter.empty or parameter.name in (
                'restart_weights', 'eta_min'):  # to match periods; XOR ratio
            if parameter.name not in SCHEDULER_ARGUMENTS:
                raise KeyError(f'scheduler {name} requires the argument '
                               f'{parameter.name!r}: add a value for it to '
                               f'SCHEDULER_ARGUMENTS in tools/corpus_runs.py')
            arguments[parameter.name] = SCHEDULER_ARGUMENTS[parameter.name]
    if 'param_name' not in inspect.signature(cls).parameters:
        arguments.pop('param_name', None)  # the LR and momentum forms'
    if 'eta_max' in arguments or 'total_steps' in arguments:
        arguments.pop('end', None)  # OneCycle: total_steps instead of end
    return arguments


def _init_parameters(cls: type) -> Dict[str, inspect.Parameter]:
    """The parameters of ``cls.__init__`` and, where it passes ``*args``/
    ``**kwargs`` on, of its bases' (mmseg's PolyLRRatio)."""
    parameters = {}
    for klass in cls.__mro__:
        init = klass.__dict__.get('__init__')
        if init is None:
            continue
        for name, parameter in inspect.signature(init).parameters.items():
            parameters.setdefault(name, parameter)
        if not _takes_kwargs(klass):
            break
    return {
        k: v
        for k, v in parameters.items()
        if v.kind not in (v.VAR_POSITIONAL, v.VAR_KEYWORD)
    }


def _takes_kwargs(cls: type) -> bool:
    init = cls.__dict__.get('__init__')
    return init is not None and any(
        p.kind == p.VAR_KEYWORD
        for p in inspect.signature(init).parameters.values())


# ---------------------------------------------------------- optimizer wrappers
def optim_wrapper_runs() -> List[CorpusRun]:
    """``OptimWrapper`` with SGD, Adam and AdamW, without and with gradient
    clipping (by norm; by value with accumulation), ``OptimWrapperDict``
    and ``AmpOptimWrapper``."""
    runs = []
    optimizers = dict(
        SGD=dict(type='SGD', lr=0.01, momentum=0.9, weight_decay=1e-4),
        Adam=dict(type='Adam', lr=1e-3),
        AdamW=dict(type='AdamW', lr=1e-3, weight_decay=0.05))
    for name, optimizer in optimizers.items():
        runs += [
            CorpusRun(
                f'OptimWrapper-{name}',
                optim_wrapper=dict(type='OptimWrapper', optimizer=optimizer)),
            CorpusRun(
                f'OptimWrapper-{name}-clip-norm',
                optim_wrapper=dict(
                    type='OptimWrapper',
                    optimizer=optimizer,
                    clip_grad=dict(max_norm=1.0, norm_type=2))),
            CorpusRun(
                f'OptimWrapper-{name}-clip-value-accumulate',
                optim_wrapper=dict(
                    type='OptimWrapper',
                    optimizer=optimizer,
                    accumulative_counts=2,
                    clip_grad=dict(type='value', clip_value=1.0))),
            CorpusRun(
                f'AmpOptimWrapper-{name}',
                optim_wrapper=dict(
                    type=_cpu_amp_optim_wrapper(),
                    optimizer=optimizer,
                    loss_scale='dynamic')),
        ]
        runs.append(
            CorpusRun(
                f'OptimWrapperDict-{name}',
                optim_wrapper=dict(
                    constructor=_per_module_constructor(),
                    backbone=dict(type='OptimWrapper', optimizer=optimizer),
                    head=dict(
                        type='OptimWrapper',
                        optimizer=dict(optimizer, lr=optimizer['lr'] / 2),
                        clip_grad=dict(max_norm=1.0))),
                param_scheduler=dict(
                    backbone=[dict(type='MultiStepLR', milestones=[1])],
                    head=[dict(type='LinearLR', start_factor=0.1, end=2)])))
    return runs


def registered_optim_wrappers() -> Dict[str, type]:
    from mmengine.registry import OPTIM_WRAPPERS
    return dict(OPTIM_WRAPPERS.module_dict)


_CPU_AMP = None


def _cpu_amp_optim_wrapper() -> type:
    """``AmpOptimWrapper`` as it runs on a GPU, built on a CPU (see the
    module docstring): mmengine's class, its device check bypassed while
    it is built, its loss scaler switched on."""
    global _CPU_AMP
    if _CPU_AMP is not None:
        return _CPU_AMP
    from mmengine.optim import AmpOptimWrapper
    from mmengine.optim.optimizer import amp_optimizer_wrapper as amp

    class CPUAmpOptimWrapper(AmpOptimWrapper):

        def __init__(self, **kwargs):
            checks = {
                name: getattr(amp, name)
                for name in dir(amp)
                if name.startswith('is_') and name.endswith('_available')
            }
            scaler = getattr(torch.amp, 'GradScaler', None)
            cpu_scaler = scaler is not None and 'device' in \
                inspect.signature(scaler).parameters
            with contextlib.ExitStack() as stack:
                for name in checks:
                    _patch(stack, amp, name, lambda: True)
                if cpu_scaler:
                    _patch(stack, amp, 'GradScaler',
                           lambda **kw: scaler('cpu', **kw))
                else:  # torch.cuda.amp's, as if CUDA were there
                    _patch(stack, sys.modules[amp.GradScaler.__module__],
                           'amp_definitely_not_available', lambda: False)
                super().__init__(dtype='bfloat16', **kwargs)
            self.scaler_runs = cpu_scaler

        def backward(self, loss, **kwargs):
            if self.scaler_runs:
                return super().backward(loss, **kwargs)
            loss.backward(**kwargs)
            self._inner_count += 1

        def step(self, **kwargs):
            if self.scaler_runs:
                return super().step(**kwargs)
            if self.clip_grad_kwargs:
                self._clip_grad()
            self.optimizer.step(**kwargs)

        @contextlib.contextmanager
        def optim_context(self, model):
            # autocast on the CPU in bfloat16, as mmengine's would on a GPU
            from mmengine.optim import OptimWrapper
            with OptimWrapper.optim_context(self, model), torch.autocast(
                    'cpu', dtype=torch.bfloat16):
                yield

    CPUAmpOptimWrapper.__qualname__ = CPUAmpOptimWrapper.__name__
    _CPU_AMP = CPUAmpOptimWrapper
    return _CPU_AMP


def _patch(stack: contextlib.ExitStack, owner, name: str, value) -> None:
    """Set ``owner.name`` to ``value`` until ``stack`` closes."""
    stack.callback(setattr, owner, name, getattr(owner, name))
    setattr(owner, name, value)


# ----------------------------------------------------------------------- hooks
def stateful_hooks() -> Dict[str, type]:
    """Every hook in the registries of mmengine, mmdet and mmseg that writes
    into checkpoints (overrides ``before_save_checkpoint``)."""
    from mmengine.hooks import Hook
    from mmengine.registry import HOOKS
    found = {}
    for scope, registry in _registries('HOOKS', HOOKS):
        for name, cls in registry.module_dict.items():
            if cls.before_save_checkpoint is not Hook.before_save_checkpoint:
                found[name if scope == 'mmengine' else f'{scope}.{name}'] = \
                    cls
    return found


def averaged_models() -> List[str]:
    """Every averaged model (``EMAHook(ema_type=...)``) registered in
    mmengine, mmdet and mmseg."""
    from mmengine.model import BaseAveragedModel
    from mmengine.registry import MODELS
    found = []
    for scope, registry in _registries('MODELS', MODELS):
        for name, cls in registry.module_dict.items():
            if isinstance(cls, type) and issubclass(cls, BaseAveragedModel):
                found.append(name if scope ==
                             'mmengine' else f'{scope}.{name}')
    return sorted(found)


#: How the corpus runs each stateful hook: hook name -> function giving the
#: runs. A hook that a release adds is missing here, and the corpus test
#: says so.
def _ema_runs() -> List[CorpusRun]:
    return [
        CorpusRun(
            f'EMAHook-{ema_type}',
            custom_hooks=[dict(type='EMAHook', ema_type=ema_type)])
        for ema_type in averaged_models()
    ]


HOOK_RUNS: Dict[str, Callable[[], List[CorpusRun]]] = {'EMAHook': _ema_runs}


def hook_runs() -> List[CorpusRun]:
    runs = []
    for name in sorted(stateful_hooks()):
        if name not in HOOK_RUNS:
            raise KeyError(
                f'hook {name} writes state into checkpoints and the corpus '
                f'has no run for it: add one to HOOK_RUNS in '
                f'tools/corpus_runs.py')
        runs += HOOK_RUNS[name]()
    return runs


def fixture_run() -> CorpusRun:
    """One run whose checkpoint names everything that
    :mod:`mmcmt.checkpoint.allow_list` allows on its stack (chained warm-up,
    MultiStep and OneCycle schedules, AMP with AdamW, EMA): the file
    ``tests/data/checkpoints/<stack>.pth`` that each stack keeps for the
    other to load."""
    return CorpusRun(
        'fixture',
        param_scheduler=[
            dict(type='LinearLR', start_factor=0.1, **SCHEDULER_SPAN),
            dict(type='MultiStepLR', milestones=[1, 3], **SCHEDULER_SPAN),
        ] + [
            dict(
                type='OneCycleLR',
                eta_max=0.1,
                total_steps=4,
                anneal_strategy=strategy,
                by_epoch=False)
            for strategy in SCHEDULER_VARIANTS['anneal_strategy']
        ],
        optim_wrapper=dict(
            type=_cpu_amp_optim_wrapper(),
            optimizer=dict(type='AdamW', lr=1e-3, weight_decay=0.05)),
        custom_hooks=[
            dict(type='EMAHook', ema_type='ExponentialMovingAverage')
        ])


def corpus_runs() -> List[CorpusRun]:
    """The whole corpus: schedulers, optimizer wrappers, stateful hooks."""
    return scheduler_runs() + optim_wrapper_runs() + hook_runs()


def _registries(attribute: str, root):
    """(scope, registry) of mmengine's root ``attribute`` registry and of
    mmdet's and mmseg's, with their modules registered."""
    import importlib
    found = [('mmengine', root)]
    for scope, modules in (('mmdet', ('mmdet.engine', 'mmdet.models')),
                           ('mmseg', ('mmseg.engine', 'mmseg.models'))):
        try:
            for module in modules:
                importlib.import_module(module)
            registry = getattr(
                importlib.import_module(f'{scope}.registry'), attribute)
        except ImportError:
            continue
        found.append((scope, registry))
    return found


def _per_module_constructor() -> type:
    """An optimizer wrapper constructor that builds one wrapper per
    top-level child module named in its config, as GAN-style configs build
    an ``OptimWrapperDict``."""
    from mmengine.optim import DefaultOptimWrapperConstructor, OptimWrapperDict

    class PerModuleOptimWrapperConstructor:

        def __init__(self, optim_wrapper_cfg, paramwise_cfg=None):
            self.configs = optim_wrapper_cfg

        def __call__(self, model):
            model = getattr(model, 'module', model)
            return OptimWrapperDict(
                **{
                    key: DefaultOptimWrapperConstructor(cfg)(getattr(
                        model, key))
                    for key, cfg in self.configs.items()
                })

    return PerModuleOptimWrapperConstructor


def stack_name(torch_version: Optional[str] = None) -> str:
    """The software stack a corpus was written on, for file names:
    ``torch2.13-numpy2``."""
    version = (torch_version or torch.__version__).split('+')[0]
    return (f'torch{".".join(version.split(".")[:2])}-'
            f'numpy{np.__version__.split(".")[0]}')
