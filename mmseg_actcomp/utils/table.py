"""Plain-text tables for logs and terminal reports."""
from typing import Optional, Sequence


def align(header: Sequence[str], rows: Sequence[Sequence[str]], left: int = 1) -> str:
    """Columns padded to their widest cell; the first ``left`` columns left-aligned, the rest right."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = []
    for row in [header, *rows]:
        cells = [str(c).ljust(w) if i < left else str(c).rjust(w)
                 for i, (c, w) in enumerate(zip(row, widths))]
        lines.append('  '.join(cells).rstrip())
    return '\n'.join(lines)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]], right: int = 0) -> str:
    """A GitHub markdown table; the last ``right`` columns right-aligned (``--:``)."""
    rule = ['---'] * (len(header) - right) + ['--:'] * right
    lines = [header, rule, *rows]
    return '\n'.join('| ' + ' | '.join(str(c) for c in line) + ' |' for line in lines)


def kib(nbytes: Optional[float]) -> str:
    """Bytes as KiB with one decimal, ``'-'`` for None."""
    return '-' if nbytes is None else f'{nbytes / 1024:.1f}'


def times(ratio: Optional[float], digits: int = 1) -> str:
    """A ratio as ``'12.3x'``, ``'-'`` for None."""
    return '-' if ratio is None else f'{ratio:.{digits}f}x'
