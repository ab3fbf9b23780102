"""``import mmcmt`` registers CMT with mmdet and mmseg; configs build it."""
import torch
from helpers import run_tool

import mmcmt
from mmcmt.models import CMT, CMTClassifier


def test_registered_in_mmdet_and_mmseg():
    from mmdet.registry import MODELS as MMDET_MODELS
    from mmseg.registry import MODELS as MMSEG_MODELS
    for registry in (MMDET_MODELS, MMSEG_MODELS):
        assert registry.get('CMT') is CMT
        assert registry.get('CMTClassifier') is CMTClassifier
        model = registry.build(
            dict(
                type='CMT',
                arch='tiny',
                out_indices=(1, 2),
                frozen_stages=1,
                norm_eval=True))
        assert isinstance(model, CMT)
        assert model.out_indices == (1, 2) and model.frozen_stages == 1
        outs = model.eval()(torch.rand(1, 3, 64, 64))
        assert [o.shape[1] for o in outs] == [92, 184]


def test_config_with_custom_imports(tmp_path):
    """A fresh process: a config's custom_imports is all it takes."""
    cfg = tmp_path / 'cfg.py'
    cfg.write_text(
        "custom_imports = dict(imports=['mmcmt'], allow_failed_imports=False)"
        "\nbackbone = dict(type='CMT', arch='xs', out_indices=(0, 1, 2, 3))\n")
    script = f'''
from mmengine.config import Config
from mmdet.registry import MODELS
from mmseg.registry import MODELS as SEG_MODELS
cfg = Config.fromfile({str(cfg)!r})
det, seg = MODELS.build(cfg.backbone), SEG_MODELS.build(cfg.backbone)
print(type(det).__name__, type(seg).__name__, det.embed_dims)
'''
    out = run_tool('-c', script).stdout
    assert out.strip() == 'CMT CMT [52, 104, 208, 416]'


def test_version():
    assert mmcmt.__version__ == '0.1.0'
