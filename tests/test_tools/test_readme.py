"""README.md: its figures are the generated pages' (tools/readme_figures.py), it is a page and not a log."""
import os.path as osp

import pytest

from conftest import REPO, load_script


readme_figures = load_script('tools/readme_figures.py')


def test_figures_section_takes_what_follows_the_written_by_line():
    page = ('# Title\n\nWritten by `python x.py`.\n\n| a | b |\n| 1 | 2 |\n\n![curve](x_curves.png)\n\n'
            '## Details\n\nnot copied\n')
    section = readme_figures.figures_section(page, 'docs')
    assert section == '| a | b |\n| 1 | 2 |\n\n![curve](docs/x_curves.png)\n'
    with pytest.raises(ValueError, match='Written by'):
        readme_figures.figures_section('| a |\n', 'docs')


def test_render_replaces_only_the_marked_blocks(tmp_path):
    (tmp_path / 'docs').mkdir()
    (tmp_path / 'docs' / 'page.md').write_text('# P\n\nWritten by `cmd`.\n\n| new | 1 |\n')
    readme = 'intro\n<!-- figures: docs/page.md -->\n| old | 0 |\n<!-- end figures -->\noutro\n'
    assert readme_figures.render(readme, str(tmp_path)) == (
        'intro\n<!-- figures: docs/page.md -->\n| new | 1 |\n<!-- end figures -->\noutro\n')
    with pytest.raises(FileNotFoundError, match='docs/missing.md'):
        readme_figures.render('<!-- figures: docs/missing.md -->\n<!-- end figures -->', str(tmp_path))


def test_readme_figures_are_the_generated_pages():
    with open(osp.join(REPO, 'README.md')) as f:
        readme = f.read()
    assert readme.count('<!-- figures: ') == 2
    assert readme_figures.render(readme) == readme, 'run python tools/readme_figures.py'


def test_readme_is_a_page():
    with open(osp.join(REPO, 'README.md')) as f:
        lines = f.read().splitlines()
    assert len(lines) < 400
    assert not any('mmengine - INFO' in line for line in lines)


def test_make_docs_runs_the_command_every_generated_page_names():
    """`make docs` regenerates every page under docs/: each page's command (in backquotes on its first
    "Written by" / "Made by" line, or indented under "Made by:") is a line of the Makefile's docs recipe."""
    import glob
    import re
    with open(osp.join(REPO, 'Makefile')) as f:
        makefile = f.read()
    recipe = re.search(r'^docs:.*\n((?:\t.*\n)+)', makefile, re.M).group(1)
    commands = {line.strip().replace('$(PY) ', 'python ').replace('$(MAKE) ', 'make ')
                for line in recipe.splitlines()}
    pages = sorted(glob.glob(osp.join(REPO, 'docs', '*.md')))
    assert len(pages) >= 8
    for page in pages:
        with open(page) as f:
            text = f.read()
        said = re.search(r'(?:Written|Made) by `([^`]+)`', text) or re.search(r'Made by:\n\n {4}(.+)\n', text)
        assert said, f'{page} does not name the command that writes it'
        assert said.group(1) in commands, f'{page}: `{said.group(1)}` is not in `make docs`'
