"""The check harness the smoke scripts share: run checks with timeouts, stream events, print one report.

Runs *inside the target environment*: standard library only, Python >= 3.8
syntax, and never imports envforge (the target need not have it). A script
imports it as a sibling module (`python .../torch_smoke.py` puts this
directory first on sys.path), inside a container too, where both files are
copied next to each other.

Protocol with envforge's runner (envforge/smoke/run.py):
- stderr carries progress events, one per line, each `@envforge-smoke ` + JSON:
  {"event": "start", "check": NAME, "timeout_s": T} and
  {"event": "end", "check": NAME, "result": {...}}. The runner enforces each
  check's timeout from outside (a hang in C code cannot be interrupted from
  Python), so a killed process still leaves the results it had streamed.
- stdout carries exactly one JSON report at the end. Everything the framework
  prints while the checks run (to sys.stdout or straight to file descriptor 1)
  is sent to stderr instead, so the report stays parseable.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import signal
import sys
import threading
import time
import traceback

SCHEMA = 1
EVENT_PREFIX = "@envforge-smoke "

# The order the checks run and are reported in (the numbering).
CHECKS = ("import", "devices", "kernels", "training", "mixed_precision", "determinism", "throughput", "distributed")
DEFAULT_TIMEOUT_S = {"import": 180.0, "distributed": 300.0}
OTHER_TIMEOUT_S = 120.0

# Training must cut the loss at least this much (final <= (1 - margin) * first).
LOSS_MARGIN = 0.5
TRAIN_STEPS = 40
DETERMINISM_STEPS = 8
# Relative error (max |x - ref| / max |ref|) allowed against the float64 CPU reference, with TF32 off.
KERNEL_RTOL = 1e-4


class Skipped(Exception):
    """A check that does not apply here (no GPU, not asked for, an earlier check failed)."""

    def __init__(self, detail: str, **data: object) -> None:
        super().__init__(detail)
        self.detail = detail
        self.data = data


class Failed(Exception):
    """A check that ran and found a problem."""

    def __init__(self, detail: str, **data: object) -> None:
        super().__init__(detail)
        self.detail = detail
        self.data = data


class CheckTimeout(Exception):
    pass


class Outcome:
    """What a passing check returns: a one-line detail, structured data, and warnings."""

    def __init__(self, detail: str, warnings: list[str] | None = None, **data: object) -> None:
        self.detail = detail
        self.data = data
        self.warnings = list(warnings or [])


def parse_args(framework: str, argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=f"{framework}_smoke", description=f"envforge smoke test for {framework}")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--steps", type=int, default=TRAIN_STEPS)
    parser.add_argument("--lr", type=float, default=None, help="learning rate (tests use an absurd one)")
    parser.add_argument("--skip", action="append", default=[], choices=CHECKS)
    parser.add_argument("--timeout", type=float, default=None, help="seconds per check (default: per check)")
    parser.add_argument("--distributed", action="store_true")
    parser.add_argument("--report-version", action="append", default=[], metavar="DIST",
                        help="also report this distribution's installed version (for envforge --expect)")
    parser.add_argument("--nproc", type=int, default=0, help="processes/replicas for --distributed on CPU")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)  # internal: a distributed worker
    return parser.parse_args(argv)


def check_timeout(name: str, override: float | None) -> float:
    return float(override) if override else DEFAULT_TIMEOUT_S.get(name, OTHER_TIMEOUT_S)


class Smoke:
    """Runs checks in order and collects the report; call finish() last."""

    def __init__(self, framework: str, args: argparse.Namespace) -> None:
        self.framework = framework
        self.args = args
        self.results: dict[str, dict] = {}
        self.info: dict[str, object] = {}
        self.started = time.perf_counter()
        # Keep the real stdout for the report; everything else written to fd 1 goes to stderr.
        sys.stdout.flush()
        self._report_fd = os.dup(1)
        os.dup2(2, 1)
        self._events = sys.stderr

    # -- events and results
    def event(self, **doc: object) -> None:
        self._events.write(EVENT_PREFIX + json.dumps(doc, default=str) + "\n")
        self._events.flush()

    def ok(self, name: str) -> bool:
        return self.results.get(name, {}).get("status") == "pass"

    def run(self, name: str, func, *, needs: tuple[str, ...] = ()) -> dict:
        """Run one check; returns its result ({name, status, detail, duration_s, data, warnings})."""
        timeout = check_timeout(name, self.args.timeout)
        result: dict = {"name": name, "status": "skip", "detail": "", "duration_s": 0.0, "data": {}, "warnings": []}
        missing = [n for n in needs if not self.ok(n)]
        if name in self.args.skip:
            result["detail"] = f"skipped (--skip {name})"
        elif missing:
            result["detail"] = f"not run: the {missing[0]} check did not pass"
        elif name == "distributed" and not self.args.distributed:
            result["detail"] = "not asked (pass --distributed)"
        else:
            self.event(event="start", check=name, timeout_s=timeout)
            start = time.perf_counter()
            try:
                with _alarm(timeout):
                    outcome = func()
                result.update(status="pass", detail=outcome.detail, data=outcome.data, warnings=outcome.warnings)
            except Skipped as exc:
                result.update(detail=exc.detail, data=exc.data)
            except Failed as exc:
                result.update(status="fail", detail=exc.detail, data=exc.data)
            except CheckTimeout:
                result.update(status="fail", detail=f"did not finish within {timeout:.0f} s (a hang is a failure)")
            except BaseException as exc:  # noqa: BLE001 - a crash in the framework is the finding
                if isinstance(exc, KeyboardInterrupt):
                    raise
                result.update(status="fail", detail=describe_exception(exc),
                              data={"traceback": traceback.format_exc(limit=8)[-3000:]})
            result["duration_s"] = round(time.perf_counter() - start, 4)
        result["data"] = _jsonable(result["data"])
        self.results[name] = result
        self.event(event="end", check=name, result=result)
        return result

    def run_all(self, state: object, checks: dict, before_each=None) -> int:
        """The order every framework runs: import, devices, then the rest (each needing devices); finish.

        `checks` maps each check name of CHECKS to `check(smoke, state)`; `before_each(name)`
        runs before each check after devices (torch sets its thread count per check).
        """
        self.run("import", lambda: checks["import"](self, state))
        self.run("devices", lambda: checks["devices"](self, state), needs=("import",))
        for name in CHECKS:
            if name in ("import", "devices"):
                continue
            if before_each is not None:
                before_each(name)
            self.run(name, lambda check=checks[name]: check(self, state), needs=("devices",))
        self.info["device"] = getattr(state, "device", None)
        return self.finish()

    def finish(self) -> int:
        report = {
            "schema": SCHEMA,
            "framework": self.framework,
            "python": platform.python_version(),
            "executable": sys.executable,
            "platform": platform.platform(terse=True),
            "device_requested": self.args.device,
            "info": _jsonable(self.info),
            "checks": [self.results[n] for n in CHECKS if n in self.results],
            "wall_s": round(time.perf_counter() - self.started, 3),
        }
        sys.stdout.flush()
        sys.stderr.flush()
        with os.fdopen(self._report_fd, "w") as out:
            out.write(json.dumps(report) + "\n")
        return 1 if any(r["status"] == "fail" for r in report["checks"]) else 0


class _alarm:
    """SIGALRM-based timeout for Python-level work on POSIX main threads; the runner's kill is the backstop."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.armed = (hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread())

    def __enter__(self) -> None:
        if self.armed:
            self.previous = signal.signal(signal.SIGALRM, self._fire)
            signal.setitimer(signal.ITIMER_REAL, self.seconds)

    def __exit__(self, *exc: object) -> None:
        if self.armed:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, self.previous)

    @staticmethod
    def _fire(signum: int, frame: object) -> None:
        raise CheckTimeout()


# --------------------------------------------------------------------------- helpers the scripts share


def describe_exception(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    first = next((line for line in text if line.strip()), "")
    return f"{type(exc).__name__}: {first[:500]}" if first else type(exc).__name__


# Messages the frameworks raise when determinism is on and an op has no deterministic implementation.
_NONDETERMINISTIC_PATTERNS = (
    # torch: "adaptive_avg_pool2d_backward_cuda does not have a deterministic implementation, but you set ..."
    re.compile(r"(\S+) does not have a deterministic implementation"),
    # tensorflow: "A deterministic GPU implementation of SparseSoftmaxXentWithLogitsOp is not currently available."
    re.compile(r"deterministic GPU implementation of (\S+?)(?: is|\.|,|$)"),
    # tensorflow: "Determinism is not yet supported in GPU for SparseTensorDenseMatMul."
    re.compile(r"Determinism is not yet supported (?:in|on) \w+ for (\S+?)\.?(?:\s|$)"),
    # tensorflow: "Random ops require a seed to be set when determinism is enabled ... op: RandomUniform"
    re.compile(r"when determinism is enabled.*?(?:op|Op|node)[ :]+'?([\w/]+)'?", re.S),
)


def nondeterministic_op(message: str) -> str | None:
    """The op a framework names in its 'no deterministic implementation' error, if it names one."""
    for pattern in _NONDETERMINISTIC_PATTERNS:
        match = pattern.search(message)
        if match:
            return match.group(1).strip("'\"`")
    return None


def relative_error(values: list[float], reference: list[float]) -> float:
    """max |x - ref| / max |ref| over flat lists (inf when any value is not finite)."""
    scale = max((abs(r) for r in reference), default=0.0) or 1.0
    worst = 0.0
    for x, r in zip(values, reference):
        if not math.isfinite(x):
            return math.inf
        worst = max(worst, abs(x - r))
    return worst / scale


def kernel_failures(device: object, errors: "dict[str, float]") -> "list[str]":
    """The kernels check's complaints for one device: each op whose relative error exceeds KERNEL_RTOL."""
    return [f"{op} on {device} is off by {err:.2g} (relative; allowed {KERNEL_RTOL:g})"
            for op, err in errors.items() if not err <= KERNEL_RTOL]


def kernel_outcome(per_device: "dict[str, dict[str, float]]", failures: "list[str]", library: str,
                   devices: "list[str]", **extra: object) -> Outcome:
    """The kernels check's verdict: matmul and conv2d on every device against the float64 CPU reference."""
    data = {"relative_error": per_device, "tolerance": KERNEL_RTOL, **extra}
    if failures:
        raise Failed("; ".join(failures), **data)
    worst = max(max(e.values()) for e in per_device.values())
    return Outcome(f"matmul and conv2d ({library}) on {', '.join(devices)} match the float64 CPU "
                   f"reference (max relative error {worst:.1g})", **data)


def training_outcome(losses: "list[float]", steps: int, seconds: float, device: str, **extra: object) -> Outcome:
    """loss_fell, with the training speed in steps/s."""
    outcome = loss_fell(losses, steps)
    rate = (steps - 1) / seconds if seconds > 0 else float("inf")
    outcome.detail += f", {rate:.0f} steps/s on {device}"
    outcome.data.update(steps_per_s=round(rate, 1), device=device, **extra)
    return outcome


def one_step_outcome(step: str, device: object, value: float, finite: bool, changed: bool,
                     data: "dict[str, object]", failed_as: str = "") -> Outcome:
    """The mixed-precision check's verdict on one training step: a finite loss and updated weights."""
    failed_as = failed_as or step
    if not math.isfinite(value) or not finite:
        raise Failed(f"{failed_as} on {device} gave loss {value} (not finite)", **data)
    if not changed:
        raise Failed(f"{failed_as} on {device} did not update the weights", **data)
    return Outcome(f"one {step} on {device}: loss {value:.4g}, weights updated", **data)


def same_losses(runs: "list[list[float]]", device: str, switches: "list[str]", hint: str = "") -> Outcome:
    """The determinism verdict every framework gives: two seeded runs, step by step identical."""
    first, second = runs
    data = {"losses": runs, "switches": switches, "device": device}
    for step, (x, y) in enumerate(zip(first, second)):
        if x != y:
            raise Failed(f"two seeded runs differ at step {step + 1}: loss {x!r} vs {y!r}{hint}", **data)
    return Outcome(f"two seeded runs of {len(first)} steps on {device} gave identical losses", **data)


def tflops(n: int, iters: int, seconds: float) -> float:
    """TFLOP/s of `iters` square n x n matmuls (2 n^3 flops each) in `seconds`."""
    return round(2 * n ** 3 * iters / seconds / 1e12, 4)


def loss_fell(losses: list[float], steps: int, margin: float = LOSS_MARGIN) -> Outcome:
    """Judge a training curve: every loss finite, and the last at most (1 - margin) x the first."""
    if not losses:
        raise Failed("no loss was recorded")
    bad = next((i for i, loss in enumerate(losses) if not math.isfinite(loss)), None)
    first, last = losses[0], losses[-1]
    data = {"first_loss": first, "last_loss": last, "steps": steps, "margin": margin, "losses": losses}
    if bad is not None:
        raise Failed(f"loss became {losses[bad]} at step {bad + 1} of {steps} (diverged)", **data)
    if not last <= (1.0 - margin) * first:
        if last > first:
            change = f"rose {last / first:.3g}x" if first > 0 else "rose"
        else:
            change = f"-{(1 - last / first):.0%}" if first > 0 else "no fall"
        raise Failed(f"loss {first:.4g} -> {last:.4g} in {steps} steps ({change}); it must fall by >= {margin:.0%}",
                     **data)
    outcome = Outcome(f"loss {first:.4g} -> {last:.4g} in {steps} steps (-{(1 - last / first):.0%}, "
                      f"needs -{margin:.0%})")
    outcome.data = data
    return outcome


def timed_rate(step, min_seconds: float, max_iters: int, sync=None) -> tuple[int, float]:
    """Call step() until min_seconds have passed (at least twice, at most max_iters); returns (iters, seconds)."""
    iters = 0
    start = time.perf_counter()
    elapsed = 0.0
    while iters < max_iters and (iters < 2 or elapsed < min_seconds):
        step()
        iters += 1
        if sync is not None and (elapsed >= min_seconds * 0.5 or iters % 8 == 0):
            sync()
        elapsed = time.perf_counter() - start
    if sync is not None:
        sync()
    return iters, time.perf_counter() - start


def throughput_detail(rows: "list[dict]") -> str:
    """`matmul fp32 19.1 TFLOP/s, bf16 280 TFLOP/s on cuda:0; ...` from the rows a throughput check measured."""
    parts = []
    for row in rows:
        rates = [f"{key[:-len('_tflops')]} {value:.3g} TFLOP/s" for key, value in row.items()
                 if key.endswith("_tflops")]
        parts.append(f"{', '.join(rates)} on {row['device']}")
    return "matmul " + "; ".join(parts)


def package_versions(names: tuple[str, ...]) -> dict[str, str]:
    """Installed versions of the given distributions (those present), without importing them."""
    try:
        from importlib import metadata
    except ImportError:  # Python < 3.8
        return {}
    found = {}
    for name in names:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


def cpu_threads() -> int:
    """Threads a process may use: the CPUs it is allowed on (cgroup/affinity), not the machine's count."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def _jsonable(value: object) -> object:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no nan/inf
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)
