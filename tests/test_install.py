"""What a user's `pip install -e .` does, on every tested stack: the
package's metadata admits every stack of tools/stacks.txt (and newer
releases: no cap without a named break), installing into a stack (or beside
a torch newer than any tested one) installs mmcmt alone, and the README's
table of supported versions lists exactly those stacks."""
import json
import os
import os.path as osp
import re
import sys

import torch
from helpers import ROOT, run_command
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version


def stacks():
    """``{name: {'python', 'torch', 'numpy', 'venv'}}`` of
    tools/stacks.txt."""
    rows = {}
    with open(osp.join(ROOT, 'tools', 'stacks.txt')) as f:
        for line in f:
            if line.strip() and not line.startswith('#'):
                name, python, torch_version, numpy, venv = line.split()
                rows[name] = dict(
                    python=python, torch=torch_version, numpy=numpy, venv=venv)
    return rows


def this_stack():
    """The tools/stacks.txt stack the tests run on."""
    python = '.'.join(map(str, sys.version_info[:2]))
    found = [
        name for name, s in stacks().items() if s['python'] == python
        and s['torch'] == torch.__version__.split('+')[0]
    ]
    assert found, (f'Python {python} with torch {torch.__version__} is none '
                   f'of the tested stacks {stacks()}')
    return found[0]


def dry_install(tmp_path, env=None):
    """`pip install -e .`, dry and offline, into the running interpreter's
    environment: the report's ``install`` list (what would be installed).
    No pip configuration file is read (a machine's own constraints, such as
    a cap on torch, are not the package's)."""
    report = tmp_path / 'report.json'
    env = dict(env or os.environ, PIP_CONFIG_FILE=os.devnull)
    result = run_command([
        sys.executable, '-m', 'pip', 'install', '--dry-run', '--no-index',
        '--no-build-isolation', '--quiet', '--report',
        str(report), '-e', ROOT
    ],
                         timeout=300,
                         env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(report.read_text())['install']


def test_installed_versions_are_a_tested_stack():
    """The tests run on one of the stacks of tools/stacks.txt, with the
    packages every stack has."""
    import mmcv
    import mmdet
    import mmengine
    import mmseg
    import numpy as np
    stack = stacks()[this_stack()]
    assert Version(np.__version__) in SpecifierSet(stack['numpy'])
    assert mmcv.__version__ == '2.1.0'
    assert (mmdet.__version__, mmseg.__version__) == ('3.3.0', '1.2.2')
    assert mmengine.__version__.startswith('0.10.')


def test_metadata_admits_every_stack_and_newer_releases(tmp_path):
    """The installed metadata (what pip checks against a user's
    environment): each stack's Python, torch and numpy satisfy it, and
    Python, torch and numpy have no upper bound; mmcv has the one that mmdet
    3.3 and mmsegmentation 1.2 assert (< 2.2)."""
    (item, ) = dry_install(tmp_path)
    metadata = item['metadata']
    python = SpecifierSet(metadata['requires_python'])
    requires = {
        r.name: r.specifier
        for r in map(Requirement, metadata['requires_dist']) if not r.marker
    }
    for name, stack in stacks().items():
        assert Version(stack['python']) in python, name
        assert Version(stack['torch']) in requires['torch'], name
        lowest_numpy = min(
            Version(s.version) for s in SpecifierSet(stack['numpy'])
            if s.operator in ('>=', '=='))
        assert lowest_numpy in requires['numpy'], name
    for spec in (python, requires['torch'], requires['numpy']):
        assert not [s for s in spec if s.operator in ('<', '<=', '==')], spec
    for version in ('3.13', '3.14'):
        assert Version(version) in python
    assert Version('2.15.0') in requires['torch']
    assert requires['mmcv'] == SpecifierSet('>=2.1.0,<2.2.0')


def test_pip_install_replaces_nothing(tmp_path):
    """The installed stack satisfies the requirements: installing mmcmt into
    it would install mmcmt alone (checked offline, dry)."""
    installs = dry_install(tmp_path)
    assert [item['metadata']['name'] for item in installs] == ['mmcmt']


def test_pip_install_keeps_a_newer_torch(tmp_path):
    """Beside a torch newer than any tested one (2.15.0, stood in for by its
    metadata alone, found first on the path), `pip install -e .` still
    installs mmcmt alone: it never downgrades a user's torch."""
    newer = '2.15.0'
    info = tmp_path / 'site' / f'torch-{newer}.dist-info'
    info.mkdir(parents=True)
    (info / 'METADATA'
     ).write_text(f'Metadata-Version: 2.1\nName: torch\nVersion: {newer}\n')
    (info / 'INSTALLER').write_text('pip\n')
    (info / 'RECORD').write_text('')
    env = dict(os.environ, PYTHONPATH=str(tmp_path / 'site'))
    # the stand-in is what pip sees as the installed torch
    seen = run_command([
        sys.executable, '-c', 'import importlib.metadata as md; '
        'print(md.version("torch"))'
    ],
                       env=env).stdout.strip()
    assert seen == newer
    installs = dry_install(tmp_path, env)
    assert [item['metadata']['name'] for item in installs] == ['mmcmt']


def test_readme_lists_the_tested_stacks():
    """README's Supported versions table has one row per stack of
    tools/stacks.txt with its Python, torch and numpy, and the command that
    sets it up."""
    with open(osp.join(ROOT, 'README.md'), encoding='utf-8') as f:
        readme = f.read()
    section = readme.split('## Supported versions', 1)[1].split('\n## ')[0]
    lines = section.splitlines()
    start = next(i for i, line in enumerate(lines)
                 if line.startswith('| stack | Python |'))
    rows = []
    for line in lines[start:]:
        if not line.startswith('|'):
            break
        rows.append([c.strip() for c in line.strip().strip('|').split('|')])
    header, rows = rows[0], rows[2:]  # past the |---| line
    col = {name: header.index(name) for name in ('Python', 'torch', 'numpy')}
    listed = {}
    for row in rows:
        name = re.match(r'(\w+)', row[0]).group(1)
        listed[name] = row
    assert sorted(listed) == sorted(stacks())
    for name, stack in stacks().items():
        row = listed[name]
        assert row[col['Python']].startswith(stack['python']), row
        assert row[col['torch']].startswith(stack['torch']), row
        numpy_lowest = re.search(r'[\d.]+', stack['numpy']).group(0)
        assert row[col['numpy']].startswith(numpy_lowest), (row, stack)
        command = 'bash tools/setup.sh' + ('' if name == 'newest' else
                                           f' --stack {name}')
        assert f'`{command}`' in row[0] and stack['venv'] in row[0], row


def test_setup_script_names_the_stacks():
    """tools/setup.sh given an unknown stack says which names it takes
    (those of tools/stacks.txt) and exits 2 before it installs anything."""
    result = run_command(['bash', 'tools/setup.sh', '--stack', 'nosuch'],
                         timeout=60)
    assert result.returncode == 2
    assert "unknown stack 'nosuch'" in result.stderr
    for name in stacks():
        assert name in result.stderr
