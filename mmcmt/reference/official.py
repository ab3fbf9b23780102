"""Official-layout CMT state dicts for tests and benchmarks: random tensors
with the released key names and shapes, for any arch."""
import torch


def random_official_state_dict(shapes, seed=0):
    """Random tensors in the released layout, BN statistics included, scaled
    so that deep networks stay numerically tame."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for key, shape in shapes.items():
        if key.endswith('num_batches_tracked'):
            sd[key] = torch.tensor(100)
        elif key.endswith('running_var'):
            sd[key] = torch.rand(shape, generator=g) + 0.5
        elif key.endswith('running_mean'):
            sd[key] = torch.randn(shape, generator=g) * 0.1
        elif key.startswith('relative_pos'):
            sd[key] = torch.randn(shape, generator=g)
        elif key.endswith('.weight') and len(shape) == 1:  # norms
            sd[key] = 1 + 0.1 * torch.randn(shape, generator=g)
        elif key.endswith('.bias'):
            sd[key] = 0.02 * torch.randn(shape, generator=g)
        else:
            fan_in = max(1, torch.Size(shape[1:]).numel())
            sd[key] = torch.randn(shape, generator=g) * fan_in**-0.5
    return sd


def custom_arch_official_shapes(model_cls,
                                arch,
                                fc_dim=64,
                                num_classes=10,
                                img_size=64):
    """Official-layout key shapes for a custom arch, derived from the key
    pattern of the released files (not from mmcmt's modules)."""
    settings = model_cls.parse_arch(arch)
    stem, dims = settings['stem_channels'], settings['embed_dims']
    shapes = {}
    for i in (1, 2, 3):
        shapes[f'stem_conv{i}.weight'] = [stem, 3 if i == 1 else stem, 3, 3]
        shapes[f'stem_conv{i}.bias'] = [stem]
        _bn_shapes(shapes, f'stem_norm{i}', stem)
    cin = stem
    for s, stage in enumerate('abcd'):
        c, sr, heads = dims[s], settings['sr_ratios'][s], settings[
            'num_heads'][s]
        n = (img_size // (4 * 2**s))**2
        shapes[f'relative_pos_{stage}'] = [heads, n, n // sr**2]
        shapes[f'patch_embed_{stage}.proj.weight'] = [c, cin, 2, 2]
        shapes[f'patch_embed_{stage}.proj.bias'] = [c]
        shapes[f'patch_embed_{stage}.norm.weight'] = [c]
        shapes[f'patch_embed_{stage}.norm.bias'] = [c]
        hidden = int(c * settings['mlp_ratios'][s])
        for j in range(settings['depths'][s]):
            b = f'blocks_{stage}.{j}'
            shapes[f'{b}.proj.weight'] = [c, 1, 3, 3]
            shapes[f'{b}.proj.bias'] = [c]
            for name in ('norm1', 'norm2'):
                shapes[f'{b}.{name}.weight'] = [c]
                shapes[f'{b}.{name}.bias'] = [c]
            for name in ('q', 'k', 'v', 'proj'):
                shapes[f'{b}.attn.{name}.weight'] = [c, c]
                shapes[f'{b}.attn.{name}.bias'] = [c]
            if sr > 1:
                shapes[f'{b}.attn.sr.0.weight'] = [c, 1, sr, sr]
                shapes[f'{b}.attn.sr.0.bias'] = [c]
                _bn_shapes(shapes, f'{b}.attn.sr.1', c)
            shapes[f'{b}.mlp.conv1.0.weight'] = [hidden, c, 1, 1]
            shapes[f'{b}.mlp.conv1.0.bias'] = [hidden]
            _bn_shapes(shapes, f'{b}.mlp.conv1.2', hidden)
            shapes[f'{b}.mlp.proj.weight'] = [hidden, 1, 3, 3]
            shapes[f'{b}.mlp.proj.bias'] = [hidden]
            _bn_shapes(shapes, f'{b}.mlp.proj_bn', hidden)
            shapes[f'{b}.mlp.conv2.0.weight'] = [c, hidden, 1, 1]
            shapes[f'{b}.mlp.conv2.0.bias'] = [c]
            _bn_shapes(shapes, f'{b}.mlp.conv2.1', c)
        cin = c
    shapes['_fc.weight'] = [fc_dim, cin, 1, 1]
    shapes['_fc.bias'] = [fc_dim]
    _bn_shapes(shapes, '_bn', fc_dim)
    shapes['head.weight'] = [num_classes, fc_dim]
    shapes['head.bias'] = [num_classes]
    return shapes


def _bn_shapes(shapes, name, c):
    for p in ('weight', 'bias', 'running_mean', 'running_var'):
        shapes[f'{name}.{p}'] = [c]
    shapes[f'{name}.num_batches_tracked'] = []
