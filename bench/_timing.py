"""Side-by-side timing of whole commands: run interleaved, report median/min wall time and peak RSS per command."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from typing import Sequence


def run_once(cmd: Sequence[str], env: dict[str, str] | None = None) -> tuple[float, int]:
    """Wall seconds and peak RSS (KiB) of one run; os.wait4 gives the child's own rusage."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    stderr = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    if proc.returncode not in (0, 1):
        sys.exit(f"{' '.join(cmd)} failed ({proc.returncode}): {stderr[-800:]}")
    return elapsed, usage.ru_maxrss


def compare(rows: Sequence[tuple[str, Sequence[str]]], runs: int, baseline: str,
            env: dict[str, str] | None = None) -> dict[str, float]:
    """Interleave the commands round-robin so machine noise hits all alike; print times, RSS and ratios."""
    times: dict[str, list[float]] = {name: [] for name, _ in rows}
    rss: dict[str, int] = {name: 0 for name, _ in rows}
    env = dict(os.environ if env is None else env)
    for _ in range(runs):
        for name, cmd in rows:
            elapsed, peak = run_once(cmd, env)
            times[name].append(elapsed)
            rss[name] = max(rss[name], peak)
    base = statistics.median(times[baseline])
    print(f"{'command':<40} {'median ms':>10} {'min ms':>8} {'peak RSS MiB':>13} {'x ' + baseline:>18}")
    medians = {}
    for name, _ in rows:
        med = statistics.median(times[name])
        medians[name] = med
        print(f"{name:<40} {med * 1000:>10.1f} {min(times[name]) * 1000:>8.1f} {rss[name] / 1024:>13.1f} "
              f"{med / base:>18.2f}")
    print(f"({runs} interleaved runs of each)")
    return medians
