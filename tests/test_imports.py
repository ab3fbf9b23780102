"""mmcmt's modules import each other without circles: every ``import`` and
``from ... import`` statement of every module under ``mmcmt/`` (those inside
functions too, which only hide a circle until the function runs) is read
with :mod:`ast`, and the graph of module -> imported mmcmt module must have
no cycle. Importing a package runs its ``__init__``, so a package counts as
a module of its own."""
import ast
import os.path as osp
from glob import glob

from helpers import ROOT

PACKAGE = osp.join(ROOT, 'mmcmt')


def _module_name(path):
    """``mmcmt.a.b`` of ``mmcmt/a/b.py``; ``mmcmt.a`` of
    ``mmcmt/a/__init__.py``."""
    parts = osp.relpath(path, ROOT)[:-len('.py')].split(osp.sep)
    return '.'.join(parts[:-1] if parts[-1] == '__init__' else parts)


def _is_module(name):
    path = osp.join(ROOT, *name.split('.'))
    return osp.isfile(path + '.py') or osp.isfile(
        osp.join(path, '__init__.py'))


def _imported(path, name):
    """The mmcmt modules that the module ``name`` at ``path`` imports."""
    with open(path, encoding='utf-8') as f:
        tree = ast.parse(f.read(), path)
    package = name if path.endswith('__init__.py') else name.rpartition('.')[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ''
            if node.level:
                anchor = package.split('.')
                anchor = anchor[:len(anchor) - node.level + 1]
                base = '.'.join(anchor + ([base] if base else []))
            for alias in node.names:  # a submodule, or a name of ``base``
                sub = f'{base}.{alias.name}'
                found.add(sub if _is_module(sub) else base)
    return {m for m in found if m.split('.')[0] == 'mmcmt' and _is_module(m)}


def import_graph():
    """Module name -> the mmcmt modules it imports, for all of mmcmt."""
    graph = {}
    for path in glob(osp.join(PACKAGE, '**', '*.py'), recursive=True):
        name = _module_name(path)
        graph[name] = _imported(path, name) - {name}
    return graph


def find_cycles(graph):
    """One cycle (a list of modules, the first repeated at the end) through
    each strongly connected group of ``graph`` that has one."""
    index, low, stack, on_stack, groups = {}, {}, [], set(), []

    def visit(node):  # Tarjan's algorithm
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.add(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(group)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return [_cycle_in(graph, group) for group in groups]


def _cycle_in(graph, group):
    """A path from the group's first module back to itself, inside it."""
    start = min(group)
    paths = {start: [start]}
    frontier = [start]
    while frontier:  # breadth first: the shortest cycle through ``start``
        node = frontier.pop(0)
        for nxt in sorted(graph[node] & group):
            if nxt == start:
                return paths[node] + [start]
            if nxt not in paths:
                paths[nxt] = paths[node] + [nxt]
                frontier.append(nxt)
    raise AssertionError(f'no cycle through {start}')


def test_finder_sees_a_circle_through_a_function_level_import():
    graph = {'a': {'b'}, 'b': {'c'}, 'c': {'a'}, 'd': {'a'}}
    assert find_cycles(graph) == [['a', 'b', 'c', 'a']]
    assert find_cycles({'a': {'b'}, 'b': set()}) == []


def test_graph_reads_relative_and_function_level_imports():
    graph = import_graph()
    # ``from .allow_list import ...`` at module level
    assert 'mmcmt.checkpoint.allow_list' in graph['mmcmt.checkpoint.safe_load']
    # ``from ..benchmark.tasks import run_tasks`` inside a function
    assert 'mmcmt.benchmark.tasks' in graph['mmcmt.check.speed']
    # ``from .. import compat``: a submodule, not the package
    assert 'mmcmt.compat' in graph['mmcmt.check.environment']


def test_no_import_circles():
    cycles = find_cycles(import_graph())
    assert not cycles, 'import circles: ' + '; '.join(' -> '.join(cycle)
                                                      for cycle in cycles)


def test_check_imports_the_benchmark_only_for_its_speed_section():
    """``python -m mmcmt.check`` runs its correctness sections without the
    benchmark (mmdet's models, the rows' configs) being imported."""
    graph = import_graph()
    for name, imported in graph.items():
        if name.startswith('mmcmt.check') and name != 'mmcmt.check.speed':
            assert not {
                m
                for m in imported if m.startswith('mmcmt.benchmark')
            }, name
