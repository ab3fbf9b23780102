"""Data samples for running a detector or segmentor on a bare tensor."""
from typing import List


def dummy_data_samples(scope: str,
                       height: int,
                       width: int,
                       batch_size: int = 1) -> List:
    """Data samples whose meta info describes an unscaled, unpadded
    ``height x width`` input, as two-stage detectors, segmentors and
    post-processing need; ``scope`` is ``'mmdet'`` or ``'mmseg'``."""
    meta = dict(
        img_shape=(height, width),
        ori_shape=(height, width),
        pad_shape=(height, width),
        batch_input_shape=(height, width),
        scale_factor=(1., 1.))
    if scope == 'mmseg':
        from mmseg.structures import SegDataSample as Sample
    else:
        from mmdet.structures import DetDataSample as Sample
    return [Sample(metainfo=meta) for _ in range(batch_size)]
