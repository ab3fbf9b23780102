"""Training curves from the scalars mmengine logs (``vis_data/scalars.json``).

Every run of mmengine's Runner writes, under ``WORK_DIR/<timestamp>/
vis_data/scalars.json``, one JSON line per logged training iteration (the
losses, ``lr``, ``iter``, ``epoch``) and one per evaluation (the metrics and
``step``: the epoch, or the iteration of iteration-based schedules).
"""
import glob
import json
import os.path as osp
from typing import Dict, List, Tuple

#: Metrics worth a curve, in the order they are drawn: detection (COCO, and
#: the fraction of objects found: mmcmt.evaluation) and segmentation (mmseg's
#: IoUMetric).
METRICS = ('coco/bbox_mAP', 'coco/bbox_mAP_50', 'coco/bbox_mAP_75',
           'coco/segm_mAP', 'objects/found', 'mIoU', 'mAcc', 'aAcc')


def read_scalars(work_dir: str) -> Tuple[List[dict], List[dict]]:
    """The training entries (by iteration) and evaluation entries (by
    step) of every run in ``work_dir``; a resumed run's entries replace
    those of the same iteration."""
    train: Dict[int, dict] = {}
    evaluations: Dict[int, dict] = {}
    paths = sorted(
        glob.glob(osp.join(work_dir, '*', 'vis_data', 'scalars.json')))
    if not paths:
        raise FileNotFoundError(
            f'no training logs in {work_dir!r} (expected '
            f'<timestamp>/vis_data/scalars.json, written by mmengine)')
    for path in paths:
        with open(path) as f:
            for line in f:
                entry = json.loads(line)
                if 'lr' in entry and 'iter' in entry:
                    train[entry['iter']] = entry
                elif any(k in entry for k in METRICS):
                    evaluations[entry['step']] = entry
    return ([train[k] for k in sorted(train)],
            [evaluations[k] for k in sorted(evaluations)])


def plot_training_curves(work_dir: str, out_file: str) -> str:
    """Plot losses and learning rate per iteration and the metrics per
    evaluation of the runs in ``work_dir`` into ``out_file`` (PNG)."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    train, evaluations = read_scalars(work_dir)
    losses = sorted({k for e in train for k in e if k.startswith('loss')})
    metrics = [m for m in METRICS if any(m in e for e in evaluations)]
    # epoch-based loops log the epoch with each iteration, and evaluate by it
    by_epoch = any('epoch' in e for e in train)
    panels = 3 if metrics else 2
    fig, axes = plt.subplots(1, panels, figsize=(5.5 * panels, 4.2))
    iters = [e['iter'] for e in train]

    for key in losses:
        axes[0].plot(
            iters, [e.get(key, float('nan')) for e in train],
            label=key,
            linewidth=2.2 if key == 'loss' else 1.2)
    axes[0].set(title='training losses', xlabel='iteration', ylabel='loss')
    axes[0].legend(fontsize=8)

    axes[1].plot(iters, [e['lr'] for e in train], color='tab:purple')
    axes[1].set(title='learning rate', xlabel='iteration', ylabel='lr')
    axes[1].ticklabel_format(axis='y', style='sci', scilimits=(-3, 3))

    if metrics:
        steps = [e['step'] for e in evaluations]
        for key in metrics:
            axes[2].plot(
                steps, [e.get(key, float('nan')) for e in evaluations],
                marker='o',
                label=key)
        axes[2].set(
            title='evaluation', xlabel='epoch' if by_epoch else 'iteration')
        axes[2].legend(fontsize=8)
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.suptitle(osp.basename(osp.normpath(work_dir)))
    fig.tight_layout()
    fig.savefig(out_file, dpi=100)
    plt.close(fig)
    return out_file
