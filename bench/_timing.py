"""Side-by-side timing of whole commands: each command run N times interleaved, median wall and peak RSS."""

from __future__ import annotations

import os
import resource
import statistics
import subprocess
import sys
import time
from typing import Sequence


def measure(cmd: Sequence[str], runs: int, env: dict[str, str] | None = None) -> tuple[float, float, int]:
    """Returns (median seconds, min seconds, peak RSS KiB of the children) over `runs` runs."""
    times = []
    peak = 0
    for _ in range(runs):
        before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        start = time.perf_counter()
        proc = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
        times.append(time.perf_counter() - start)
        if proc.returncode not in (0, 1):
            sys.exit(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.decode()[-500:]}")
        peak = max(peak, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, before)
    return statistics.median(times), min(times), peak


def compare(rows: Sequence[tuple[str, Sequence[str]]], runs: int, baseline: str) -> None:
    """Interleave the commands round-robin so machine noise hits all of them alike; print a table with ratios."""
    results: dict[str, list[float]] = {name: [] for name, _ in rows}
    rss: dict[str, int] = {name: 0 for name, _ in rows}
    env = dict(os.environ)
    for _ in range(runs):
        for name, cmd in rows:
            median, _, peak = measure(cmd, 1, env)
            results[name].append(median)
            rss[name] = max(rss[name], peak)
    base = statistics.median(results[baseline])
    print(f"{'command':<34} {'median ms':>10} {'min ms':>8} {'x ' + baseline:>16}")
    for name, _ in rows:
        med = statistics.median(results[name])
        print(f"{name:<34} {med * 1000:>10.1f} {min(results[name]) * 1000:>8.1f} {med / base:>16.2f}")
    print(f"({runs} interleaved runs each; peak RSS of children is cumulative across runs, so not reported per row)")
