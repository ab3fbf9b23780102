"""Everything a normal run writes loads again, on every stack, through every
path, and payloads are still refused with nothing run.

The corpus (``tools/corpus_runs.py``) is written here by mmengine's
real Runner: one run per parameter scheduler registered in mmengine, mmdet
and mmseg (enumerated from the registries), per optimizer wrapper (SGD,
Adam, AdamW; clipping, accumulation, ``OptimWrapperDict``,
``AmpOptimWrapper``) and per stateful hook (``EMAHook`` with every averaged
model), each with the message hub's numpy values. The safe loader's
allow-list must be exactly what those checkpoints name (with the other
stack's fixture in ``tests/data/checkpoints/``). The shipped COCO and ADE20K
configs' own schedules, optimizer wrappers and hooks run the same way.
"""
import glob
import os
import os.path as osp
import sys
from collections import Counter

import numpy as np
import pytest
import torch
from helpers import ROOT, run_tool

from mmcmt import compat
from mmcmt.checkpoint import allow_list, safe_load
from mmcmt.checkpoint.inspection import pickled_globals
from mmcmt.checkpoint.safe_load import UntrustedCheckpointError, load_file

sys.path.insert(0, osp.join(ROOT, 'tools'))
import corpus_runs as corpus  # noqa: E402 isort: skip (on the path above)

RUNS = corpus.corpus_runs()
LOADERS = ['restricted'] + ['add_safe_globals'] * compat.HAS_SAFE_GLOBALS
FIXTURES = sorted(
    glob.glob(osp.join(ROOT, 'tests', 'data', 'checkpoints', '*.pth')))
SHIPPED = sorted(
    glob.glob(osp.join(ROOT, 'configs', '*_coco.py')) +
    glob.glob(osp.join(ROOT, 'configs', '*_ade20k.py')))


@pytest.fixture(scope='module')
def written(tmp_path_factory):
    """The corpus: run name -> its last checkpoint (epoch 2)."""
    tmp = tmp_path_factory.mktemp('corpus')
    paths = {}
    for run in RUNS:
        corpus.train_run(run, str(tmp / run.name)).train()
        paths[run.name] = str(tmp / run.name / 'epoch_2.pth')
    return paths


@pytest.fixture(params=LOADERS)
def loader(request, monkeypatch):
    """Both safe loaders where torch has named safe globals (torch 2.1's
    restricted unpickler is also run on the newest torch)."""
    monkeypatch.setattr(safe_load, 'HAS_SAFE_GLOBALS',
                        request.param == 'add_safe_globals')
    return request.param


def _same(a, b):
    """Loaded safely == loaded by plain pickle (this is our own file)."""
    if isinstance(a, torch.Tensor):
        return torch.equal(a, b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(map(_same, a, b))
    if isinstance(a, np.ndarray):
        return np.array_equal(a, b)
    if hasattr(a, '__dict__') and not callable(a):
        return type(a) is type(b) and _same(vars(a), vars(b))
    return a == b


@pytest.mark.parametrize('run', RUNS, ids=lambda run: run.name)
def test_run_loads_again_and_resumes(run, written, loader, tmp_path):
    """load_file gives what was saved; mmengine's load_checkpoint,
    ``load_from`` and ``resume`` read it through the safe loader."""
    from mmengine.runner import load_checkpoint
    path = written[run.name]
    plain = torch.load(path, map_location='cpu', weights_only=False)
    assert _same(load_file(path), plain)

    model = corpus.toy_model()
    load_checkpoint(model, path, map_location='cpu')
    for key, value in model.state_dict().items():
        assert torch.equal(value, plain['state_dict'][key]), key

    runner = corpus.resume_run(run, str(tmp_path / 'resumed'), path)
    runner.train()
    assert (runner.epoch, runner.iter) == (3, 6)
    resumed = load_file(str(tmp_path / 'resumed' / 'epoch_3.pth'))
    assert resumed['meta']['iter'] == 6
    assert resumed.keys() == plain.keys()


def test_allow_list_is_what_runs_write(written):
    """Every name the corpus and the fixtures hold is allowed (by torch or
    the list), and every entry of the list is held by one of them."""
    held = {}
    for name, path in list(written.items()) + [(osp.basename(p), p)
                                               for p in FIXTURES]:
        for global_name in pickled_globals(path):
            held.setdefault(global_name, []).append(name)
    refused = {
        n: runs[:3]
        for n, runs in held.items() if not safe_load.is_allowed(n)
    }
    assert not refused, refused
    unused = allow_list.listed_names() - set(held)
    assert not unused, f'allowed, but no run writes them: {unused}'
    from torch._weights_only_unpickler import _get_allowed_globals
    beyond = set(held) - set(_get_allowed_globals())
    print(f'{len(written)} runs on {corpus.stack_name()}: '
          f'{sorted(beyond)}')


def test_fixture_of_this_stack_is_current(tmp_path):
    """tests/data/checkpoints/<this stack>.pth names what this stack writes
    today (the other stack's tests load it)."""
    mine = osp.join(ROOT, 'tests', 'data', 'checkpoints',
                    f'{corpus.stack_name()}.pth')
    assert mine in FIXTURES, \
        'run tools/checkpoint_corpus.py --write-fixture on this stack'
    corpus.train_run(corpus.fixture_run(), str(tmp_path)).train()
    assert pickled_globals(str(tmp_path / 'epoch_2.pth')) == \
        pickled_globals(mine), \
        'stale: run tools/checkpoint_corpus.py --write-fixture'
    assert len(FIXTURES) >= 2  # this stack's and the other's


@pytest.mark.parametrize('fixture', FIXTURES, ids=osp.basename)
def test_checkpoint_of_either_stack_loads(fixture, loader, tmp_path):
    """A checkpoint written on torch 2.1/numpy 1.x loads on the newest
    stack and the other way round, its schedulers and AMP state whole, and
    a run resumes from it."""
    from mmengine.logging import HistoryBuffer
    from mmengine.optim.scheduler import OneCycleParamScheduler
    checkpoint = load_file(fixture)
    assert checkpoint['meta']['iter'] == 4
    schedulers = checkpoint['param_schedulers']
    assert schedulers[1]['milestones'] == Counter({1: 1, 3: 1})
    assert [s['anneal_func'] for s in schedulers[2:]] == [
        OneCycleParamScheduler._annealing_cos,
        OneCycleParamScheduler._annealing_linear
    ]
    scaler = checkpoint['optimizer']['loss_scaler']
    assert scaler['scale'] > 0 and scaler['growth_interval'] == 2000
    assert 'ema_state_dict' in checkpoint
    buffers = checkpoint['message_hub']['log_scalars']
    assert isinstance(buffers['train/loss'], HistoryBuffer)
    assert np.isfinite(buffers['train/loss'].mean())
    runner = corpus.resume_run(corpus.fixture_run(), str(tmp_path), fixture)
    runner.train()
    assert runner.iter == 6


def test_tool_tells_what_a_file_holds(tmp_path):
    """tools/checkpoint_corpus.py FILE...: the names beyond torch's list,
    allowed or refused, without building anything (the payload does not
    run); exit status 1 when a file does not load."""
    marker = tmp_path / 'ran'
    payload = str(tmp_path / 'payload.pth')
    torch.save(dict(meta=_Reduce(os.system, f'touch {marker}')), payload)
    result = run_tool(
        'tools/checkpoint_corpus.py', FIXTURES[0], payload, check=False)
    assert result.returncode == 1, result.stderr[-2000:]
    rows = {
        line.split(' | ')[0].strip('| '): line
        for line in result.stdout.splitlines() if line.startswith('| /')
    }
    assert rows[FIXTURES[0]].endswith('| yes |')
    assert 'getattr(mmengine.optim.scheduler.param_scheduler.' \
        'OneCycleParamScheduler, _annealing_linear)' in rows[FIXTURES[0]]
    assert '**posix.system** (refused)' in rows[payload]
    assert 'not trusted' in rows[payload] and not marker.exists()
    taken = tmp_path / 'taken'
    taken.mkdir()
    (taken / 'mine.txt').write_text('kept')
    result = run_tool(
        'tools/checkpoint_corpus.py', '--corpus', str(taken), check=False)
    assert result.returncode == 2 and 'not empty' in result.stderr
    assert (taken / 'mine.txt').read_text() == 'kept'


def test_every_registered_piece_is_in_the_corpus():
    """Schedulers, optimizer wrappers, stateful hooks and averaged models as
    the registries list them today: each has a run (or, for optimizer
    wrappers that need CUDA-only packages, a stated reason)."""
    names = {run.name for run in RUNS}
    for scheduler in corpus.registered_schedulers():
        assert any(n == scheduler or n.startswith(scheduler + '-')
                   for n in names), scheduler
    assert len(corpus.registered_schedulers()) >= 33  # mmengine 0.10 + both
    for wrapper in corpus.registered_optim_wrappers():
        assert wrapper in corpus.NOT_IN_CORPUS or any(
            n.startswith(wrapper + '-') for n in names), wrapper
    assert set(corpus.stateful_hooks()) == {'EMAHook'}
    for ema_type in corpus.averaged_models():
        assert f'EMAHook-{ema_type}' in names
    assert 'mmdet.ExpMomentumEMA' in corpus.averaged_models()


# ------------------------------------------------------------------ payloads
class _Reduce:
    """Pickles as ``function(*args)``."""

    def __init__(self, function, *args):
        self.function, self.args = function, args

    def __reduce__(self):
        return self.function, self.args


def _payloads(marker):
    """Files that use the names the list allows to reach further."""
    from mmengine.logging import HistoryBuffer
    from mmengine.optim.scheduler import OneCycleParamScheduler
    touch = _Reduce(os.system, f'touch {marker}')
    return {
        # an attribute owner is no callable
        'call an owner':
        _Reduce(OneCycleParamScheduler, None, 0.1),
        # getattr beyond the named attributes
        'getattr __init__':
        _Reduce(getattr, OneCycleParamScheduler, '__init__'),
        'getattr __globals__':
        _Reduce(getattr, HistoryBuffer, '__dict__'),
        'getattr of Counter':
        _Reduce(getattr, Counter, 'fromkeys'),
        'register statistics':
        _Reduce(getattr, HistoryBuffer, 'register_statistics'),
        'os.system':
        touch,
        'os.system in a Counter':
        _Reduce(Counter, {'x': touch}),
    }


@pytest.mark.parametrize('payload', list(_payloads('x')))
def test_payloads_are_refused(payload, loader, tmp_path, capfd):
    from mmengine.runner import load_checkpoint
    marker = tmp_path / 'ran'
    path = str(tmp_path / 'payload.pth')
    torch.save(dict(state_dict={}, meta=_payloads(marker)[payload]), path)
    for load in (load_file, lambda p: load_checkpoint(corpus.toy_model(), p)):
        with pytest.raises(safe_load.CheckpointError) as info:
            load(path)
        message = str(info.value)
        assert len(message.splitlines()) == 1
        assert 'not trusted' in message and 'allow_globals' not in message
        assert 'weights_only' not in message
    assert not marker.exists()
    if payload.startswith('getattr') or payload == 'register statistics':
        assert 'getattr(' in message and 'not trusted' in message


# ----------------------------------------------- a benign object unforeseen
class UserState:
    """What a user's own hook keeps in its checkpoints."""

    def __init__(self, steps):
        self.steps = steps


class UserStateHook:
    """A user's hook that saves and restores its own object."""
    priority = 'NORMAL'

    def __init__(self):
        self.restored = None

    def before_save_checkpoint(self, runner, checkpoint):
        checkpoint['user_state'] = UserState(runner.iter)

    def after_load_checkpoint(self, runner, checkpoint):
        self.restored = checkpoint['user_state'].steps


def _user_hook():
    from mmengine.hooks import Hook
    return type('UserStateHook', (UserStateHook, Hook), {})()


@pytest.fixture
def clean_allow_list(monkeypatch):
    """Leave the user's allow-list (mmcmt's and torch's) as it was."""
    monkeypatch.setattr(allow_list, '_USER_GLOBALS', {})
    if compat.HAS_SAFE_GLOBALS:
        before = torch.serialization.get_safe_globals()
        yield
        torch.serialization.clear_safe_globals()
        torch.serialization.add_safe_globals(before)
    else:
        yield


NAME = f'{UserState.__module__}.UserState'


@pytest.mark.parametrize('how', ['config', 'api'])
def test_user_object_named_then_allowed(how, loader, clean_allow_list,
                                        tmp_path):
    """One line names the class and how to allow it; once allowed (config
    key or API), the run resumes and the hook gets its object back."""
    run = corpus.CorpusRun('user', custom_hooks=[_user_hook()])
    corpus.train_run(run, str(tmp_path / 'first')).train()
    path = str(tmp_path / 'first' / 'epoch_2.pth')
    with pytest.raises(UntrustedCheckpointError) as info:
        corpus.resume_run(run, str(tmp_path / 'refused'), path).train()
    message = str(info.value)
    assert len(message.splitlines()) == 1
    assert f'it holds {NAME},' in message
    assert f"mmcmt.checkpoint.allow_globals('{NAME}')" in message
    assert (f"custom_hooks=[dict(type='AllowCheckpointGlobalsHook', "
            f"names=['{NAME}'])]") in message
    assert 'weights_only' not in message

    hook = _user_hook()
    hooks = [hook]
    if how == 'config':
        hooks.append(dict(type='AllowCheckpointGlobalsHook', names=[NAME]))
    else:
        from mmcmt.checkpoint import allow_globals
        allow_globals(UserState)
    allowed = corpus.CorpusRun('user', custom_hooks=hooks)
    runner = corpus.resume_run(allowed, str(tmp_path / 'resumed'), path)
    runner.train()
    assert hook.restored == 4 and runner.iter == 6
    assert load_file(path)['user_state'].steps == 4


@pytest.mark.parametrize('name', [
    'posix.system', 'os.system', 'builtins.eval', 'builtins.getattr',
    'subprocess.Popen', 'no_such_module.Thing'
])
def test_allow_globals_refuses_what_runs_code(name, clean_allow_list):
    from mmcmt.checkpoint import allow_globals
    with pytest.raises(ValueError) as info:
        allow_globals(name)
    assert name in str(info.value)
    assert allow_list.user_globals() == {}


def test_code_is_never_offered_to_be_allowed(tmp_path):
    """A payload's refusal names it and never suggests allowing it."""
    path = str(tmp_path / 'payload.pth')
    torch.save(dict(meta=_Reduce(os.system, 'true')), path)
    with pytest.raises(UntrustedCheckpointError) as info:
        load_file(path)
    assert 'system' in str(info.value)
    assert 'allow_globals' not in str(info.value)


# ------------------------------------------- the shipped configs' schedules
def _shipped_run(config_path, tmp):
    """The shipped config's param_scheduler, optim_wrapper, default and
    custom hooks and train loop kind, on the toy model: 2 epochs (or 4
    iterations) with a checkpoint at the end of each half."""
    from mmengine.config import Config
    cfg = Config.fromfile(config_path)
    train_cfg = dict(cfg.train_cfg)
    hooks = dict(cfg.default_hooks)
    if train_cfg.get('type') == 'IterBasedTrainLoop':
        train_cfg.update(max_iters=4, val_interval=2)
        hooks['checkpoint'] = dict(hooks['checkpoint'], interval=2)
        final = 'iter_4.pth'
    else:
        train_cfg.update(max_epochs=2, val_interval=1)
        hooks['checkpoint'] = dict(hooks['checkpoint'], interval=1)
        final = 'epoch_2.pth'
    hooks['checkpoint'].update(save_best='toy/score', rule='greater')
    run = corpus.CorpusRun(
        osp.basename(config_path),
        param_scheduler=cfg.param_scheduler,
        optim_wrapper=cfg.optim_wrapper,
        default_hooks=hooks,
        custom_hooks=cfg.get('custom_hooks', []),
        default_scope=cfg.default_scope)
    runner = corpus.train_run(run, str(tmp / 'train'), train_cfg=train_cfg)
    return run, runner, train_cfg, str(tmp / 'train' / final)


@pytest.mark.parametrize('config', SHIPPED, ids=osp.basename)
def test_shipped_schedule_saves_loads_resumes(config, tmp_path):
    """Each shipped COCO and ADE20K config's own scheduler chain, optimizer
    wrapper and hooks: the checkpoint loads safely and the run resumes
    with the schedulers' state (MultiStepLR's Counter on torch 2.1)."""
    run, runner, train_cfg, path = _shipped_run(config, tmp_path)
    runner.train()
    checkpoint = load_file(path)
    kinds = [s['by_epoch'] for s in checkpoint['param_schedulers']]
    assert len(kinds) == len(
        runner.cfg.get('param_scheduler') or run['param_scheduler'])
    if 'IterBased' in str(train_cfg.get('type')):
        resumed_cfg = dict(train_cfg, max_iters=6)
    else:
        resumed_cfg = dict(train_cfg, max_epochs=3)
    resumed = corpus.train_run(
        run,
        str(tmp_path / 'resumed'),
        train_cfg=resumed_cfg,
        load_from=path,
        resume=True)
    resumed.train()
    assert resumed.iter == 6
    lrs = [g['lr'] for g in resumed.optim_wrapper.param_groups]
    assert all(lr > 0 for lr in lrs)
