"""The docs' tables of figures, printed from configs/metafile.yml.

    python tools/metafile_tables.py [NAME ...] [--root PREFIX]
    python tools/metafile_tables.py --update [FILE ...]
    python tools/metafile_tables.py --check [FILE ...]

configs/metafile.yml (OpenMMLab's metafile format) is the one place for the
parameters, FLOPs and results of mmcmt's models; the markdown tables of the
README and of docs/ are this tool's output, never typed by hand. Without
options it prints the named tables (all of them by default; links relative
to the repository root, or to ``--root``). In a markdown file a table is the
region between ``<!-- metafile_tables.py NAME -->`` and
``<!-- metafile_tables.py end -->``: ``--update`` rewrites those regions
(default files: README.md and docs/**/*.md), with links relative to each
file's folder; ``--check`` changes nothing and exits with code 1, naming the
files, if a region differs from what ``--update`` would write
(tests/test_docs.py checks the same).

Figures are printed at the precision that tools/get_flops.py and
tools/complexity.py print them: parameters with 2 decimals, FLOPs with 2 at
ImageNet sizes and 1 at detection sizes; the paper's figures as the paper
gives them.
"""
import argparse
import glob
import os
import os.path as osp
import re
import sys

import yaml

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
METAFILE = osp.join(ROOT, 'configs', 'metafile.yml')
REGION = re.compile(
    r'<!-- metafile_tables\.py (\w+) -->\n(.*?)'
    r'<!-- metafile_tables\.py end -->', re.S)
WITHOUT_ATTENTION = 'FLOPs without attention products (G)'
#: How a metric is named in the tables' text cells.
METRIC_LABELS = {'Top 1 Accuracy': 'top-1'}


def load_models(path=METAFILE):
    """The ``Models`` of the metafile, in their order."""
    with open(path) as f:
        return yaml.safe_load(f)['Models']


def _link(model, root):
    if 'Config' in model:
        target = f'{root}/{model["Config"]}' if root else model['Config']
    elif 'Weights' in model:
        target = model['Weights']
    else:  # a variant of a config (say, a demo from random weights)
        return f'`{model["Name"]}`'
    return f'[`{model["Name"]}`]({target})'


def _fixed(value, digits):
    return '–' if value is None else f'{value:.{digits}f}'


def _given(value):
    """A figure as the paper (or a measurement's printout) gives it."""
    return '–' if value is None else str(value)


def _pair(here, paper):
    return '–' if here == paper == '–' else f'{here} / {paper}'


def _flops_digits(model):
    return 2 if model['In Collection'] == 'CMT' else 1


def _row(cells):
    return '| ' + ' | '.join(cells) + ' |'


def _table(header, rows):
    return '\n'.join([_row(header), _row(['---'] * len(header))] +
                     [_row(r) for r in rows])


def _results(results, first_only=False):
    """``Dataset: metric value, ...`` of a Results list, one group per
    dataset (the first metric of each result only with ``first_only``)."""
    groups = {}
    for result in results or []:
        metrics = list(result['Metrics'].items())[:1 if first_only else None]
        groups.setdefault(result['Dataset'],
                          []).extend(f'{METRIC_LABELS.get(k, k)} {_given(v)}'
                                     for k, v in metrics)
    return '; '.join(f'{d}: {", ".join(m)}' for d, m in groups.items()) or '–'


def readme_table(models, root=''):
    """The README's results: every model with the paper's figures or with
    results measured here, the paper's beside what was measured here."""
    rows, with_attention = [], []
    for model in models:
        meta, paper = model['Metadata'], model.get('In Paper', {})
        named = 'Config' in model or 'Weights' in model
        if not named or not paper and not model.get('Results'):
            continue  # variants (a demo from random weights): demos table
        flops_key = WITHOUT_ATTENTION if WITHOUT_ATTENTION in paper \
            else 'FLOPs (G)'
        flops = _fixed(meta.get(flops_key), _flops_digits(model))
        if flops_key == WITHOUT_ATTENTION:
            flops += '¹'
            with_attention.append(
                f'`{model["Name"]}` '
                f'{_fixed(meta["FLOPs (G)"], _flops_digits(model))} G')
        rows.append([
            _link(model, root),
            meta.get('Input Size (W x H)', '–'),
            _pair(
                _fixed(meta.get('Parameters (M)'), 2),
                _given(paper.get('Parameters (M)'))),
            _pair(flops, _given(paper.get(flops_key))),
            _results(paper.get('Results'), first_only=True),
            _results(model.get('Results'), first_only=True),
        ])
    text = _table([
        'model', 'input (W x H)', 'params (M): here / paper',
        'FLOPs (G): here / paper', 'the paper', 'measured here'
    ], rows)
    text += '\n\nAccuracies (top-1, AP, mIoU) in %.'
    if with_attention:
        text += (' ¹ Counted as the paper\'s detection table counts, '
                 'without the attention products (q·kᵀ, attn·v); with them: ' +
                 ', '.join(with_attention) + '.')
    return text


def classifiers_table(models, root=''):
    """The released ImageNet classifiers at their pre-training sizes."""
    rows = []
    for model in models:
        if model['In Collection'] != 'CMT':
            continue
        meta, paper = model['Metadata'], model['In Paper']
        rows.append([
            f'{meta["Backbone"]} classifier', meta['Input Size (W x H)'],
            _fixed(meta['Parameters (M)'], 2),
            _given(paper['Parameters (M)']),
            _fixed(meta['FLOPs (G)'], 2),
            _fixed(meta['FLOPs mmengine (G)'], 2),
            _given(paper['FLOPs (G)'])
        ])
    return _table([
        'variant', 'input', 'params (M)', 'paper params (M)', 'FLOPs macs (G)',
        'FLOPs mmengine (G)', 'paper FLOPs (G)'
    ], rows)


def backbones_table(models, root=''):
    """The backbones alone (no head) at a detection input."""
    rows = []
    for model in models:
        if model['In Collection'] != 'CMT':
            continue
        meta = model['Metadata']['Backbone Only']
        rows.append([
            model['Metadata']['Backbone'], meta['Input Size (W x H)'],
            _fixed(meta['Parameters (M)'], 2),
            _fixed(meta['FLOPs (G)'], 1),
            _fixed(meta['FLOPs mmengine (G)'], 1),
            _fixed(meta['Attention Products (G)'], 1)
        ])
    return _table([
        'backbone', 'input (W x H)', 'params (M)', 'FLOPs macs (G)',
        'FLOPs mmengine (G)', 'of which attention products (G)'
    ], rows)


def detectors_table(models, root=''):
    """The detectors' parameters and FLOPs against the paper's."""
    rows = []
    for model in models:
        meta, paper = model['Metadata'], model.get('In Paper')
        if model['In Collection'] != 'CMT Detection' or \
                'Parameters (M)' not in meta:
            continue
        rows.append([
            _link(model, root), meta['Input Size (W x H)'],
            _fixed(meta['Parameters (M)'], 2),
            _fixed(meta['FLOPs (G)'], 1),
            _fixed(meta[WITHOUT_ATTENTION], 1),
            f'{_given(paper["Parameters (M)"])} M / '
            f'{_given(paper[WITHOUT_ATTENTION])} B'
            if paper else 'not in the paper'
        ])
    return _table([
        'detector', 'input (W x H)', 'params (M)',
        'FLOPs with attention products (G)',
        'FLOPs without attention products (G)', 'paper params / FLOPs'
    ], rows)


def paper_coco_table(models, root=''):
    """The paper's COCO figures of the models it reports."""
    chosen, columns = [], []
    for model in models:
        paper = model.get('In Paper', {})
        if model['In Collection'] != 'CMT Detection' or not paper:
            continue
        metrics = {}
        for result in paper['Results']:
            metrics.update(result['Metrics'])
        columns += [k for k in metrics if k not in columns]
        chosen.append((model, metrics))
    rows = [[_link(model, root)] +
            [_given(metrics[k]) if k in metrics else '' for k in columns]
            for model, metrics in chosen]
    return _table(['model'] + columns, rows)


def results_table(models, root=''):
    """Every result measured here."""
    rows = [[
        _link(model, root), result['Task'], result['Dataset'],
        ', '.join(f'{METRIC_LABELS.get(k, k)} {_given(v)}'
                  for k, v in result['Metrics'].items())
    ] for model in models for result in model.get('Results', [])]
    return _table(['model', 'task', 'dataset', 'metrics'], rows)


def weights_table(models, root=''):
    """The released ImageNet-1k weights, by URL."""
    rows = [[
        f'`{model["Metadata"]["Arch"]}`', model['Metadata']['Backbone'],
        f'`{model["Weights"]}`', model['Metadata']['Input Size (W x H)'],
        _given(model['In Paper']['Results'][0]['Metrics']['Top 1 Accuracy'])
    ] for model in models if model['In Collection'] == 'CMT']
    return _table(
        ['arch', 'variant', 'URL', 'pre-training input', 'top-1 (published)'],
        rows)


def demos_table(models, root=''):
    """The demos (tools/demo.sh, tools/demo_seg.sh): each recipe from the
    shapes classifier and, for comparison, from random weights."""
    rows = [[
        _link(model, root),
        model['Metadata']['Backbone Start'],
        _results(model['Results']),
        _given(model['Metadata'].get('Time (min)')),
        model['Metadata']['Training Resources'],
    ] for model in models if 'Backbone Start' in model['Metadata']]
    return _table([
        'demo', 'backbone start', 'validation results',
        'time, whole demo (min)', 'measured on'
    ], rows)


TABLES = {
    'readme': readme_table,
    'classifiers': classifiers_table,
    'backbones': backbones_table,
    'detectors': detectors_table,
    'paper_coco': paper_coco_table,
    'results': results_table,
    'weights': weights_table,
    'demos': demos_table,
}


def render(name, models=None, root=''):
    """The markdown of table ``name``, links relative to ``root`` (a path
    from the markdown file's folder to the repository root; '' for the
    root itself)."""
    if name not in TABLES:
        raise KeyError(f'no table {name!r}; the tables are '
                       f'{", ".join(TABLES)}')
    return TABLES[name](load_models() if models is None else models, root)


def markdown_files():
    """README.md and every markdown file under docs/."""
    return [osp.join(ROOT, 'README.md')] + sorted(
        glob.glob(osp.join(ROOT, 'docs', '**', '*.md'), recursive=True))


def updated(text, path, models=None):
    """``text`` of the markdown file at ``path`` with each marked region
    holding the current table (links relative to the file's folder)."""
    models = load_models() if models is None else models
    root = osp.relpath(ROOT, osp.dirname(osp.abspath(path)))
    root = '' if root == '.' else root.replace(os.sep, '/')

    def fill(match):
        name = match[1]
        return (f'<!-- metafile_tables.py {name} -->\n\n'
                f'{render(name, models, root)}\n\n'
                '<!-- metafile_tables.py end -->')

    return REGION.sub(fill, text)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument(
        'names',
        nargs='*',
        metavar='NAME_OR_FILE',
        help=f'tables to print (of: {", ".join(TABLES)}); '
        'with --update or --check: markdown files')
    parser.add_argument(
        '--root',
        default='',
        help='prefix of links to files of the repository')
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument(
        '--update',
        action='store_true',
        help='rewrite the marked regions of markdown files')
    mode.add_argument(
        '--check',
        action='store_true',
        help='exit 1 if a marked region is not up to date')
    args = parser.parse_args(argv)
    models = load_models()
    if not (args.update or args.check):
        names = args.names or list(TABLES)
        for name in names:
            if name not in TABLES:
                parser.error(f'no table {name!r}; the tables are '
                             f'{", ".join(TABLES)}')
        blocks = [render(name, models, args.root) for name in names]
        if len(names) > 1:  # each under the marker that holds it in a page
            blocks = [
                f'<!-- metafile_tables.py {name} -->\n\n{block}'
                for name, block in zip(names, blocks)
            ]
        print('\n\n'.join(blocks))
        return 0
    stale = []
    for path in args.names or markdown_files():
        if not osp.isfile(path):
            parser.error(f'no such file: {path}')
        with open(path, encoding='utf-8') as f:
            text = f.read()
        new = updated(text, path, models)
        if new != text:
            stale.append(path)
            if args.update:
                with open(path, 'w', encoding='utf-8') as f:
                    f.write(new)
    verb = 'updated' if args.update else 'not up to date'
    for path in stale:
        print(f'{verb}: {osp.relpath(path)}')
    return 1 if stale and args.check else 0


if __name__ == '__main__':
    sys.exit(main())
