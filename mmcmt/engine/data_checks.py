"""Checking before a run that a config's data sets are there and their
images readable."""
import os
import os.path as osp
from typing import Iterator, List

from mmengine.config import Config

from ..datasets.image_check import bad_images, describe
from .errors import UsageError


def _datasets(cfg) -> Iterator[dict]:
    """Leaf dataset configs under wrappers (RepeatDataset, ConcatDataset)."""
    if 'dataset' in cfg:
        yield from _datasets(cfg['dataset'])
    elif 'datasets' in cfg:
        for dataset in cfg['datasets']:
            yield from _datasets(dataset)
    else:
        yield cfg


def check_data(cfg: Config, dataloaders: List[str]) -> None:
    """Fail early, naming the expected paths, when a dataset is missing."""
    for name in dataloaders:
        loader = cfg.get(name)
        if not loader:
            continue
        for dataset in _datasets(loader['dataset']):
            root = dataset.get('data_root') or ''
            expected = []
            if dataset.get('ann_file'):
                expected.append(osp.join(root, dataset['ann_file']))
            for prefix in (dataset.get('data_prefix') or {}).values():
                expected.append(osp.join(root, prefix))
            missing = [p for p in expected or [root] if not osp.exists(p)]
            if missing:
                raise FileNotFoundError(
                    f'{name}: dataset not found, expected {missing} '
                    f'(data_root={root!r}). Put the dataset there, or point '
                    f'the config at it with --cfg-options '
                    f'{name}.dataset.data_root=PATH')


def check_images(cfg: Config,
                 dataloaders: List[str],
                 skip: bool = False) -> None:
    """Fail before the run, naming them, when image files (or segmentation
    maps) that a data set lists are unreadable: empty, truncated, not
    images (:func:`mmcmt.datasets.image_problem`). With ``skip`` the data
    sets leave them out instead (their ``indices``; a COCO-style evaluator
    gets a copy of its annotation file without them, in the work dir), so
    that the run evaluates on the rest, and a warning says how many."""
    from mmengine.logging import print_log
    from mmengine.registry import DATASETS, init_default_scope

    init_default_scope(cfg.default_scope)
    for name in dataloaders:
        loader = cfg.get(name)
        if not loader:
            continue
        for dataset_cfg in _datasets(loader['dataset']):
            # not serialised: mmengine's serialisation of an empty data set
            # fails with numpy's "need at least one array to concatenate"
            dataset = DATASETS.build(
                dict(
                    dataset_cfg,
                    pipeline=[],
                    lazy_init=False,
                    serialize_data=False))
            if len(dataset) == 0:
                raise UsageError(f'{name}: {_empty(dataset)}')
            found = bad_images(dataset)
            if not found:
                continue
            if not skip:
                raise UsageError(
                    f'{name}: {len(found)} unreadable image file(s) of '
                    f'{len(dataset)}: {describe(found)}; replace them, or '
                    f'pass --skip-bad-images to run without them')
            bad = {index for index, _, _ in found}
            keep = [i for i in range(len(dataset)) if i not in bad]
            given = dataset_cfg.get('indices')
            if given is not None:  # positions in the subset it selected
                given = range(given) if isinstance(given, int) else given
                dataset_cfg['indices'] = [given[i] for i in keep]
            else:
                dataset_cfg['indices'] = keep
            _evaluate_without(cfg, name, dataset, bad)
            print_log(
                f'{name}: skipping {len(bad)} image(s) with unreadable '
                f'files ({describe(found)}); running on the other '
                f'{len(keep)}',
                'current',
                level=30)


def _empty(dataset) -> str:
    """Why ``dataset`` has no samples, and what to do."""
    import json
    ann_file = getattr(dataset, 'ann_file', '') or ''
    classes = list(dataset.metainfo.get('classes') or [])
    said = f'the data set {ann_file!r} has no images'
    if ann_file.endswith('.json'):
        with open(ann_file) as f:
            categories = [
                c['name'] for c in json.load(f).get('categories', [])
            ]
        if categories and not set(categories) & set(classes):
            shown = ', '.join(classes[:4]) + (f', ... ({len(classes)})'
                                              if len(classes) > 4 else '')
            return (f'{said} of the config\'s classes ({shown}): it has '
                    f'{categories}; name them in the data set\'s '
                    f'metainfo=dict(classes=...) (and the head\'s '
                    f'num_classes)')
    return f'{said} (with the config\'s filters); check the annotations'


def _evaluate_without(cfg: Config, dataloader: str, dataset, bad: set) -> None:
    """Point the evaluators that read the data set's annotation file (COCO
    AP) at a copy without the images ``bad`` (indices of ``dataset``)."""
    import json
    evaluators = cfg.get(dataloader.replace('_dataloader', '_evaluator'))
    if not evaluators:
        return
    ann_file = getattr(dataset, 'ann_file', None)
    for metric in (evaluators
                   if isinstance(evaluators, list) else [evaluators]):
        if not ann_file or not metric.get('ann_file') or \
                osp.abspath(metric['ann_file']) != osp.abspath(ann_file):
            continue
        with open(ann_file) as f:
            annotations = json.load(f)
        dropped = {dataset.get_data_info(i)['img_id'] for i in bad}
        annotations['images'] = [
            image for image in annotations['images']
            if image['id'] not in dropped
        ]
        annotations['annotations'] = [
            a for a in annotations.get('annotations', [])
            if a['image_id'] not in dropped
        ]
        os.makedirs(cfg.work_dir, exist_ok=True)
        copy = osp.join(
            cfg.work_dir,
            osp.basename(ann_file).replace('.json', '.readable_images.json'))
        with open(copy, 'w') as f:
            json.dump(annotations, f)
        metric['ann_file'] = osp.abspath(copy)
