"""A detection metric that says, in plain numbers, how many objects a
detector gets right.

COCO AP averages precision over recall levels, IoU thresholds and classes;
:class:`FoundObjectsMetric` answers the question one asks looking at the
pictures: of the ground-truth objects, how many carry a box of the right
class that overlaps them by IoU at least ``iou_thr`` with a score at least
``score_thr``, and how many boxes above that score are wrong. Add it next to
``CocoMetric`` (``val_evaluator = [dict(type='CocoMetric', ...),
dict(type='FoundObjectsMetric')]``); it reads the ground truth that mmdet's
test pipelines load (``LoadAnnotations`` after ``Resize``, so in the
original image's coordinates, as the predictions are).
"""
from typing import Optional, Sequence

import torch
from mmdet.structures.bbox import bbox_overlaps
from mmengine.evaluator import BaseMetric
from mmengine.logging import print_log


class FoundObjectsMetric(BaseMetric):
    """Objects found with the right class, and wrong detections.

    Each detection with a score at least ``score_thr``, best first, claims
    the unclaimed ground-truth object of its class that it overlaps most, if
    by IoU at least ``iou_thr`` (one detection per object, as COCO matches);
    an object claimed is found, a detection left over is wrong (a false
    positive, or a second box on a found object).

    Args:
        iou_thr (float): least IoU of a match. Defaults to 0.5.
        score_thr (float): least score of the detections counted. Defaults
            to 0.5.
        prefix (str, optional): of the metric names. Defaults to
            ``'objects'``: ``objects/found`` (the fraction found),
            ``objects/wrong`` (the number of wrong detections).
    """
    default_prefix: Optional[str] = 'objects'

    def __init__(self,
                 iou_thr: float = 0.5,
                 score_thr: float = 0.5,
                 collect_device: str = 'cpu',
                 prefix: Optional[str] = None):
        super().__init__(collect_device=collect_device, prefix=prefix)
        self.iou_thr = iou_thr
        self.score_thr = score_thr

    def process(self, data_batch: dict, data_samples: Sequence[dict]) -> None:
        for sample in data_samples:
            gt = sample['gt_instances']
            if 'ignored_instances' in sample and len(
                    sample['ignored_instances'].get('labels', ())):
                raise ValueError('FoundObjectsMetric does not handle ignored '
                                 '(crowd) objects')
            pred = sample['pred_instances']
            keep = pred['scores'] >= self.score_thr
            self.results.append(
                self.match(
                    _tensor(gt['bboxes']), gt['labels'],
                    _tensor(pred['bboxes'])[keep], pred['scores'][keep],
                    pred['labels'][keep]))

    def match(self, gt_boxes, gt_labels, boxes, scores, labels):
        """``(objects, found, wrong)`` of one image (boxes ``x1y1x2y2``)."""
        claimed = torch.zeros(len(gt_labels), dtype=torch.bool)
        if len(gt_labels) and len(labels):
            ious = bbox_overlaps(boxes.float().cpu(), gt_boxes.float().cpu())
            ious[labels.cpu()[:, None] != gt_labels.cpu()[None, :]] = -1
            for i in scores.argsort(descending=True).tolist():
                iou, j = ious[i].masked_fill(claimed, -1).max(0)
                if iou >= self.iou_thr:
                    claimed[j] = True
        found = int(claimed.sum())
        return len(gt_labels), found, len(labels) - found

    def compute_metrics(self, results: list) -> dict:
        objects, found, wrong = (sum(r[i] for r in results) for i in range(3))
        print_log(
            f'objects found with the right class (IoU >= {self.iou_thr}, '
            f'score >= {self.score_thr}): {found} of {objects} '
            f'({found / max(objects, 1):.1%}); wrong detections with score '
            f'>= {self.score_thr}: {wrong}', 'current')
        return dict(found=found / max(objects, 1), wrong=wrong)


def _tensor(boxes):
    """mmdet's box structures and plain tensors alike, as ``(N, 4)``."""
    return boxes.tensor if hasattr(boxes, 'tensor') else boxes
