"""What the CMT backbone's tests share: small arches, models with the same
weights and BatchNorm statistics away from 0 and 1, the bytes autograd
keeps, the autocast dtypes this CPU runs."""
import torch
from torch.nn.modules.batchnorm import _BatchNorm

from mmcmt.compat import autocast_supported
from mmcmt.models import CMT

TINY = dict(
    embed_dims=[8, 16, 24, 32],
    depths=[1, 1, 2, 1],
    num_heads=[1, 2, 2, 4],
    mlp_ratios=2,
    sr_ratios=[8, 4, 2, 1],
    stem_channels=8)

CP_ARCH = dict(
    embed_dims=[16, 32, 48, 64],
    depths=[2, 2, 3, 2],
    num_heads=[1, 2, 2, 4],
    mlp_ratios=4,
    sr_ratios=[8, 4, 2, 1],
    stem_channels=8)

AMP = [
    dtype for dtype in (torch.bfloat16, torch.float16)
    if autocast_supported('cpu', dtype)
]


def randomize_norms(model):
    """BatchNorm statistics and affines away from 0 / 1."""
    for module in model.modules():
        if isinstance(module, _BatchNorm):
            module.running_mean.normal_()
            module.running_var.uniform_(0.5, 2)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.normal_()


def same_models_with_random_norms(lean_training, **kwargs):
    """A CMT (``CP_ARCH``) for each of the settings ``lean_training``, all
    with the same weights, the BatchNorms' statistics and affines away from
    0 and 1."""
    torch.manual_seed(0)
    models = [
        CMT(CP_ARCH, pretrain_img_size=64, lean_training=lean, **kwargs)
        for lean in lean_training
    ]
    models[0].init_weights()
    randomize_norms(models[0])
    for model in models[1:]:
        model.load_state_dict(models[0].state_dict())
    return models


def saved_bytes(model, x):
    """Bytes of the distinct storages that autograd saves for the backward
    pass during ``model(x)`` (parameters aside), and the outputs. A
    non-reentrant checkpoint saves its inputs through these hooks too (so
    they count); inside it, its own hooks take over and keep nothing."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    storages = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in params:
            storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        outs = model(x)
    return sum(storages.values()), outs
