"""Detection pictures that show each object once.

mmdet suppresses overlapping boxes per class, which is what COCO AP rewards:
a detector still unsure whether a shape is a circle or a square keeps a box
of each, and the one of the right class scores a true positive. Drawn, such
a pair is two or three overlapping boxes with different labels, and the label
left readable is often the wrong one.
:class:`ClassAgnosticDetVisualizationHook` draws (in ``tools/test.py
--show-dir`` and mmdet's own ``tools/test.py``) only the best-scoring box of
every group that overlaps by more than ``iou_threshold``, whatever the
class; what is evaluated is not changed.
"""
from typing import Sequence

from mmcv.ops import batched_nms
from mmdet.engine.hooks import DetVisualizationHook
from mmdet.structures import DetDataSample


def suppress_across_classes(sample: DetDataSample,
                            iou_threshold: float = 0.5) -> DetDataSample:
    """A copy of ``sample`` whose ``pred_instances`` keep, of boxes that
    overlap by more than ``iou_threshold``, the best-scoring one."""
    sample = sample.clone()
    pred = sample.pred_instances
    if len(pred) > 1:
        _, keep = batched_nms(
            pred.bboxes, pred.scores, pred.labels,
            dict(type='nms', iou_threshold=iou_threshold, class_agnostic=True))
        sample.pred_instances = pred[keep]
    return sample


class ClassAgnosticDetVisualizationHook(DetVisualizationHook):
    """mmdet's ``DetVisualizationHook`` drawing one box per object (see the
    module docstring). Takes ``iou_threshold`` (0.5) and mmdet's arguments.
    """

    def __init__(self, iou_threshold: float = 0.5, **kwargs):
        super().__init__(**kwargs)
        self.iou_threshold = iou_threshold

    def _suppressed(self, outputs: Sequence[DetDataSample]):
        return [
            suppress_across_classes(o, self.iou_threshold) for o in outputs
        ]

    def after_val_iter(self, runner, batch_idx, data_batch, outputs):
        super().after_val_iter(runner, batch_idx, data_batch,
                               self._suppressed(outputs))

    def after_test_iter(self, runner, batch_idx, data_batch, outputs):
        super().after_test_iter(runner, batch_idx, data_batch,
                                self._suppressed(outputs))
