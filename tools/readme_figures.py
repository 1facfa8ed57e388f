"""Copy the generated figures into README.md: every block between
``<!-- figures: SOURCE -->`` and ``<!-- end figures -->`` is replaced by SOURCE's figures section.

    python tools/readme_figures.py [--check]

SOURCE is a file written by a command (docs/finetune.md by benchmarks/finetune.py, docs/demo.md by
`make demo DEMO_DOCS=docs/demo`) that names it on a line starting ``Written by``; its figures section is
everything after that line up to (not including) its first ``## `` heading, with picture links made
relative to the README. So the README never holds a figure typed by hand: rerun the source's command, then this.
``--check`` changes nothing and exits 1 if README.md is not what this would write.
"""
import argparse
import os.path as osp
import re
import sys

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
BLOCK = re.compile(r'(<!-- figures: (?P<source>\S+) -->\n)(?P<body>.*?)(<!-- end figures -->)', re.S)
_WRITTEN_BY = re.compile(r'^Written by .*$', re.M)


def figures_section(text: str, source_dir: str) -> str:
    """The figures section of a generated page (see the module doc), picture links prefixed with
    ``source_dir`` (the page's folder relative to the README)."""
    written_by = _WRITTEN_BY.search(text)
    if written_by is None:
        raise ValueError('no "Written by" line naming the command that wrote it')
    section = text[written_by.end():]
    heading = re.search(r'^## ', section, re.M)
    section = section[:heading.start()] if heading else section
    section = re.sub(r'(!\[[^\]]*\]\()(?!https?://|/)([^)]+\))', rf'\1{source_dir}/\2', section)
    return section.strip() + '\n'


def render(readme: str, repo: str = REPO) -> str:
    """``readme`` with every figures block refreshed from its source file."""
    def replace(match):
        source = match.group('source')
        path = osp.join(repo, source)
        if not osp.isfile(path):
            raise FileNotFoundError(f'README.md takes figures from {source}, which does not exist: run the '
                                    'command that writes it')
        with open(path) as f:
            try:
                body = figures_section(f.read(), osp.dirname(source))
            except ValueError as e:
                raise ValueError(f'{source}: {e}') from None
        return f'{match.group(1)}{body}{match.group(4)}'
    return BLOCK.sub(replace, readme)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--check', action='store_true', help='exit 1 if README.md is out of date; write nothing')
    args = p.parse_args(argv)
    path = osp.join(REPO, 'README.md')
    with open(path) as f:
        old = f.read()
    try:
        new = render(old)
    except (FileNotFoundError, ValueError) as e:
        sys.exit(f'error: {e}')
    if args.check:
        if new != old:
            sys.exit('README.md is out of date with its figure sources: run python tools/readme_figures.py')
        print('README.md figures are up to date')
        return
    with open(path, 'w') as f:
        f.write(new)
    print(f'README.md: {len(BLOCK.findall(new))} figure blocks refreshed')


if __name__ == '__main__':
    main()
