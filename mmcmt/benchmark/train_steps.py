"""The training steps that the training tasks time and measure (the
backbone's forward and backward, the whole RetinaNet's iteration), built the
same way in the main process, in a memory-measuring one and in each rank of
``train_syncbn`` (:mod:`.distributed`)."""
import functools

import torch

from mmcmt.models.utils.forms import override_lean_training
from mmcmt.utils import autocast, dummy_data_samples
from .models import build_backbone, build_retinanet, retinanet_config


def train_step(model, x, amp):
    """Forward, backward of the mean of the outputs, gradients dropped."""
    with autocast(x.device, amp):
        loss = sum(out.float().mean() for out in model(x))
    loss.backward()
    for p in model.parameters():
        p.grad = None


def retinanet_train_step(model, optim_wrapper, x, data_samples, amp):
    """One training iteration: mmdet's losses, backward and the optimizer
    step (``optim_wrapper.update_params``), as mmengine's loop runs it."""
    with autocast(x.device, amp):
        losses = model.loss(x, data_samples)
    loss, _ = model.parse_losses(losses)
    optim_wrapper.update_params(loss)


def training_samples(x, num_boxes=8):
    """Data samples with ``num_boxes`` random ground-truth boxes of random
    classes (of COCO's 80) per image of ``x``."""
    from mmengine.structures import InstanceData
    generator = torch.Generator().manual_seed(0)
    batch, _, height, width = x.shape
    samples = dummy_data_samples('mmdet', height, width, batch_size=batch)
    size = torch.tensor([width, height] * 2, dtype=torch.float32)
    for sample in samples:
        corners = torch.rand(num_boxes, 2, 2, generator=generator)
        boxes = torch.cat([corners.min(1).values,
                           corners.max(1).values], 1) * size
        sample.gt_instances = InstanceData(
            bboxes=boxes.to(x.device),
            labels=torch.randint(80, (num_boxes, ),
                                 generator=generator).to(x.device))
    return samples


def prepare_train_step(args, base, variant, task, x):
    """The step of a training task (``train``, ``train_cp``,
    ``demo_train``, ``train_syncbn``, ``retinanet_train``) of a row on
    ``x``, its model built the same way in the main process and in a
    memory-measuring one, on ``x``'s device (``train_syncbn``: in a rank of
    a process group, on its part of ``x``)."""
    device = x.device
    if task == 'retinanet_train':
        from mmengine.optim import build_optim_wrapper
        model = build_retinanet(base, variant, train=True).to(device)
        optim_wrapper = build_optim_wrapper(
            model,
            retinanet_config(base).optim_wrapper)
        samples = training_samples(x)
        step = functools.partial(retinanet_train_step, model, optim_wrapper, x,
                                 samples, args.amp)
    else:
        model = build_backbone(
            base, variant, with_cp=task == 'train_cp', as_trained=True)
        model.train()  # (mmdet's ResNet.train() returns None: no chaining)
        if task == 'train_syncbn':
            import torch.distributed as dist
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
            x = x.chunk(dist.get_world_size())[dist.get_rank()]
        step = functools.partial(train_step, model.to(device), x, args.amp)
    # CMT's rows train through the lean training forms and its plain rows
    # through the plain layers, whichever lean_training='auto' would pick
    return functools.partial(_with_lean_training, variant != 'plain', step)


def _with_lean_training(lean, step):
    with override_lean_training(lean):
        step()


def train_rounds(args):
    """Timed rounds of the training tasks (0: their peak memory only)."""
    return args.rounds if args.train_rounds is None else args.train_rounds
