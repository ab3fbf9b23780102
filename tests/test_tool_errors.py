"""A user's mistakes end mmcmt's tools with one clean line on stderr and
exit code 2, never a traceback: bad arguments, missing files, and
checkpoints that are untrusted (they hold code) or truncated."""
import os
import os.path as osp

import pytest
import torch
from helpers import coco_options, run_tool

from mmcmt.checkpoint.safe_load import (CorruptCheckpointError,
                                        UntrustedCheckpointError)
from mmcmt.datasets import make_synthetic_coco
from mmcmt.models import CMT

SYNTHETIC = 'configs/retinanet_cmt_ti_fpn_synthetic.py'
SEG_SYNTHETIC = 'configs/fpn_cmt_ti_synthetic_ade.py'


class Payload:
    """What an attacker's checkpoint holds: unpickling it runs a command."""

    def __reduce__(self):
        return (os.system, ('echo pwned > /dev/null', ))


@pytest.fixture(scope='module')
def files(tmp_path_factory):
    tmp = tmp_path_factory.mktemp('bad')
    make_synthetic_coco(
        str(tmp / 'coco'), num_train=2, num_val=1, img_size=(64, 64))
    model = CMT('tiny')
    good = {
        'state_dict': {
            f'backbone.{k}': v
            for k, v in model.state_dict().items()
        }
    }
    torch.save(dict(good, payload=Payload()), tmp / 'untrusted.pth')
    torch.save(good, tmp / 'good.pth')
    torch.save(
        {
            'state_dict': {
                f'backbone.{k}': v
                for k, v in CMT('small').state_dict().items()
            }
        }, tmp / 'other_arch.pth')
    data = (tmp / 'good.pth').read_bytes()
    (tmp / 'truncated.pth').write_bytes(data[:len(data) // 2])
    (tmp / 'garbage.pth').write_bytes(b'not a checkpoint at all')
    (tmp / 'other_library.py').write_text(
        "default_scope = 'mmpretrain'\nmodel = dict(type='ImageClassifier')\n")
    (tmp / 'classes.txt').write_text('cat\ndog\n')
    return tmp


def one_line_error(result, *fragments):
    """Exit code 2 and one line on stderr that holds every fragment."""
    assert result.returncode == 2, (result.returncode, result.stderr[-3000:])
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr[-3000:]
    assert 'Traceback' not in result.stderr
    assert 'weights_only' not in result.stderr  # never advise unsafe loading
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def image(tmp):
    return str(tmp / 'coco' / 'val2017' / '000000000001.jpg')


def checkpoint_commands(tmp, checkpoint):
    """Every tool that reads a checkpoint, reading ``checkpoint``."""
    options = ['--cfg-options'] + coco_options(f'{tmp}/coco/')
    return {
        'test.py': [
            'tools/test.py', SYNTHETIC, checkpoint, '--work-dir',
            str(tmp / 'work')
        ] + options,
        'train.py --resume': [
            'tools/train.py', SYNTHETIC, '--resume', checkpoint, '--work-dir',
            str(tmp / 'work')
        ] + options,
        'classify.py': [
            'tools/classify.py',
            image(tmp), '--arch', 'tiny', '--checkpoint', checkpoint
        ],
        'infer.py': [
            'tools/infer.py',
            image(tmp), SYNTHETIC, checkpoint, '--out-dir',
            str(tmp / 'infer')
        ],
    }


@pytest.mark.parametrize(
    'tool', ['test.py', 'train.py --resume', 'classify.py', 'infer.py'])
def test_untrusted_checkpoint(files, tool):
    path = str(files / 'untrusted.pth')
    result = run_tool(*checkpoint_commands(files, path)[tool], check=False)
    line = one_line_error(result, repr(path), 'not trusted',
                          'posix.system' if os.name == 'posix' else 'system')
    assert 'pwned' not in result.stdout + line


@pytest.mark.parametrize(
    'tool', ['test.py', 'train.py --resume', 'classify.py', 'infer.py'])
@pytest.mark.parametrize('name', ['truncated.pth', 'garbage.pth'])
def test_corrupt_checkpoint(files, tool, name):
    path = str(files / name)
    result = run_tool(*checkpoint_commands(files, path)[tool], check=False)
    one_line_error(result, repr(path), 'truncated or corrupt')


@pytest.mark.parametrize('tool', ['test.py', 'infer.py'])
def test_checkpoint_of_another_arch(files, tool):
    """A CMT-S detector's checkpoint given to a CMT-Ti config: one line that
    names both archs, not hundreds of size mismatches."""
    path = str(files / 'other_arch.pth')
    result = run_tool(*checkpoint_commands(files, path)[tool], check=False)
    one_line_error(result, "the checkpoint holds CMT-S (arch='small')",
                   "the model is CMT-Ti (arch='tiny')",
                   "set the backbone's arch='small'")


def test_init_cfg_untrusted_and_corrupt(files):
    for name, error, text in (('untrusted.pth', UntrustedCheckpointError,
                               'not trusted'),
                              ('truncated.pth', CorruptCheckpointError,
                               'truncated or corrupt'),
                              ('garbage.pth', CorruptCheckpointError,
                               'truncated or corrupt')):
        path = str(files / name)
        model = CMT('tiny', init_cfg=dict(type='Pretrained', checkpoint=path))
        with pytest.raises(error) as info:
            model.init_weights()
        message = str(info.value)
        assert repr(path) in message and text in message
        assert '\n' not in message and 'weights_only' not in message


def test_mmengine_loader_has_the_same_errors(files):
    """mmengine's load_checkpoint, behind load_from, resume and mmdet's and
    mmseg's APIs, goes through the same safe loader once mmcmt is
    imported."""
    from mmengine.runner import load_checkpoint
    with pytest.raises(UntrustedCheckpointError, match='not trusted'):
        load_checkpoint(CMT('tiny'), str(files / 'untrusted.pth'))
    with pytest.raises(CorruptCheckpointError, match='truncated or corrupt'):
        load_checkpoint(CMT('tiny'), str(files / 'truncated.pth'))
    model = CMT('tiny')
    load_checkpoint(model, str(files / 'good.pth'))  # the loader still loads


@pytest.mark.parametrize('case', [
    'missing config', 'other library', 'out not pkl', 'show-dir no hook',
    'auto-scale-lr no base', 'infer missing image', 'classify missing image',
    'classify wrong classes', 'missing checkpoint', 'data of other classes',
    'missing data', 'get_flops config and arch', 'misspelt model key',
    'misspelt infer key', 'misspelt loader key', 'key through a list'
])
def test_bad_arguments(files, case):
    options = ['--cfg-options'] + coco_options(f'{files}/coco/')
    good = str(files / 'good.pth')
    command, fragments = {
        'missing config': (['tools/train.py', 'configs/nope.py'],
                           ["config file not found: 'configs/nope.py'"]),
        'other library':
        (['tools/test.py',
          str(files / 'other_library.py'),
          good], ["default_scope is 'mmpretrain'", 'mmdet', 'mmseg']),
        'out not pkl':
        (['tools/test.py', SYNTHETIC, good, '--out', 'results.json'] + options,
         ['--out results.json', '.pkl']),
        'show-dir no hook':
        (['tools/test.py', SYNTHETIC, good, '--show-dir',
          str(files / 'show')] + options +
         ['default_hooks.visualization=None'],
         ['--show-dir needs a visualization hook']),
        'auto-scale-lr no base':
        (['tools/train.py', SYNTHETIC, '--auto-scale-lr'] + options +
         ['auto_scale_lr=None'], ['--auto-scale-lr needs', 'base_batch_size']),
        'infer missing image': ([
            'tools/infer.py', 'no.jpg', SYNTHETIC, good, '--out-dir',
            str(files / 'out')
        ], ["image not found: 'no.jpg'"]),
        'classify missing image':
        (['tools/classify.py', 'no.jpg', '--checkpoint',
          good], ["image not found: 'no.jpg'"]),
        'classify wrong classes': ([
            'tools/classify.py',
            image(files), '--checkpoint', good, '--classes',
            str(files / 'classes.txt')
        ], ['lists 2 classes', '1000']),
        'missing checkpoint':
        (['tools/test.py', SYNTHETIC, 'no.pth'] + options,
         ["checkpoint not found: 'no.pth'"]),
        'data of other classes': ([
            'tools/train.py', 'configs/retinanet_cmt_ti_fpn_1x_coco.py',
            '--work-dir',
            str(files / 'work'), '--cfg-options',
            f'train_dataloader.dataset.data_root={files}/coco/',
            f'val_dataloader.dataset.data_root={files}/coco/',
            'model.backbone.init_cfg=None'
        ], [
            'train_dataloader: the data set', 'has no images',
            "person, bicycle, car, motorcycle, ... (80)",
            "'circle', 'square', 'triangle', 'cross'", 'metainfo'
        ]),
        'missing data': ([
            'tools/test.py', SEG_SYNTHETIC, good, '--cfg-options',
            f'test_dataloader.dataset.data_root={files}/none'
        ], ['test_dataloader: dataset not found', f'{files}/none']),
        # a wrong --cfg-options key, where the model is built, where the
        # runner builds its data loader (in runner.test()), and where the
        # config cannot take it at all
        'misspelt model key':
        (['tools/test.py', SYNTHETIC, good] + options +
         ['model.backbone.drop_path_rat=0.1'], [
             '--cfg-options model.backbone.drop_path_rat:',
             "takes no argument 'drop_path_rat'"
         ]),
        'misspelt infer key': ([
            'tools/infer.py',
            image(files), SYNTHETIC, good, '--out-dir',
            str(files / 'infer_out'), '--cfg-options',
            'model.backbone.drop_path_rat=0.1'
        ], [
            '--cfg-options model.backbone.drop_path_rat:',
            "takes no argument 'drop_path_rat'"
        ]),
        'misspelt loader key':
        (['tools/test.py', SYNTHETIC, good] + options +
         ['test_dataloader.batch_sizee=2'], [
             '--cfg-options test_dataloader.batch_sizee:',
             "takes no argument 'batch_sizee'"
         ]),
        'key through a list':
        (['tools/train.py', SYNTHETIC] + options +
         ['train_dataloader.dataset.pipeline.x=1'], [
             "--cfg-options train_dataloader.dataset.pipeline.x=1 does not "
             'fit the config'
         ]),
        'get_flops config and arch':
        (['tools/get_flops.py', SYNTHETIC, '--arch',
          'tiny'], ['name a CONFIG or --arch, not both']),
    }[case]
    one_line_error(run_tool(*command, check=False), *fragments)
    assert not osp.exists('results.json')
