"""The tasks: what each one measures (the backbones' and the RetinaNets'
inference, training steps and their peak memory, ONNX Runtime against
PyTorch) and the checks made on the way (the naive row against CMT, the
autocast error against float32). :func:`run_tasks` runs the asked ones and
returns one dict of results per row."""
import gc
import os.path as osp
import tempfile
import time
import warnings
from collections import OrderedDict

import torch

from mmcmt.models import CMT
from mmcmt.utils import (autocast, autocast_networks, count_params,
                         dummy_data_samples, relative_error)
from .attention import attention_step
from .distributed import syncbn_task
from .harness import make_inputs
from .memory import cpu_peak_memory, cuda_peak_memory
from .models import (DEPLOY_ROWS, NO_CP, TRAIN_ONLY, build_backbone,
                     build_retinanet, count_macs, inference_model,
                     retinanet_config, setup_process)
from .train_steps import prepare_train_step, train_rounds

#: name -> what it measures (the CLI's help lists them).
TASKS = OrderedDict([
    ('det', 'backbone inference (eval, no grad) at --det-shape'),
    ('stream', 'backbone inference over a COCO-like stream of sizes (the '
     'padded sizes of mmdet\'s COCO resize, in a fixed shuffled order, so '
     'that caches keyed on the size are exercised as in a COCO '
     'evaluation); beside it the same-size time: each image run a second '
     'time right after, those second runs summed'),
    ('cls', 'backbone inference at --cls-shape'),
    ('cls64', 'backbone inference at --cls64-shape'),
    ('demo', 'backbone inference at --demo-shape (the detection demo\'s '
     'batch)'),
    ('retinanet', 'the whole RetinaNet of each backbone\'s COCO config '
     '(backbone, FPN, head, post-processing) at --det-shape'),
    ('retinanet_stream', 'the same over the COCO-like stream'),
    ('train', 'one training step of the backbone as its RetinaNet config '
     'trains it (forward, then backward of the mean of its outputs) at '
     '--train-shape, and its peak memory'),
    ('train_cp', 'the same with with_cp=True (gradient checkpointing)'),
    ('demo_train', 'the train task at --demo-shape'),
    ('train_attention', 'with train, in its rounds: every CMT block\'s '
     'attention alone, forward and backward on the shapes of its training '
     'step, as mmcmt computes it (the bias\'s gradient included) and, as '
     'a bound, PyTorch\'s scaled_dot_product_attention with the bias as a '
     'constant mask (no bias gradient)'),
    ('train_syncbn', 'one training step of the backbone as its RetinaNet '
     'config trains it in distributed runs (sync_bn: SyncBatchNorms), in 2 '
     'local gloo processes, each with half of --train-shape\'s batch and '
     'half the threads; time per step and peak memory per process'),
    ('retinanet_train', 'one training iteration of the whole RetinaNet of '
     'each backbone\'s COCO config (mmdet\'s losses on random boxes, '
     'backward, the config\'s optimizer step) at --train-shape, and its '
     'peak memory'),
    ('deploy', 'the whole RetinaNet at --det-shape exported to ONNX Runtime '
     '(CPU, float32, as many threads as torch) against PyTorch eager, for '
     f'{", ".join(DEPLOY_ROWS)}, and its backbone and FPN alone; the share '
     'of ONNX Runtime\'s kernel time per operator type for CMT-S'),
    ('deploy_stream', 'the deploy task\'s RetinaNets over the COCO-like '
     'stream (each size new to the model: CMT\'s position biases are '
     'computed for every image, in both)'),
])
DEPLOY_TASKS = ('deploy', 'deploy_stream')
INFER_TASKS = ('det', 'stream', 'cls', 'cls64', 'demo')
DETECTOR_TASKS = ('retinanet', 'retinanet_stream')
TRAIN_TASKS = ('train', 'train_cp', 'demo_train', 'train_attention',
               'train_syncbn', 'retinanet_train')
#: The input of each training task (``bench.inputs`` key): ``train``'s but
#: for those listed.
TRAIN_INPUTS = dict(demo_train='demo')
#: A CMT row's attention run in the train task: '<row>' + this.
ATTENTION_RUN = ' attention'


def run_tasks(bench, rows, tasks):
    """Measure ``tasks`` for ``rows`` (name -> (backbone row, variant));
    returns name -> that row's results (key -> figure)."""
    results = OrderedDict((name, {}) for name in rows)
    groups = [(backbone_tasks, INFER_TASKS), (detector_tasks, DETECTOR_TASKS),
              (training_tasks, TRAIN_TASKS)]
    for measure, group in groups:
        chosen = [t for t in tasks if t in group]
        if chosen:
            measure(bench, rows, chosen, results)
            gc.collect()
    chosen = [t for t in tasks if t in DEPLOY_TASKS]
    if chosen:
        deploy_tasks(bench, rows, chosen, results)
    return results


def backbone_tasks(bench, rows, tasks, results):
    """Inference of every row's backbone; its parameters and multiply-adds;
    with ``--amp``, its error against float32."""
    args = bench.args
    models = OrderedDict()
    for name, (base, variant) in inference_rows(rows).items():
        model = build_backbone(base, variant).to(bench.device)
        row = results[name]
        row['params'] = count_params(model) / 1e6
        model.eval()  # (mmdet's ResNet.train() returns None: no chaining)
        if 'compiled' not in variant:  # the tracer counts the eager model
            for task in ('det', 'cls'):
                row[f'{task}_macs'] = count_macs(
                    model, getattr(args, f'{task}_shape'))
        if variant == 'naive':
            row['check'] = naive_matches_cmt(model, bench)
        models[name] = inference_model(model, variant)
        if args.amp and 'compiled' not in variant:
            row['amp_error'] = amp_error(models[name], bench)
    for task in tasks:
        print(f'  {task}: {len(models)} models, interleaved', flush=True)
        timed = bench.stream if task == 'stream' else bench.inference
        runs = OrderedDict((name, timed(model, bench.task_inputs(task)))
                           for name, model in models.items())
        compile_notes(runs, rows, results)
        for name, figure in bench.measure(runs).items():
            results[name].update(
                figure if isinstance(figure, dict) else {task: figure})


def compile_notes(runs, rows, results):
    """Compile the compiled rows (their first calls) before the timed
    rounds, timed for a note: compilation is a one-off cost, not the
    model's speed."""
    for name, run in runs.items():
        if 'compiled' in rows[name][1] and 'note' not in results[name]:
            start = time.perf_counter()
            run()
            results[name]['note'] = (f'compile and first calls '
                                     f'{time.perf_counter() - start:.0f} s')


def detector_tasks(bench, rows, tasks, results):
    """Inference of every row's whole RetinaNet. With ``--amp`` only its
    networks run under autocast (:func:`autocast_networks`): boxes are
    decoded and suppressed in float32."""
    models = OrderedDict(
        (name, build_retinanet(base, variant).to(bench.device))
        for name, (base, variant) in inference_rows(rows).items()
        if variant != 'naive')
    if bench.args.amp:
        for model in models.values():
            autocast_networks(model, bench.args.amp, bench.device.type)
    for task in tasks:
        print(f'  {task}: {len(models)} models, interleaved', flush=True)
        inputs = bench.task_inputs(task)
        samples = {
            id(x): [
                s.to(bench.device) for s in dummy_data_samples(
                    'mmdet', *x.shape[-2:], batch_size=x.shape[0])
            ]
            for x in inputs
        }
        runs = OrderedDict(
            (name,
             bench.inference(
                 lambda x, model=model: model.predict(x, samples[id(x)]),
                 inputs,
                 amp=False)) for name, model in models.items())
        compile_notes(runs, rows, results)
        for name, figure in bench.measure(runs).items():
            results[name][task] = figure


def inference_rows(rows):
    """``rows`` without those only the training tasks measure."""
    return OrderedDict(
        (name, row) for name, row in rows.items() if row[1] not in TRAIN_ONLY)


def _child_train_step(args, base, variant, task):
    """:func:`prepare_train_step` in a memory-measuring process."""
    if args.threads:
        torch.set_num_threads(args.threads)
    setup_process()
    inputs = make_inputs(args, torch.device('cpu'))
    return prepare_train_step(args, base, variant, task,
                              inputs[train_input(task)])


def train_input(task):
    """The ``bench.inputs`` key of a training task's input."""
    return TRAIN_INPUTS.get(task, 'train')


def training_tasks(bench, rows, tasks, results):
    """Training steps of the backbones and RetinaNets (no fused or compiled
    rows; the naive one for the backbone steps only), their peak memory
    first, each in a fresh process."""
    args = bench.args
    with_attention = 'train_attention' in tasks
    if with_attention and 'train' not in tasks:
        tasks = ['train'] + list(tasks)
    for task in tasks:
        if task == 'train_attention':
            continue  # measured in train's rounds
        names = [
            name for name, (base, variant) in rows.items()
            if variant in ('', 'naive', 'unfrozen', 'plain')
            and not (task == 'train_cp' and (variant or base in NO_CP))
            and not (task in ('retinanet_train',
                              'train_syncbn') and variant == 'naive')
        ]
        if task == 'train_syncbn':
            syncbn_task(bench, OrderedDict((n, rows[n]) for n in names),
                        results)
            continue
        for name in names:
            base, variant = rows[name]
            results[name][f'{task}_mem'] = (
                cpu_peak_memory(_child_train_step, (args, base, variant, task),
                                name) if bench.device.type == 'cpu' else None)
        runs = OrderedDict()
        if bench.device.type == 'cuda' or train_rounds(args):
            x = bench.inputs[train_input(task)]
            runs = OrderedDict(
                (name, prepare_train_step(args, *rows[name], task, x))
                for name in names)
        if bench.device.type == 'cuda':
            for name, run in runs.items():
                results[name][f'{task}_mem'] = cuda_peak_memory(
                    run, bench.device)
        if not train_rounds(args):
            continue  # peak memory only
        if task == 'train' and with_attention:
            runs.update(attention_runs(bench, rows, names))
        print(f'  {task}: {len(runs)} models, interleaved', flush=True)
        for name, figure in bench.measure(runs, train_rounds(args)).items():
            if isinstance(figure, dict):  # a CMT row's attention timings
                results[name[:-len(ATTENTION_RUN)]].update(figure)
            else:
                results[name][task] = figure
        del runs
        gc.collect()


def attention_runs(bench, rows, names):
    """``'<row>' + ATTENTION_RUN`` -> :func:`.attention.attention_step` for the
    CMT rows of ``names`` (not their variants), each on a model of its own
    built as the row's training step builds it."""
    runs = OrderedDict()
    for name in names:
        base, variant = rows[name]
        if base.startswith('CMT') and not variant:
            model = build_backbone(base, variant, as_trained=True)
            model.train()
            runs[name + ATTENTION_RUN] = attention_step(
                model.to(bench.device), bench.inputs['train'])
    return runs


def deploy_tasks(bench, rows, tasks, results):
    """PyTorch eager against ONNX Runtime. ``deploy``: on the ``det``
    input, the whole RetinaNet (``predict``, mmdet's post-processing
    included) and its features alone (backbone and FPN, ``extract_feat``);
    the time of CMT-S's size inputs (position biases, computed once per
    input size) and its operator shares in ONNX Runtime, per run at a known
    size. ``deploy_stream``: the RetinaNets over the stream."""
    from mmcmt.deploy import (end_profiling, export_detector,
                              load_onnx_detector, onnx_modules, op_time_shares)
    names = [n for n in inference_rows(rows) if n in DEPLOY_ROWS]
    x = bench.inputs['det'].cpu()
    inputs = dict(deploy=[x], deploy_stream=bench.task_inputs('stream'))
    samples = {
        id(x):
        dummy_data_samples('mmdet', *x.shape[-2:], batch_size=x.shape[0])
        for task in tasks
        for x in inputs[task]
    }
    threads = torch.get_num_threads()
    runs, exports = OrderedDict(), {}
    work = tempfile.mkdtemp(prefix='mmcmt_deploy_')
    for name in names:
        print(f'  deploy: exporting {name}', flush=True)
        eager = build_retinanet(name, '')
        cfg = retinanet_config(name)
        cfg.model.pop('data_preprocessor', None)  # as build_retinanet
        exports[name] = osp.join(work, name)
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')  # the tracer's chatter
            export_detector(eager, cfg, exports[name], shape=x.shape[-2:])
        deployed = load_onnx_detector(exports[name], threads=threads)
        for kind, model in (('eager', eager), ('ort', deployed)):
            for task in tasks:
                runs[(name, f'{task}_{kind}')] = bench.inference(
                    lambda x, model=model: model.predict(x, samples[id(x)]),
                    inputs[task],
                    amp=False)
            if 'deploy' in tasks:
                runs[(name, f'deploy_features_{kind}')] = bench.inference(
                    model.extract_feat, [x], amp=False)
    print(f'  deploy: {len(runs)} runs, interleaved', flush=True)
    for (name, key), figure in bench.measure(runs).items():
        results[name][key] = figure
    for name in names:
        row = results[name]
        for task in tasks:
            row[f'{task}_speedup'] = row[f'{task}_eager'].ratio_to(
                row[f'{task}_ort'])
    if 'CMT-S' in exports and 'deploy' in tasks:
        profiled = load_onnx_detector(
            exports['CMT-S'],
            threads=threads,
            profile_prefix=osp.join(work, 'prof_'))
        features = onnx_modules(profiled)['features']
        with torch.no_grad():
            start = time.perf_counter()
            features.size_feeds(x.numpy())
            size_time = time.perf_counter() - start
            for _ in range(2):
                profiled.predict(x, samples[id(x)])
        files = end_profiling(profiled)
        results['CMT-S']['ort_shares'] = op_time_shares(
            [f for f in files if '.size_inputs' not in f], grouped=True)
        results['CMT-S']['ort_size_inputs'] = size_time


def naive_matches_cmt(naive, bench):
    """Max relative error between the naive row and mmcmt's CMT loaded with
    the same (official-layout) weights, on the ``cls`` input: the naive row
    is a fair baseline only if it computes the same function."""
    model = CMT(naive.settings).to(bench.device).eval()
    model.load_state_dict(naive.state(), strict=True)
    naive.eval()
    x = bench.inputs['cls'][:2]
    with torch.no_grad():
        errors = [relative_error(a, b) for a, b in zip(model(x), naive(x))]
    return max(errors)


def amp_error(model, bench):
    """Max relative error of the outputs under autocast against float32, on
    the ``det`` input."""
    x = bench.inputs['det']
    with torch.no_grad():
        reference = model(x)
        with autocast(bench.device, bench.args.amp):
            outputs = model(x)
    return max(
        relative_error(a.float(), b) for a, b in zip(outputs, reference))
