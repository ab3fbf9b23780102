"""Broken image files (truncated PNG and JPEG, zero bytes, text with an
image's name) get one line naming them, in every tool and in a data set;
with --skip-bad-images a run evaluates on the rest. Nothing the user had is
changed."""
import glob
import json
import os
import os.path as osp
import re

import cv2
import numpy as np
import pytest
import torch
from helpers import (ade_options, coco_options, official_shapes,
                     random_official_state_dict, run_tool)

from mmcmt.datasets import (image_problem, make_synthetic_ade,
                            make_synthetic_coco)
from mmcmt.models import CMT

SYNTHETIC = 'configs/retinanet_cmt_ti_fpn_synthetic.py'
SEG_SYNTHETIC = 'configs/fpn_cmt_ti_synthetic_ade.py'


def _encoded(suffix, image):
    ok, data = cv2.imencode(suffix, image)
    assert ok
    return data.tobytes()


#: name -> (bytes, the problem image_problem names, or None)
def _cases():
    rng = np.random.default_rng(0)
    picture = rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)
    png, jpeg = _encoded('.png', picture), _encoded('.jpg', picture)
    return {
        'good.png': (png, None),
        'good.jpg': (jpeg, None),
        'gray.png': (_encoded('.png', picture[..., 0]), None),
        'rgba.png': (_encoded('.png', np.dstack([picture,
                                                 picture[..., :1]])), None),
        'tiny.png': (_encoded('.png', picture[:10, :10]), None),
        # data after the end marker (some cameras append a trailer)
        'trailer.jpg': (jpeg + b'\0' * 300 + b'trailer', None),
        'third.png': (png[:len(png) // 3], 'is truncated'),
        'half.jpg': (jpeg[:len(jpeg) // 2], 'is truncated'),
        'empty.png': (b'', 'is empty (0 bytes)'),
        'text.png': (b'this is not a picture\n', 'is not an image'),
    }


@pytest.fixture(scope='module')
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp('images')
    for name, (data, _) in _cases().items():
        (folder / name).write_bytes(data)
    return folder


@pytest.mark.parametrize('name', sorted(_cases()))
def test_image_problem(images, name):
    expected = _cases()[name][1]
    problem = image_problem(str(images / name))
    assert (problem is None) == (expected is None), problem
    if expected:
        assert problem.startswith(expected)
    # decoding as mmcv does agrees: a readable file decodes, and a
    # truncated PNG, an empty or a text file does not
    decoded = cv2.imread(str(images / name), cv2.IMREAD_UNCHANGED)
    if expected is None:
        assert decoded is not None
    elif name != 'half.jpg':  # OpenCV decodes the part of a JPEG it has
        assert decoded is None


@pytest.fixture(scope='module')
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp('ckpt') / 'backbone.pth'
    torch.save(
        {
            'state_dict': {
                f'backbone.{k}': v
                for k, v in CMT('tiny').state_dict().items()
            }
        }, path)
    return str(path)


@pytest.fixture(scope='module')
def released(tmp_path_factory):
    """A released-layout CMT-Ti checkpoint (classifier head included)."""
    path = tmp_path_factory.mktemp('released') / 'cmt_tiny.pth'
    torch.save(
        random_official_state_dict(official_shapes()['cmt_ti']['state_dict']),
        path)
    return str(path)


def one_line(result, *fragments, alone=True):
    """Exit code 2, no traceback, and the error as stderr's one line (or,
    not ``alone``, its last: after the host packages' warnings while the
    good images ran)."""
    assert result.returncode == 2, (result.returncode, result.stderr[-3000:])
    lines = result.stderr.strip().splitlines()
    assert 'Traceback' not in result.stderr, result.stderr[-3000:]
    assert len(lines) == 1 or not alone, result.stderr[-3000:]
    lines = [line for line in lines if ': error: ' in line]
    assert len(lines) == 1, result.stderr[-3000:]
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


BAD = ['third.png', 'half.jpg', 'empty.png', 'text.png']


@pytest.mark.parametrize('tool', ['infer.py', 'classify.py'])
@pytest.mark.parametrize('name', BAD)
def test_tools_name_a_bad_image(images, checkpoint, released, tmp_path, tool,
                                name):
    path = str(images / name)
    command = {
        'infer.py': [
            'tools/infer.py', path, SYNTHETIC, checkpoint, '--out-dir',
            str(tmp_path / 'out')
        ],
        'classify.py': [
            'tools/classify.py', path, '--arch', 'tiny', '--checkpoint',
            released
        ],
    }[tool]
    line = one_line(
        run_tool(*command, check=False), repr(path),
        _cases()[name][1])
    print(line)
    assert not (tmp_path / 'out' / name).exists()


def test_infer_folder_goes_past_bad_images(images, checkpoint, tmp_path):
    before = {p: open(p, 'rb').read() for p in glob.glob(f'{images}/*')}
    out = tmp_path / 'out'
    result = run_tool(
        'tools/infer.py',
        str(images),
        SYNTHETIC,
        checkpoint,
        '--out-dir',
        str(out),
        check=False)
    line = one_line(
        result, f'4 of {len(before)} images were not read', alone=False)
    for name in BAD:
        assert f"{str(images / name)!r} {_cases()[name][1]}" in line
    good = sorted(n for n, (_, problem) in _cases().items() if not problem)
    assert sorted(os.listdir(out)) == good
    assert result.stdout.count('wrote ') == len(good)
    assert before == {
        p: open(p, 'rb').read()
        for p in glob.glob(f'{images}/*')
    }


def test_classify_folder_goes_past_bad_images(images, released):
    result = run_tool(
        'tools/classify.py',
        str(images),
        '--arch',
        'tiny',
        '--checkpoint',
        released,
        check=False)
    one_line(result, '4 of 10 images were not read', 'third.png', alone=False)
    good = [n for n, (_, problem) in _cases().items() if not problem]
    for name in good:
        assert str(images / name) in result.stdout
    assert len(re.findall(r'^\s*\d+\.\d+%', result.stdout, re.M)) == \
        5 * len(good)


@pytest.fixture(scope='module')
def coco(tmp_path_factory):
    """A COCO set whose validation image 3 is cut to 2,000 bytes and
    image 5 is empty."""
    root = tmp_path_factory.mktemp('coco')
    make_synthetic_coco(str(root), num_train=4, num_val=6, img_size=(96, 96))
    val = root / 'val2017'
    (val / '000000000003.jpg').write_bytes(
        (val / '000000000003.jpg').read_bytes()[:2000])
    (val / '000000000005.jpg').write_bytes(b'')
    return root


def _snapshot(root):
    return {
        p: open(p, 'rb').read()
        for p in glob.glob(f'{root}/**/*', recursive=True) if osp.isfile(p)
    }


def test_test_tool_on_a_set_with_bad_images(coco, checkpoint, tmp_path):
    before = _snapshot(coco)
    options = ['--cfg-options'] + coco_options(f'{coco}/')
    bad_3 = str(coco / 'val2017' / '000000000003.jpg')
    bad_5 = str(coco / 'val2017' / '000000000005.jpg')
    result = run_tool(
        'tools/test.py',
        SYNTHETIC,
        checkpoint,
        '--work-dir',
        str(tmp_path / 'refused'),
        *options,
        check=False)
    line = one_line(result, 'test_dataloader: 2 unreadable image file(s) of 6',
                    f'{bad_3} is truncated', f'{bad_5} is empty',
                    '--skip-bad-images')
    print(line)
    result = run_tool('tools/test.py', SYNTHETIC, checkpoint, '--work-dir',
                      str(tmp_path / 'skipped'), '--skip-bad-images', *options)
    out = result.stdout + result.stderr
    assert 'skipping 2 image(s) with unreadable files' in out
    assert 'running on the other 4' in out
    assert re.search(r'coco/bbox_mAP: -?\d', out), out[-3000:]
    # COCO evaluated the 4 images that ran, not the 6 of the annotations
    copy, = glob.glob(f'{tmp_path}/skipped/*.readable_images.json')
    with open(copy) as f:
        assert sorted(i['id'] for i in json.load(f)['images']) == \
            [1, 2, 4, 6]
    assert _snapshot(coco) == before  # the user's data, untouched


def test_train_tool_refuses_before_the_run(coco, tmp_path):
    options = ['--cfg-options'] + coco_options(f'{coco}/')
    result = run_tool(
        'tools/train.py',
        SYNTHETIC,
        '--work-dir',
        str(tmp_path / 'work'),
        *options,
        check=False)
    one_line(result, 'val_dataloader: 2 unreadable image file(s)',
             '--skip-bad-images')
    assert not glob.glob(f'{tmp_path}/work/*/*.log')  # no run started


def test_segmentation_test_skips_bad_images(tmp_path, checkpoint):
    root = tmp_path / 'ade'
    make_synthetic_ade(str(root), num_train=2, num_val=4, img_size=(64, 64))
    images = sorted(glob.glob(f'{root}/**/validation/*.jpg', recursive=True))
    data = open(images[1], 'rb').read()
    open(images[1], 'wb').write(data[:len(data) // 2])
    options = ['--cfg-options'] + ade_options(str(root))
    result = run_tool(
        'tools/test.py',
        SEG_SYNTHETIC,
        checkpoint,
        '--work-dir',
        str(tmp_path / 'refused'),
        *options,
        check=False)
    one_line(result, 'unreadable image file(s) of 4', images[1],
             'is truncated')
    result = run_tool('tools/test.py', SEG_SYNTHETIC, checkpoint, '--work-dir',
                      str(tmp_path / 'skipped'), '--skip-bad-images', *options)
    out = result.stdout + result.stderr
    assert 'skipping 1 image(s)' in out and 'running on the other 3' in out
    assert 'mIoU' in out
