"""The reap benchmark runs as docs/scaling.md says, on a small lab, and its figures add up."""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_bench_reap_prints_one_row_per_combination_and_counts_no_failed_node():
    cmd = [sys.executable, "-m", "benchmarks.bench_reap", "--nodes", "2", "--endpoints", "3",
           "--forks", "2", "--strategy", "linear,free", "--pipelining", "on", "--converge-runs", "2"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [line.split() for line in proc.stdout.splitlines() if line.split()[:1] == ["2"]]
    assert [row[2] for row in rows] == ["linear", "free"], proc.stdout
    for row in rows:
        wall, controller, modules, lab, requests, failed = map(float, row[4:10])
        assert wall > 0 and controller > 0 and modules > 0 and lab >= 0
        assert requests == 5.0  # a converged run: 5 requests per node
        assert failed == 0
    assert "rc " not in proc.stderr  # every run succeeded
