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

Each table is a column spec in :data:`TABLES`: which models are its rows,
and for each column its header and the cell (a figure at a path of the
metafile, mmcmt's figure beside the paper's, a link, results).
Figures are printed at the precision that tools/get_flops.py prints them:
parameters with 2 decimals, FLOPs with 2 at ImageNet sizes and 1 at
detection sizes; the paper's figures as the paper gives them.
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
WITHOUT_ATTENTION = 'FLOPs without attention matmuls (G)'
#: How a metric is named in the tables' text cells.
METRIC_LABELS = {'Top 1 Accuracy': 'top-1'}
#: The COCO metrics of the paper's detection table, in its order.
COCO_METRICS = ('box AP', 'box AP50', 'box AP75', 'box APs', 'box APm',
                'box APl', 'mask AP', 'mask AP50', 'mask AP75')
NONE = '–'


def load_models(path=METAFILE):
    """The ``Models`` of the metafile, in their order."""
    with open(path) as f:
        return yaml.safe_load(f)['Models']


# ------------------------------------------------------------------- cells
# A cell is a function (row, root) -> text; a row is a metafile model (with
# 'Result' added for tables of results); root prefixes links to files.
def _value(row, path):
    """``row[path[0]][path[1]]...``, None where a key is absent."""
    for key in path:
        row = row.get(key) if isinstance(row, dict) else None
    return row


def _flops_digits(row):
    """FLOPs with 2 decimals at ImageNet sizes, 1 at detection sizes."""
    return 2 if row['In Collection'] == 'CMT' else 1


def _format(value, digits=None):
    if value is None:
        return NONE
    return str(value) if digits is None else f'{value:.{digits}f}'


def figure(*path, digits=None):
    """The figure at ``path``, with ``digits`` decimals (a number or a
    function of the row), or as the metafile gives it (None: the paper's
    figures, as the paper prints them)."""

    def cell(row, root):
        places = digits(row) if callable(digits) else digits
        return _format(_value(row, path), places)

    return cell


def ours_and_paper(key, digits):
    """``ours / paper`` of ``key``: mmcmt's figure (under ``Metadata``) and
    the paper's (under ``In Paper``), each '–' where absent."""
    ours, paper = figure(
        'Metadata', key, digits=digits), figure('In Paper', key)

    def cell(row, root):
        pair = ours(row, root), paper(row, root)
        return NONE if pair == (NONE, NONE) else ' / '.join(pair)

    return cell


def paper_convention_flops(row, root):
    """FLOPs measured / the paper's, in the paper's convention for the row:
    without the attention's matrix products where the paper's figure is
    (its detection table, marked ¹)."""
    if WITHOUT_ATTENTION in row.get('In Paper', {}):
        return ours_and_paper(WITHOUT_ATTENTION,
                              1)(row, root).replace(' / ', '¹ / ', 1)
    return ours_and_paper('FLOPs (G)', _flops_digits)(row, root)


def link(row, root):
    """The model's name, linked to its config (or its weights)."""
    if 'Config' in row:
        target = f'{root}/{row["Config"]}' if root else row['Config']
    elif 'Weights' in row:
        target = row['Weights']
    else:  # a variant of a config (say, a demo from random weights)
        return f'`{row["Name"]}`'
    return f'[`{row["Name"]}`]({target})'


def _metrics(metrics):
    return ', '.join(f'{METRIC_LABELS.get(k, k)} {_format(v)}'
                     for k, v in metrics.items())


def results(*path, first_only=False):
    """``Dataset: metric value, ...`` of the Results list at ``path``, one
    group per dataset (the first metric of each result only with
    ``first_only``)."""

    def cell(row, root):
        groups = {}
        for result in _value(row, path) or []:
            metrics = dict(
                list(result['Metrics'].items())[:1 if first_only else None])
            groups.setdefault(result['Dataset'], []).append(_metrics(metrics))
        return '; '.join(f'{dataset}: {", ".join(metrics)}'
                         for dataset, metrics in groups.items()) or NONE

    return cell


def paper_metric(name):
    """A metric of the paper's results, blank where the paper has none."""

    def cell(row, root):
        for result in row['In Paper']['Results']:
            if name in result['Metrics']:
                return _format(result['Metrics'][name])
        return ''

    return cell


def text(template):
    """``template`` filled with the row's Metadata (``{Backbone}``)."""
    return lambda row, root: template.format(**row['Metadata'])


# ------------------------------------------------------------------ tables
def _models(predicate):
    """The rows of a table: the models for which ``predicate`` holds."""
    return lambda models: [m for m in models if predicate(m)]


def _results(models):
    """The rows of a table of results: one per result of each model."""
    return [
        dict(model, Result=result) for model in models
        for result in model.get('Results', [])
    ]


def _imagenet(model):
    return model['In Collection'] == 'CMT'


def _detector(model):
    return model['In Collection'] == 'CMT Detection'


#: Under an ImageNet model: its backbone alone at a detection input.
BACKBONE = ('Metadata', 'Backbone Only')

#: name -> (which rows, [(header, cell)], the note printed below it).
TABLES = {
    'readme': (_models(lambda m: ('Config' in m or 'Weights' in m) and (
        m.get('In Paper') or m.get('Results'))), [
        ('model', link),
        ('input (W x H)', figure('Metadata', 'Input Size (W x H)')),
        ('params (M): ours / paper', ours_and_paper('Parameters (M)', 2)),
        ('FLOPs (G): ours / paper', paper_convention_flops),
        ("the paper's result", results('In Paper', 'Results',
                                       first_only=True)),
        ('our result', results('Results', first_only=True)),
    ], 'Accuracies (top-1, AP, mIoU) in %. ¹ Without the attention\'s '
               'matrix products (q·kᵀ, attn·v), as the paper\'s detection '
               'table counts FLOPs.'),
    'classifiers': (_models(_imagenet), [
        ('variant', text('{Backbone} classifier')),
        ('input (W x H)', figure('Metadata', 'Input Size (W x H)')),
        ('params (M): ours / paper', ours_and_paper('Parameters (M)', 2)),
        ('FLOPs (G): ours / paper', ours_and_paper('FLOPs (G)', 2)),
        ('FLOPs mmengine (G)', figure('Metadata', 'FLOPs mmengine (G)',
                                      digits=2)),
    ], None),
    'backbones': (_models(_imagenet), [
        ('backbone', text('{Backbone}')),
        ('input (W x H)', figure(*BACKBONE, 'Input Size (W x H)')),
        ('params (M)', figure(*BACKBONE, 'Parameters (M)', digits=2)),
        ('FLOPs (G)', figure(*BACKBONE, 'FLOPs (G)', digits=1)),
        ('FLOPs mmengine (G)', figure(*BACKBONE, 'FLOPs mmengine (G)',
                                      digits=1)),
        ('of which attention matmuls (G)', figure(
            *BACKBONE, 'Attention Matmuls (G)', digits=1)),
    ], None),
    'detectors': (_models(lambda m: _detector(m) and 'Parameters (M)' in m[
        'Metadata']), [
        ('detector', link),
        ('input (W x H)', figure('Metadata', 'Input Size (W x H)')),
        ('params (M): ours / paper', ours_and_paper('Parameters (M)', 2)),
        ('FLOPs (G)', figure('Metadata', 'FLOPs (G)', digits=1)),
        ('FLOPs without attention matmuls (G): ours / paper',
         ours_and_paper(WITHOUT_ATTENTION, 1)),
    ], None),
    'paper_coco': (_models(lambda m: _detector(m) and m.get('In Paper')),
                   [('model', link)] +
                   [(k, paper_metric(k)) for k in COCO_METRICS], None),
    'results': (_results, [
        ('model', link),
        ('task', figure('Result', 'Task')),
        ('dataset', figure('Result', 'Dataset')),
        ('metrics', lambda row, root: _metrics(row['Result']['Metrics'])),
    ], None),
    'weights': (_models(_imagenet), [
        ('arch', text('`{Arch}`')),
        ('variant', text('{Backbone}')),
        ('URL', lambda row, root: f'`{row["Weights"]}`'),
        ('pre-training input', figure('Metadata', 'Input Size (W x H)')),
        ('top-1 (published)', paper_metric('Top 1 Accuracy')),
    ], None),
    'demos': (_models(lambda m: 'Backbone Start' in m['Metadata']), [
        ('demo', link),
        ('backbone start', figure('Metadata', 'Backbone Start')),
        ('validation results', results('Results')),
        ('time, whole demo (min)', figure('Metadata', 'Time (min)')),
        ('measured on', figure('Metadata', 'Training Resources')),
    ], None),
}  # yapf: disable


def _row(cells):
    return '| ' + ' | '.join(cells) + ' |'


def render(name, models=None, root=''):
    """The markdown of table ``name``, links relative to ``root`` (a path
    from the markdown file's folder to the repository root; '' for the
    root itself)."""
    if name not in TABLES:
        raise KeyError(f'no table {name!r}; the tables are '
                       f'{", ".join(TABLES)}')
    rows, columns, note = TABLES[name]
    chosen = rows(load_models() if models is None else models)
    lines = [_row(h for h, _ in columns), _row(['---'] * len(columns))]
    lines += [_row(cell(row, root) for _, cell in columns) for row in chosen]
    return '\n'.join(lines) + (f'\n\n{note}' if note else '')


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
