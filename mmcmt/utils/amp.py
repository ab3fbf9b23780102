"""Mixed precision: autocast by name (:func:`autocast`), and inference of
whole mmdet/mmseg models (:func:`autocast_networks`).

``torch.autocast`` around a detector's whole ``test_step`` also lowers its
post-processing: boxes decoded in bfloat16 lose whole pixels at COCO sizes
(8 bits of mantissa) and mmcv's CPU NMS refuses bfloat16 tensors. So only
the networks run under autocast: each of the model's network modules
(backbone, neck, heads) is wrapped to run its forward under autocast and to
hand float32 outputs on, and box decoding, NMS, mask pasting and resizing
stay in float32.
"""
import functools

import torch
import torch.nn as nn

AMP_DTYPES = dict(bf16=torch.bfloat16, fp16=torch.float16)
#: The network modules of mmdet and mmseg models (absent ones are skipped).
NETWORK_MODULES = ('backbone', 'neck', 'bbox_head', 'rpn_head',
                   'roi_head.bbox_head', 'roi_head.mask_head', 'decode_head',
                   'auxiliary_head')


def autocast(device: torch.device, amp: str):
    """``torch.autocast`` on ``device`` to ``amp`` (``'bf16'``, ``'fp16'``),
    or disabled when ``amp`` is empty."""
    if not amp:
        return torch.autocast(device.type, enabled=False)
    return torch.autocast(device.type, dtype=AMP_DTYPES[amp])


def autocast_networks(model: nn.Module,
                      amp: str,
                      device_type: str = 'cpu') -> nn.Module:
    """Run ``model``'s network modules under autocast to ``amp`` (``'bf16'``
    or ``'fp16'``), their outputs cast back to float32; in place. Returns
    the model. Cascade heads (lists of heads) are wrapped head by head."""
    if amp not in AMP_DTYPES:
        raise ValueError(f'amp must be one of {sorted(AMP_DTYPES)}, got '
                         f'{amp!r}')
    dtype = AMP_DTYPES[amp]
    for name in NETWORK_MODULES:
        module = model
        for part in name.split('.'):
            module = getattr(module, part, None)
        if module is None:
            continue
        heads = module if isinstance(module, nn.ModuleList) else [module]
        for head in heads:
            head.forward = _autocast_forward(head.forward, dtype, device_type)
    return model


def _autocast_forward(forward, dtype, device_type):

    @functools.wraps(forward)
    def wrapped(*args, **kwargs):
        with torch.autocast(device_type, dtype=dtype):
            outputs = forward(*args, **kwargs)
        return _to_float(outputs)

    return wrapped


def _to_float(outputs):
    if isinstance(outputs, torch.Tensor):
        return outputs.float() if outputs.is_floating_point() else outputs
    if isinstance(outputs, (list, tuple)):
        return type(outputs)(_to_float(o) for o in outputs)
    if isinstance(outputs, dict):
        return {k: _to_float(v) for k, v in outputs.items()}
    return outputs
