"""Run the smoke scripts inside a target environment, with a timeout per check, and judge their reports.

A target is an interpreter (`--python PATH`, or the one running envforge) or an image
(`--image TAG`, run through the docker SDK). The framework scripts next to this file run
there; envforge reads the progress events they stream on stderr, kills a run whose current
check outlives its timeout, and reads the one JSON report they print on stdout. A run that
dies or hangs still yields a report: the checks that finished, the one that did not
(failed, with the cause and the last lines the process printed), and the rest (skipped).
"""

from __future__ import annotations

import io
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import tarfile
import threading
import time
from collections import deque
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterator, Literal, Mapping, Protocol, Sequence

from packaging.utils import canonicalize_name

from .. import proc
from ..errors import BadInput, EnvironmentFailure, SmokeFailed, ToolNotFound
from ..lock.pip import MANIFEST as LOCK_MANIFEST  # what `envforge lock` writes beside the lock files
from ..models import HostFacts
from . import _harness, judge

HERE = Path(__file__).resolve().parent
SCRIPTS = {"torch": "torch_smoke.py", "tensorflow": "tf_smoke.py", "jax": "jax_smoke.py"}
FRAMEWORKS = tuple(SCRIPTS)  # probing order, and the order several frameworks are run in
HARNESS = "_harness.py"
ANY = ""  # the key of expectations that apply to every framework's run
CONTAINER_DIR = "/tmp/envforge-smoke"

START_TIMEOUT_S = 60.0  # interpreter start-up, and the gap between two checks
GRACE_S = 15.0  # past a check's own timeout (the script's alarm fires first for Python-level hangs)
PROBE_TIMEOUT_S = 60.0

Device = Literal["auto", "cpu", "cuda"]

# Which of the frameworks the target can import, without importing them (that would take seconds).
PROBE_SOURCE = (
    "import importlib.util, json, sys\n"
    "print(json.dumps({'python': '%d.%d.%d' % sys.version_info[:3], 'executable': sys.executable,\n"
    f"  'importable': [n for n in {list(FRAMEWORKS)!r} if importlib.util.find_spec(n) is not None]}}))\n"
)


@dataclass(frozen=True)
class SmokeRequest:
    python: str | None = None  # --python: a path (or name on PATH); inside the image with --image
    image: str | None = None
    frameworks: tuple[str, ...] = ()  # empty: every framework the target can import
    device: Device = "auto"
    expectations: Mapping[str, judge.Expectations] = field(default_factory=dict)  # per framework
    distributed: bool = False
    nproc: int = 0
    skip: tuple[str, ...] = ()
    timeout_s: float | None = None
    steps: int | None = None
    lr: float | None = None  # test-only: an absurd learning rate makes training diverge
    gpus: bool = True  # --image: request the host's NVIDIA GPUs (False: the daemon has no NVIDIA runtime)

    def script_args(self, framework: str) -> list[str]:
        args = ["--device", self.device]
        for name in self.skip:
            args += ["--skip", name]
        if self.distributed:
            args.append("--distributed")
        if self.nproc:
            args += ["--nproc", str(self.nproc)]
        if self.timeout_s:
            args += ["--timeout", str(self.timeout_s)]
        if self.steps:
            args += ["--steps", str(self.steps)]
        if self.lr is not None:
            args += ["--lr", repr(self.lr)]
        expected = self.expectations.get(framework) or self.expectations.get(ANY)
        for name in expected.names() if expected else ():
            args += ["--report-version", name]
        return args


@dataclass
class FrameworkRun:
    framework: str
    report: dict[str, Any]
    stderr_tail: list[str]
    salvaged: bool = False  # the run hung or died: the report was pieced together from its events

    @property
    def ok(self) -> bool:
        return not judge.failed(self.report["checks"])

    def to_json(self) -> dict[str, Any]:
        info = self.report.get("info") or {}
        doc: dict[str, Any] = {
            "framework": self.framework,
            "ok": self.ok,
            "version": info.get("version"),
            "ran_on": info.get("device"),
            "cuda": info.get("cuda"),
            "cudnn": info.get("cudnn"),
            "python": self.report.get("python"),
            "checks": self.report["checks"],
            "wall_s": self.report.get("wall_s"),
        }
        if not self.ok and self.stderr_tail:
            doc["stderr_tail"] = self.stderr_tail
        return doc


@dataclass
class SmokeResult:
    target: dict[str, Any]
    device: Device
    host: HostFacts
    runs: list[FrameworkRun]
    notes: list[str]
    wall_s: float = 0.0

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.runs)

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "target": self.target,
            "device": self.device,
            "host": {"source": self.host.source, "driver": self.host.driver,
                     "gpus": [g.to_json() for g in self.host.gpus]},
            "notes": self.notes,
            "frameworks": [r.to_json() for r in self.runs],
            "wall_s": round(self.wall_s, 3),
        }


# Called with (framework, event, check): event "start" (check = {"name", "timeout_s"}) or "end" (the judged result).
Progress = Callable[[str, str, dict], None]


# --------------------------------------------------------------------------- targets


class Process(Protocol):
    def stderr_lines(self) -> Iterator[str]: ...
    def kill(self) -> None: ...
    def finish(self) -> tuple[int | None, str]: ...  # exit status and all of stdout


class Launcher(Protocol):
    def describe(self) -> dict[str, Any]: ...
    def probe(self) -> dict[str, Any]: ...
    def start(self, script: str, args: Sequence[str]) -> Process: ...


class InterpreterLauncher:
    """A Python interpreter on this machine: a venv's, a conda env's, or the one running envforge."""

    def __init__(self, python: str | None) -> None:
        self.python = locate_python(python)

    def describe(self) -> dict[str, Any]:
        return {"kind": "python", "python": self.python}

    def probe(self) -> dict[str, Any]:
        hint = f"give --python the path of an existing interpreter (or venv) instead of {self.python}"
        completed = proc.run([self.python, "-c", PROBE_SOURCE], tool=f"python ({self.python})", install_hint=hint,
                             env=_script_env(), timeout=PROBE_TIMEOUT_S)
        if completed.returncode != 0:
            raise EnvironmentFailure(f"{self.python} does not start: {_last_line(completed.stderr)}", fix=hint)
        return _parse_probe(completed.stdout, self.python)

    def start(self, script: str | Path, args: Sequence[str]) -> Process:
        """Start a script (a file name next to this module, or a path) in the interpreter."""
        # Popen rather than proc.run: the run is read while it goes (progress, per-check timeouts).
        popen = subprocess.Popen([self.python, str(HERE / script), *args], stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, env=_script_env(), start_new_session=True)
        return _LocalProcess(popen)


def locate_python(python: str | None) -> str:
    """--python PATH (an interpreter, a venv directory, or a name on PATH) -> an executable path."""
    if not python:
        return sys.executable
    path = Path(python).expanduser()
    if path.is_dir():
        for candidate in (path / "bin" / "python", path / "Scripts" / "python.exe"):
            if candidate.exists():
                return str(candidate)
    if path.is_file() and os.access(path, os.X_OK):
        return str(path)
    if os.sep not in python:
        found = shutil.which(python)
        if found:
            return found
    raise ToolNotFound(f"no Python interpreter at {python}",
                       fix="give --python the path of an interpreter (.venv/bin/python) or of a virtual environment")


def _script_env() -> dict[str, str]:
    env = dict(os.environ)
    # The scripts live in envforge's package directory: no bytecode is written next to them.
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env.pop("PYTHONPATH", None)  # envforge's own path must not leak into the target environment
    return env


class _LocalProcess:
    def __init__(self, popen: subprocess.Popen[bytes]) -> None:
        self.popen = popen
        self._stdout: list[bytes] = []
        # stdout is drained by a thread so a large report never blocks the script on a full pipe.
        self._reader = threading.Thread(target=self._drain, daemon=True)
        self._reader.start()

    def _drain(self) -> None:
        assert self.popen.stdout is not None
        self._stdout.append(self.popen.stdout.read())

    def stderr_lines(self) -> Iterator[str]:
        assert self.popen.stderr is not None
        for raw in self.popen.stderr:
            yield raw.decode(errors="replace").rstrip("\n")

    def kill(self) -> None:
        try:  # the whole session: torchrun's ranks too
            os.killpg(self.popen.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    def finish(self) -> tuple[int | None, str]:
        code = self.popen.wait()
        self._reader.join(timeout=10)
        return code, b"".join(self._stdout).decode(errors="replace")


class DockerLauncher:
    """A container from an image, through the docker SDK; GPUs requested when the host probe found NVIDIA GPUs."""

    def __init__(self, image: str, python: str | None, host: HostFacts, gpus: bool = True) -> None:
        from ..docker_build import client

        self.client = client()  # the one connected client of this process (envforge build made it already)
        import docker  # type: ignore[import-untyped]  # importable: client() needed it

        self.docker = docker
        self.python = python or "python"
        try:
            self.image = self.client.images.get(image)
        except docker.errors.ImageNotFound:
            raise EnvironmentFailure(f"image {image} is not on this machine",
                                     fix=f"docker pull {image}, or build it with envforge build") from None
        except docker.errors.APIError as exc:
            raise EnvironmentFailure(f"the Docker daemon refused to look up {image}: {exc.explanation or exc}"
                                     ) from None
        self.tag = image
        nvidia = [g for g in host.gpus if g.vendor == "nvidia"] if gpus else []
        self.gpu_request = gpu_device_requests(docker, nvidia) if nvidia else []
        self.gpu_note = (f"requested {len(nvidia)} GPU(s) for the container" if nvidia else
                         "the host probe found no NVIDIA GPU: the container runs without GPUs" if gpus else
                         "the Docker daemon has no NVIDIA runtime: the container runs without GPUs")

    def describe(self) -> dict[str, Any]:
        return {"kind": "image", "image": self.tag, "image_id": self.image.id, "python": self.python,
                "gpus_requested": bool(self.gpu_request), "gpu_note": self.gpu_note}

    def labels(self) -> dict[str, str]:
        return dict(self.image.labels or {})

    def _create(self, command: list[str]) -> Any:
        try:
            return self.client.containers.create(
                self.tag, command=command, device_requests=self.gpu_request or None,
                environment={"PYTHONDONTWRITEBYTECODE": "1"},
                shm_size="1g",  # NCCL and DataLoader workers need more than Docker's 64 MB /dev/shm
                labels={"dev.envforge.smoke": "1"},
            )
        except self.docker.errors.APIError as exc:
            raise EnvironmentFailure(f"cannot create a container from {self.tag}: {exc.explanation or exc}",
                                     fix=self._gpu_fix(exc)) from None

    def _gpu_fix(self, exc: Exception) -> str | None:
        if self.gpu_request and "gpu" in str(exc).lower():
            return ("install the NVIDIA Container Toolkit and restart dockerd "
                    "(nvidia-ctk runtime configure --runtime=docker)")
        return None

    def _start(self, container: Any) -> None:
        try:
            container.start()
        except self.docker.errors.APIError as exc:
            container.remove(force=True)
            raise EnvironmentFailure(f"cannot start {self.python} in {self.tag}: {exc.explanation or exc}",
                                     fix=self._gpu_fix(exc) or "pass --python with the interpreter's path inside "
                                     "the image (e.g. --python /opt/venv/bin/python)") from None

    def probe(self) -> dict[str, Any]:
        container = self._create([self.python, "-c", PROBE_SOURCE])
        self._start(container)
        try:
            status = container.wait(timeout=PROBE_TIMEOUT_S)
            stdout = container.logs(stdout=True, stderr=False).decode(errors="replace")
            stderr = container.logs(stdout=False, stderr=True).decode(errors="replace")
        finally:
            container.remove(force=True)
        if status.get("StatusCode") != 0:
            raise EnvironmentFailure(f"{self.python} does not start in {self.tag}: {_last_line(stderr)}",
                                     fix="pass --python with the interpreter's path inside the image")
        return _parse_probe(stdout, f"{self.python} in {self.tag}")

    def start(self, script: str, args: Sequence[str]) -> Process:
        container = self._create([self.python, f"{CONTAINER_DIR}/{script}", *args])
        container.put_archive("/tmp", scripts_tar(script))
        self._start(container)
        return _ContainerProcess(container)


def gpu_device_requests(docker: Any, gpus: Sequence[Any]) -> list[Any]:
    """`docker run --gpus` as the SDK says it: the probe's GPUs by UUID (so CUDA_VISIBLE_DEVICES carries over)."""
    uuids = [g.uuid for g in gpus]
    if all(uuids):
        return [docker.types.DeviceRequest(device_ids=uuids, capabilities=[["gpu"]])]
    return [docker.types.DeviceRequest(count=-1, capabilities=[["gpu"]])]


def scripts_tar(script: str) -> bytes:
    """A tar of the script and the harness under envforge-smoke/, for put_archive into /tmp."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        folder = tarfile.TarInfo(Path(CONTAINER_DIR).name)
        folder.type, folder.mode = tarfile.DIRTYPE, 0o755
        tar.addfile(folder)
        for name in (HARNESS, script):
            data = (HERE / name).read_bytes()
            info = tarfile.TarInfo(f"{folder.name}/{name}")
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


class _ContainerProcess:
    def __init__(self, container: Any) -> None:
        self.container = container

    def stderr_lines(self) -> Iterator[str]:
        pending = b""
        for chunk in self.container.logs(stream=True, follow=True, stdout=False, stderr=True):
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                yield line.decode(errors="replace")
        if pending:
            yield pending.decode(errors="replace")

    def kill(self) -> None:
        try:
            self.container.kill()
        except Exception:  # noqa: BLE001 - already gone
            pass

    def finish(self) -> tuple[int | None, str]:
        try:
            status = self.container.wait(timeout=60)
            stdout = self.container.logs(stdout=True, stderr=False).decode(errors="replace")
            return status.get("StatusCode"), stdout
        finally:
            self.container.remove(force=True)


def _parse_probe(stdout: str, where: str) -> dict[str, Any]:
    try:
        doc = json.loads(stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        raise EnvironmentFailure(f"{where} answered the probe with {stdout[-300:]!r}, not JSON") from None
    return dict(doc)


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:500] if lines else "(no output)"


# --------------------------------------------------------------------------- one script, watched


_EOF = object()


def watch(process: Process, framework: str, on_result: Callable[[dict], None],
          progress: Progress | None = None) -> FrameworkRun:
    """Read a script's events until it exits or a check outlives its timeout; always returns a report.

    Each check's result goes through on_result (the judgement) as it arrives, then to progress.
    """
    lines: queue.Queue[object] = queue.Queue()

    def pump() -> None:
        try:
            for line in process.stderr_lines():
                lines.put(line)
        finally:
            lines.put(_EOF)

    threading.Thread(target=pump, daemon=True).start()
    results: dict[str, dict] = {}
    tail: deque[str] = deque(maxlen=40)
    current: dict | None = None
    deadline = time.monotonic() + START_TIMEOUT_S
    hung = False
    while True:
        try:
            item = lines.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            hung = True
            process.kill()
            break
        if item is _EOF:
            break
        line = str(item)
        if not line.startswith(_harness.EVENT_PREFIX):
            tail.append(line)
            continue
        try:
            event = json.loads(line[len(_harness.EVENT_PREFIX):])
        except ValueError:
            tail.append(line)
            continue
        if event.get("event") == "start":
            current = {"name": event["check"], "timeout_s": float(event.get("timeout_s") or START_TIMEOUT_S)}
            deadline = time.monotonic() + current["timeout_s"] + GRACE_S
            current["started"] = time.monotonic()
            if progress:
                progress(framework, "start", current)
        elif event.get("event") == "end":
            result = event["result"]
            result.setdefault("warnings", [])
            on_result(result)
            results[event["check"]] = result
            current = None
            deadline = time.monotonic() + START_TIMEOUT_S
            if progress:
                progress(framework, "end", result)
    code, stdout = process.finish()
    report = None if hung else _read_report(stdout)
    if report is None:
        report = _salvage(framework, results, current, code, hung, list(tail))
        for check in report["checks"]:
            if check["name"] not in results and progress:
                progress(framework, "end", check)
        return FrameworkRun(framework, report, list(tail)[-15:], salvaged=True)
    report["checks"] = [results.get(c["name"], c) for c in report["checks"]]  # the judged ones
    return FrameworkRun(framework, report, list(tail)[-15:])


def _read_report(stdout: str) -> dict | None:
    for line in reversed(stdout.strip().splitlines()):
        try:
            doc = json.loads(line)
        except ValueError:
            continue
        if isinstance(doc, dict) and doc.get("schema") == _harness.SCHEMA:
            return doc
    return None


def _salvage(framework: str, results: dict[str, dict], current: dict | None, code: int | None, hung: bool,
             tail: list[str]) -> dict:
    """A report for a run that hung or died: finished checks as they were, the running one failed, the rest skipped."""
    checks = []
    last_words = "; ".join(line.strip() for line in tail[-3:] if line.strip())[-600:]
    if hung:
        cause = (f"no result within {current['timeout_s']:.0f} s (+{GRACE_S:.0f} s grace): hung, killed"
                 if current else f"the script did not start a check within {START_TIMEOUT_S:.0f} s: hung, killed")
    else:
        cause = f"the process died ({_exit_story(code)})"
    running = current["name"] if current else None
    blamed = False
    for name in _harness.CHECKS:
        if name in results:
            checks.append(results[name])
            continue
        if not blamed and (running is None or name == running):
            blamed = True
            detail = cause + (f"; last output: {last_words}" if last_words else "")
            duration = time.monotonic() - current["started"] if current else 0.0
            checks.append({"name": name, "status": "fail", "detail": detail, "duration_s": round(duration, 3),
                           "data": {"exit_status": code, "hung": hung}, "warnings": []})
        else:
            checks.append({"name": name, "status": "skip", "detail": f"not run: the {framework} smoke process "
                           f"{'hung' if hung else 'died'}", "duration_s": 0.0, "data": {}, "warnings": []})
    return {"schema": _harness.SCHEMA, "framework": framework, "checks": checks, "info": {}}


def _exit_story(code: int | None) -> str:
    if code is None:
        return "no exit status"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    if code > 128:  # a shell or container reports 128 + signal
        try:
            return f"exit status {code}: {signal.Signals(code - 128).name}"
        except ValueError:
            pass
    return f"exit status {code}"


# --------------------------------------------------------------------------- the whole run


def smoke(request: SmokeRequest, host: HostFacts, gpu_lookup: Callable[[str], Any],
          progress: Progress | None = None) -> SmokeResult:
    """Run each framework's script in the target and judge it. Raises SmokeFailed/EnvironmentFailure before any."""
    started = time.perf_counter()
    if request.device == "cuda" and not host.gpus:  # (ROCm builds of torch answer to "cuda" too)
        story = judge.probe_story(host)
        fixes = "; ".join(n.fix for n in host.notes if n.fix)
        raise SmokeFailed(f"--device cuda, but the host probe found no GPU ({story})",
                          fix=fixes or "run on a machine with an NVIDIA GPU and driver, or use --device auto")
    launcher, request, frameworks, probed = _target(request, host)
    notes: list[str] = [launcher.gpu_note] if isinstance(launcher, DockerLauncher) else []

    def on_result(framework: str) -> Callable[[dict], None]:
        expected = request.expectations.get(framework) or request.expectations.get(ANY) or judge.Expectations()

        def judged(check: dict) -> None:
            for note in judge.judge_check(check, framework, host=host, device=request.device,
                                          expectations=expected, gpu_lookup=gpu_lookup):
                if note not in notes:
                    notes.append(note)

        return judged

    runs = [watch(launcher.start(SCRIPTS[name], request.script_args(name)), name, on_result(name), progress)
            for name in frameworks]
    reported = next((r.report for r in runs if r.report.get("python")), {})
    target = {**launcher.describe(), "python_version": probed.get("python") or reported.get("python"),
              "executable": probed.get("executable") or reported.get("executable")}
    return SmokeResult(target, request.device, host, runs, notes, time.perf_counter() - started)


def _target(request: SmokeRequest, host: HostFacts) -> tuple[Launcher, SmokeRequest, list[str], dict[str, Any]]:
    """The launcher, the request with an image's label expectations, the frameworks to run, the probe's answer."""
    launcher: Launcher
    # Named ones, else the expected ones (they must be there), else what an image's labels or a probe find.
    frameworks = list(request.frameworks) or [f for f in FRAMEWORKS if f in request.expectations]
    probed: dict[str, Any] = {}
    if request.image:
        docker_launcher = DockerLauncher(request.image, request.python, host, gpus=request.gpus)
        launcher = docker_launcher
        labels = docker_launcher.labels()
        request = replace(request, expectations=_with_image_labels(request.expectations, labels, request.image))
        if not frameworks and labels.get("dev.envforge.framework") in SCRIPTS:
            # An image envforge built says what it holds: no probe container (each costs seconds).
            frameworks = [labels["dev.envforge.framework"]]
    else:
        launcher = InterpreterLauncher(request.python)
        probed = launcher.probe()  # cheap here, and tells a broken interpreter (exit 3) from a broken framework
    if not frameworks:
        probed = probed or launcher.probe()
        frameworks = [f for f in FRAMEWORKS if f in probed.get("importable", [])]
        if not frameworks:
            raise SmokeFailed(f"none of {', '.join(FRAMEWORKS)} is importable in {probed.get('executable')}",
                              fix="install a framework there (envforge lock shows which build), or pass --framework "
                              "to see its import error")
    return launcher, request, frameworks, probed


def _with_image_labels(expectations: Mapping[str, judge.Expectations], labels: Mapping[str, str],
                       image: str) -> Mapping[str, judge.Expectations]:
    """An image built by envforge names its framework build in labels: expect it, unless told otherwise."""
    framework, version = labels.get("dev.envforge.framework"), labels.get("dev.envforge.version")
    if not framework or not version or framework in expectations:
        return expectations
    found = judge.parse_expect([f"{framework}=={version}"])
    return {**expectations, framework: judge.Expectations(found.groups, f"label of {image}")}


def expectations(expect: Sequence[str], lock_dir: str | None) -> dict[str, judge.Expectations]:
    """Check 1's requirements per framework, from --expect and --lock DIR (DIR/envforge.lock.json).

    A requirement on a framework applies to that framework's run, any other (a companion, numpy)
    to every run (key ANY). A framework named here is run even when the target cannot import it:
    what is expected must be there.
    """
    parsed = judge.parse_expect(expect)
    requirements = parsed.groups[0] if parsed.groups else ()
    others = tuple(r for r in requirements if canonicalize_name(r.name) not in SCRIPTS)
    found: dict[str, judge.Expectations] = {ANY: judge.Expectations((others,))} if others else {}
    for name in FRAMEWORKS:
        group = tuple(r for r in requirements if canonicalize_name(r.name) == name)
        if group:
            found[name] = judge.Expectations((group + others,))
    if lock_dir:
        manifest = _read_lock(Path(lock_dir))
        for name in FRAMEWORKS:
            locked = judge.expectations_from_lock(manifest, name, str(Path(lock_dir) / LOCK_MANIFEST))
            if locked.groups:
                found[name] = judge.merge(found.get(name, found.get(ANY, judge.Expectations())), locked)
    return found


def _read_lock(directory: Path) -> dict[str, Any]:
    path = directory / LOCK_MANIFEST
    try:
        return dict(json.loads(path.read_text(encoding="utf-8")))
    except FileNotFoundError:
        raise BadInput(f"--lock {directory}: no {LOCK_MANIFEST} there",
                       fix="give the directory `envforge lock -o DIR` wrote") from None
    except ValueError as exc:
        raise BadInput(f"{path} is not valid JSON: {exc}") from None
