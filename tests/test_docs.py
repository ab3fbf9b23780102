"""The README and docs/: their tables of figures are exactly what
tools/metafile_tables.py prints from configs/metafile.yml, the metafile
names the shipped configs and the released weights, every relative link
resolves (files and anchors), and the README stays the front door (CI's test
commands, no dated figures before the install command, at most 250
lines)."""
import glob
import importlib.util
import os.path as osp
import re

import pytest
import yaml

from mmcmt.checkpoint import RELEASE_URL, RELEASED_FILES

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
README = osp.join(ROOT, 'README.md')


def _load_tables_tool():
    spec = importlib.util.spec_from_file_location(
        'metafile_tables', osp.join(ROOT, 'tools', 'metafile_tables.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


tables = _load_tables_tool()
MARKDOWN = tables.markdown_files()


def _rel(path):
    return osp.relpath(path, ROOT)


def _read(path):
    with open(path, encoding='utf-8') as f:
        return f.read()


@pytest.mark.parametrize('path', MARKDOWN, ids=_rel)
def test_tables_are_the_tools_output(path):
    """Each marked region holds exactly the table that
    ``python tools/metafile_tables.py --update`` writes there."""
    text = _read(path)
    assert text == tables.updated(text, path), (
        f'{_rel(path)}: a table differs from configs/metafile.yml; run '
        'python tools/metafile_tables.py --update')


def test_every_table_is_shown():
    shown = {
        name
        for path in MARKDOWN
        for name, _ in tables.REGION.findall(_read(path))
    }
    assert shown == set(tables.TABLES)
    assert 'metafile_tables.py readme -->' in _read(README)


def test_metafile_names_the_configs_and_weights():
    with open(osp.join(ROOT, 'model-index.yml')) as f:
        index = yaml.safe_load(f)
    assert index == {'Import': ['configs/metafile.yml']}
    models = tables.load_models()
    names = [model['Name'] for model in models]
    assert len(names) == len(set(names))
    configs = sorted(model['Config'] for model in models if 'Config' in model)
    shipped = sorted(
        _rel(path) for path in glob.glob(osp.join(ROOT, 'configs', '*.py')))
    assert configs == shipped
    for model in models:
        if 'Config' in model:
            assert model['Name'] == osp.basename(model['Config'])[:-3]
    weights = {
        model['Metadata']['Arch']: model['Weights']
        for model in models if model['In Collection'] == 'CMT'
    }
    assert weights == {
        arch: f'{RELEASE_URL}/{name}'
        for arch, name in RELEASED_FILES.items()
    }


def _without_code(text):
    return re.sub(r'^```.*?^```', '', text, flags=re.S | re.M)


def _anchors(path):
    """GitHub's anchors of the headings of a markdown file."""
    anchors, seen = set(), {}
    for heading in re.findall(r'^#{1,6} +(.+?) *#*$',
                              _without_code(_read(path)), re.M):
        anchor = re.sub(r'[^\w\- ]', '', heading.lower()).replace(' ', '-')
        count = seen.get(anchor, 0)
        seen[anchor] = count + 1
        anchors.add(anchor if count == 0 else f'{anchor}-{count}')
    return anchors


@pytest.mark.parametrize('path', MARKDOWN, ids=_rel)
def test_relative_links_resolve(path):
    broken = []
    links = re.findall(r'\]\(([^)\s]+)\)', _without_code(_read(path)))
    for link in links:
        if re.match(r'[a-z]+:', link):
            continue
        target, _, anchor = link.partition('#')
        target = osp.normpath(osp.join(osp.dirname(path), target)) \
            if target else path
        if not osp.exists(target):
            broken.append(f'{link}: no such file')
        elif anchor and target.endswith('.md') and \
                anchor not in _anchors(target):
            broken.append(f'{link}: no such heading')
    assert not broken, f'{_rel(path)}: {broken}'


def test_readme_is_the_front_door():
    text = _read(README)
    lines = text.splitlines()
    assert len(lines) <= 250
    # CI (.ci/run) runs exactly the README's test commands
    with open(osp.join(ROOT, '.ci', 'run')) as f:
        ci = [line for line in f.read().splitlines() if 'pytest' in line]
    shown = {
        line
        for block in re.findall(r'```bash\n(.*?)```', text, re.S)
        for line in block.splitlines()
    }
    assert ci and all(line in shown for line in ci), ci
    assert 'bash tools/setup.sh && bash tools/demo.sh' in shown
    # no dated measurement before the install command
    before = text[:text.index('bash tools/setup.sh && bash tools/demo.sh')]
    assert not re.search(r'\b20\d\d-\d\d-\d\d\b', before)
