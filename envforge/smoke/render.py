"""Human text for `envforge smoke`: a line per check as it finishes, then the verdict."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .run import FrameworkRun, SmokeResult

STATUS = {"pass": "pass", "fail": "FAIL", "skip": "skip"}
WHERE = {"cuda": "GPU", "cpu": "CPU"}


def check_line(check: dict) -> str:
    """`  pass  training         loss 0.71 -> 0.0001 in 40 steps ...  (1.14 s)`, with warnings and the fix below."""
    timing = f"  ({check.get('duration_s') or 0.0:.2f} s)" if check["status"] != "skip" else ""
    lines = [f"  {STATUS.get(check['status'], check['status']):<4}  {check['name']:<15}  {check['detail']}{timing}"]
    lines += [f"        warning: {w}" for w in check.get("warnings") or []]
    if check["status"] == "fail" and check.get("fix"):
        lines.append(f"        fix: {check['fix']}")
    return "\n".join(lines)


def _ran(run: FrameworkRun) -> str:
    info = run.report.get("info") or {}
    return f"{run.framework} {info.get('version') or '(version unknown)'} on {WHERE.get(str(info.get('device')), '?')}"


def verdict(result: SmokeResult) -> str:
    lines = [f"note: {note}" for note in result.notes]
    for run in result.runs:
        if run.salvaged and run.stderr_tail:
            lines.append(f"last output of the {run.framework} run:")
            lines += [f"  | {line}" for line in run.stderr_tail[-8:]]
    failures = [f"{run.framework} {check['name']}" for run in result.runs for check in run.report["checks"]
                if check["status"] == "fail"]
    if result.ok:
        lines.append(f"verdict: PASS: {', '.join(_ran(r) for r in result.runs)} ({result.wall_s:.1f} s)")
    else:
        lines.append(f"verdict: FAIL: {len(failures)} check(s) failed: {', '.join(failures)} ({result.wall_s:.1f} s)")
    return "\n".join(lines)
