"""The released network's weights: its initialisation, and its checkpoints'
layout taken as they are by a CMT's ``load_state_dict``."""
import math

import torch.nn as nn
from torch.nn.modules.batchnorm import _BatchNorm

from ...checkpoint import pop_official_cmt, sub_state_dict


def init_cmt_weights(module: nn.Module) -> None:
    """The released code's initialisation (relative position biases keep
    their standard normal draw)."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=.02)
        nn.init.zeros_(module.bias)
    elif isinstance(module, (nn.LayerNorm, _BatchNorm)):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Conv2d):
        fan_out = math.prod(module.kernel_size) * module.out_channels
        nn.init.normal_(module.weight, 0,
                        math.sqrt(2. / (fan_out // module.groups)))
        nn.init.zeros_(module.bias)


def convert_official_backbone(module, state_dict, prefix, *args) -> None:
    """Load-state-dict pre-hook of a CMT: accept a released checkpoint's
    layout, without its classification head."""
    converted = pop_official_cmt(state_dict, prefix)
    if converted is None:
        return
    # the backbone's tensors, and keys that are not CMT's (to be reported)
    kept = sub_state_dict(converted, 'backbone.')
    kept.update((k, v) for k, v in converted.items()
                if not k.startswith(('backbone.', 'head.')))
    state_dict.update((prefix + k, v) for k, v in kept.items())
