"""benchmarks/bench_core.py on tiny shapes: every variant's row, the captured energy, the target verdicts
and the markdown file that holds the whole report."""
import sys

import pytest

from conftest import load_script

pytestmark = pytest.mark.usefixtures('single_thread')


def test_bench_core_reports_exact_warm_and_frozen_rows_and_writes_the_whole_file(tmp_path, monkeypatch):
    bench = load_script('benchmarks/bench_core.py')
    monkeypatch.setattr(bench, 'SHAPES', {'tiny conv': ((4, 48, 24, 24), (8, 48, 3, 3), 1, 1, 1)})
    monkeypatch.setattr(bench, 'accuracy_check', lambda device, thresholds, say: say('accuracy: skipped'))
    out = tmp_path / 'bench_core.md'
    monkeypatch.setattr(sys, 'argv', ['bench_core.py', '--eps', '0.7', '0.9', '--markdown', str(out)])
    bench.main()
    text = out.read_text()
    assert text.startswith('# Compression core') and '`python benchmarks/bench_core.py --eps 0.7 0.9' in text
    labels = ('svd', 'hosvd', 'hosvd-warm', 'hosvd-frozen')
    rows = [line.split() for line in text.splitlines() if line.split()[:1] and line.split()[0] in labels
            and len(line.split()) > 10]
    assert [(r[0], r[1]) for r in rows] == [(m, e) for m in ('svd', 'hosvd', 'hosvd-warm', 'hosvd-frozen')
                                            for e in ('0.70', '0.90')]
    for row in rows:
        captured, eps = float(row[-1]), float(row[1])
        assert 0 < captured <= 1.0 + 1e-6
        if row[0] != 'hosvd-frozen':  # exact and warm meet eps per mode on this batch; frozen's ranks are fixed
            # each truncated mode leaves out at most 1 - eps of the energy
            assert captured >= 1 - (1 if row[0] == 'svd' else 4) * (1 - eps) - 1e-4, row
    # exact HOSVD finds the reference's ranks
    assert all('yes' in r for r in rows if r[0] in ('svd', 'hosvd'))
    for label in labels:
        assert any(line.strip().startswith(label + ' ') and line.rstrip().endswith(('met', 'missed'))
                   for line in text.splitlines()), label
