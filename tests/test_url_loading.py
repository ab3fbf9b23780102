"""Checkpoints named by URL, as mmdet's Swin/PVT configs name their weights:
served by an HTTP server on 127.0.0.1 that the tests start, downloaded into
torch's hub cache (``TORCH_HOME`` points into the test's folder), read by
the same safe loader as local files on every loading path, and never kept
when they arrive cut short, corrupt or untrusted."""
import http.server
import io
import os
import re
import threading

import cv2
import numpy as np
import pytest
import torch
from helpers import (coco_options, free_port, official_shapes,
                     random_official_state_dict, run_tool)

from mmcmt.checkpoint.safe_load import (CorruptCheckpointError, DownloadError,
                                        UntrustedCheckpointError,
                                        cached_download)
from mmcmt.datasets import make_synthetic_coco
from mmcmt.models import CMT

SYNTHETIC = 'configs/retinanet_cmt_ti_fpn_synthetic.py'
SEG_SYNTHETIC = 'configs/fpn_cmt_ti_synthetic_ade.py'


class Server:
    """Files by name, served whole (``/files/NAME``), cut in half after a
    full ``Content-Length`` (``/cut/NAME``) or cut in half without one
    (``/nolength/NAME``); every request counted."""

    def __init__(self):
        self.files, self.hits = {}, []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):

            def do_GET(self):
                server.hits.append(self.path)
                mode, _, name = self.path.strip('/').partition('/')
                data = server.files.get(name)
                if data is None or mode not in ('files', 'cut', 'nolength'):
                    self.send_error(404)
                    return
                self.send_response(200)
                if mode != 'nolength':
                    self.send_header('Content-Length', str(len(data)))
                self.end_headers()
                self.wfile.write(data if mode ==
                                 'files' else data[:len(data) // 2])

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(('127.0.0.1', 0), Handler)
        self.url = f'http://127.0.0.1:{self.httpd.server_address[1]}'
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def add(self, name, obj, mode='files'):
        path = f'{self.url}/{mode}/{name}'
        if isinstance(obj, bytes):
            self.files[name] = obj
            return path
        buffer = io.BytesIO()
        torch.save(obj, buffer)
        self.files[name] = buffer.getvalue()
        return path


class Payload:
    """An attacker's object: unpickling it creates the file ``marker``."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f'touch {self.marker}', ))


@pytest.fixture(scope='module')
def server():
    served = Server()
    yield served
    served.httpd.shutdown()


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """torch's hub cache inside the test's folder; its checkpoint folder."""
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch'))
    return tmp_path / 'torch' / 'hub' / 'checkpoints'


@pytest.fixture(scope='module')
def official_tiny():
    return random_official_state_dict(
        official_shapes()['cmt_ti']['state_dict'], seed=11)


def test_released_file_by_url_computes_as_from_disk(server, hub, tmp_path,
                                                    official_tiny):
    url = server.add('cmt_tiny.pth', official_tiny)
    local = tmp_path / 'cmt_tiny.pth'
    torch.save(official_tiny, local)
    by_url = CMT('tiny', init_cfg=dict(type='Pretrained', checkpoint=url))
    by_url.init_weights()
    from_disk = CMT(
        'tiny', init_cfg=dict(type='Pretrained', checkpoint=str(local)))
    from_disk.init_weights()
    for key, value in from_disk.state_dict().items():
        assert torch.equal(by_url.state_dict()[key], value), key
    x = torch.randn(1, 3, 96, 128)
    with torch.no_grad():
        for a, b in zip(by_url.eval()(x), from_disk.eval()(x)):
            assert torch.equal(a, b)
    # kept where torch.hub and mmengine keep downloads, byte for byte
    cached = hub / 'cmt_tiny.pth'
    assert cached_download(url) == str(cached)
    assert cached.read_bytes() == server.files['cmt_tiny.pth']
    assert os.listdir(hub) == ['cmt_tiny.pth']
    hits = len(server.hits)
    CMT('tiny', init_cfg=dict(type='Pretrained',
                              checkpoint=url)).init_weights()
    assert len(server.hits) == hits  # the second time from the cache


def _mmengine_load_checkpoint(url, tmp_path):
    from mmengine.runner import load_checkpoint
    load_checkpoint(CMT('tiny'), url)


def _init_cfg(url, tmp_path):
    CMT('tiny', init_cfg=dict(type='Pretrained',
                              checkpoint=url)).init_weights()


def _init_detector(url, tmp_path):
    from mmdet.apis import init_detector
    init_detector(SYNTHETIC, url, device='cpu')


def _det_inferencer(url, tmp_path):
    from mmdet.apis import DetInferencer
    DetInferencer(model=SYNTHETIC, weights=url, device='cpu')


def _mmseg_init_model(url, tmp_path):
    from mmseg.apis import init_model
    init_model(SEG_SYNTHETIC, url, device='cpu')


def _runner(url, tmp_path, resume):
    from mmengine.config import Config
    from mmengine.runner import Runner
    cfg = Config.fromfile(SYNTHETIC)
    cfg.work_dir = str(tmp_path / 'work')
    cfg.load_from, cfg.resume = url, resume
    Runner.from_cfg(cfg).load_or_resume()


LOADING_PATHS = {
    'mmengine load_checkpoint': _mmengine_load_checkpoint,
    'init_cfg': _init_cfg,
    'init_detector': _init_detector,
    'DetInferencer': _det_inferencer,
    'mmseg init_model': _mmseg_init_model,
    'load_from': lambda url, tmp: _runner(url, tmp, resume=False),
    'resume': lambda url, tmp: _runner(url, tmp, resume=True),
}


@pytest.mark.parametrize('path', sorted(LOADING_PATHS))
def test_payload_by_url_is_refused(server, hub, tmp_path, path):
    marker = tmp_path / 'ran'
    name = f'payload_{path.replace(" ", "_")}.pth'
    url = server.add(
        name, dict(state_dict=CMT('tiny').state_dict(), meta=Payload(marker)))
    with pytest.raises(UntrustedCheckpointError) as info:
        LOADING_PATHS[path](url, tmp_path)
    message = str(info.value)
    assert repr(url) in message and 'not trusted' in message
    assert 'system' in message and 'weights_only' not in message
    assert '\n' not in message
    assert not marker.exists()  # nothing ran
    assert not hub.exists() or os.listdir(hub) == []  # nothing kept


@pytest.mark.parametrize('mode', ['cut', 'nolength'])
def test_download_cut_short_is_not_kept(server, hub, official_tiny, mode):
    url = server.add('cmt_tiny.pth', official_tiny, mode=mode)
    with pytest.raises(CorruptCheckpointError) as info:
        CMT('tiny', init_cfg=dict(type='Pretrained',
                                  checkpoint=url)).init_weights()
    message = str(info.value)
    assert url in message and '\n' not in message
    assert ('cut short' if mode == 'cut' else 'truncated or corrupt') \
        in message
    assert os.listdir(hub) == []  # neither the file nor a partial one
    # the whole file then downloads and loads
    whole = url.replace(f'/{mode}/', '/files/')
    CMT('tiny', init_cfg=dict(type='Pretrained',
                              checkpoint=whole)).init_weights()
    assert os.listdir(hub) == ['cmt_tiny.pth']


def test_hash_in_the_name_is_checked(server, hub, official_tiny):
    url = server.add('cmt_tiny-0123abcd.pth', official_tiny)
    with pytest.raises(CorruptCheckpointError, match='SHA-256'):
        _init_cfg(url, None)
    assert os.listdir(hub) == []


def test_corrupt_cached_file_is_named(server, hub, official_tiny):
    url = server.add('cmt_tiny.pth', official_tiny)
    hub.mkdir(parents=True)
    (hub / 'cmt_tiny.pth').write_bytes(b'half a download')
    with pytest.raises(CorruptCheckpointError) as info:
        _init_cfg(url, None)
    message = str(info.value)
    assert str(hub / 'cmt_tiny.pth') in message and 'delete it' in message
    assert (hub / 'cmt_tiny.pth').read_bytes() == b'half a download'


def test_unreachable_url_is_one_line(hub, tmp_path):
    url = f'http://127.0.0.1:{free_port()}/cmt_small.pth'  # nobody listens
    with pytest.raises(DownloadError) as info:
        _init_cfg(url.replace('small', 'tiny'), None)
    assert 'Connection refused' in str(info.value)
    env = dict(os.environ, TORCH_HOME=str(tmp_path / 'torch'))
    image = tmp_path / 'image.png'
    cv2.imwrite(str(image), np.zeros((32, 32, 3), np.uint8))
    for command in (['tools/classify.py',
                     str(image), '--checkpoint', url], [
                         'tools/convert_official_cmt.py', url,
                         str(tmp_path / 'out.pth')
                     ]):
        result = run_tool(*command, check=False, env=env)
        assert result.returncode == 2, result.stderr[-2000:]
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and 'Traceback' not in result.stderr, lines
        assert url in lines[0] and str(hub / 'cmt_small.pth') in lines[0]
        assert 'local copy' in lines[0]
    assert not (tmp_path / 'out.pth').exists()


@pytest.mark.parametrize('tool', ['test.py', 'infer.py'])
def test_tools_refuse_payload_by_url(server, tmp_path, tool):
    """mmcmt's tools take a checkpoint URL and refuse a payload in one
    line (mmdet's own tools: the in-process paths above)."""
    make_synthetic_coco(
        str(tmp_path / 'coco'), num_train=1, num_val=1, img_size=(64, 64))
    marker = tmp_path / 'ran'
    url = server.add(f'payload_{tool}.pth', dict(meta=Payload(marker)))
    image = str(tmp_path / 'coco' / 'val2017' / '000000000001.jpg')
    command = {
        'test.py': [
            'tools/test.py', SYNTHETIC, url, '--work-dir',
            str(tmp_path / 'work'), '--cfg-options'
        ] + coco_options(f'{tmp_path}/coco/'),
        'infer.py': [
            'tools/infer.py', image, SYNTHETIC, url, '--out-dir',
            str(tmp_path / 'out')
        ],
    }[tool]
    env = dict(os.environ, TORCH_HOME=str(tmp_path / 'torch'))
    result = run_tool(*command, check=False, env=env)
    assert result.returncode == 2, result.stderr[-3000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and 'Traceback' not in result.stderr, lines
    assert repr(url) in lines[0] and 'not trusted' in lines[0]
    assert not marker.exists()
    assert not (tmp_path / 'torch' / 'hub' / 'checkpoints').exists() or \
        not os.listdir(tmp_path / 'torch' / 'hub' / 'checkpoints')


def test_tools_accept_urls(server, hub, tmp_path, official_tiny):
    url = server.add('cmt_tiny.pth', official_tiny)
    env = dict(os.environ, TORCH_HOME=str(tmp_path / 'torch'))
    out = tmp_path / 'converted.pth'
    result = run_tool('tools/convert_official_cmt.py', url, str(out), env=env)
    assert 'backbone tensors' in result.stdout
    model = CMT('tiny', init_cfg=dict(type='Pretrained', checkpoint=str(out)))
    model.init_weights()
    reference = CMT('tiny', init_cfg=dict(type='Pretrained', checkpoint=url))
    reference.init_weights()
    for key, value in reference.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key
    image = tmp_path / 'image.png'
    cv2.imwrite(
        str(image),
        np.random.default_rng(0).integers(0, 255, (64, 80, 3), dtype=np.uint8))
    result = run_tool(
        'tools/classify.py',
        str(image),
        '--arch',
        'tiny',
        '--checkpoint',
        url,
        env=env)
    assert len(re.findall(r'^\s*\d+\.\d+%', result.stdout, re.M)) == 5
    # downloaded once, by the first tool
    assert 'downloading' not in result.stdout
