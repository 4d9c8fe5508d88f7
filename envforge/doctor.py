"""`envforge doctor`: a new machine's hardware, the active environment's frameworks, each problem with its fix,
and the exact `envforge lock` command that gives this machine a working environment.

Installed frameworks are read from their installed metadata (dist-info, torch/version.py,
tensorflow's build_info.py) by the environment's own interpreter, in a subprocess that
imports no framework. `--smoke` then imports each one and runs a tiny computation, also
in a subprocess, so a crashing import cannot take envforge down.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from .check import ERROR, TORCH_COMPANIONS, WARNING, _is_newer
from .resolve import supports_python
from .errors import EnvironmentFailure
from .matrix import Matrix
from .models import BuildRow, HostFacts, ReleaseRow, Request
from .resolve import resolve

SUBPROCESS_TIMEOUT_S = 120

# Runs under the inspected interpreter: standard library only, imports no framework.
INVENTORY_SCRIPT = r"""
import json, re, sys, sysconfig
import importlib.metadata as md
WANTED = re.compile(r"^(torch|torchvision|torchaudio|tensorflow(-cpu|-gpu|-intel)?|jax|jaxlib|jax-cuda\d+-(plugin|pjrt)|nvidia-[a-z0-9-]+)$")
def canon(name):
    return re.sub(r"[-_.]+", "-", name).lower()
def read(dist, path):
    try:
        return dist.locate_file(path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
out = {"python": "%d.%d.%d" % sys.version_info[:3], "executable": sys.executable, "prefix": sys.prefix,
       "platform": sysconfig.get_platform(), "dists": {}}
for dist in md.distributions():
    name = canon(dist.metadata["Name"] or "")
    if not WANTED.match(name) or name in out["dists"]:
        continue
    info = {"version": dist.version, "extras": sorted(dist.metadata.get_all("Provides-Extra") or [])}
    if name == "torch":
        text = read(dist, "torch/version.py")
        m = re.search(r"^cuda\s*(?::[^=]*)?=\s*['\"]([^'\"]+)['\"]", text, re.M)
        info["cuda"] = m.group(1) if m else None
        m = re.search(r"^hip\s*(?::[^=]*)?=\s*['\"]([^'\"]+)['\"]", text, re.M)
        info["hip"] = m.group(1) if m else None
    elif name.startswith("tensorflow"):
        text = read(dist, "tensorflow/python/platform/build_info.py")
        m = re.search(r"['\"]cuda_version['\"]\s*,\s*['\"]([^'\"]*)['\"]", text)
        info["cuda"] = m.group(1) if m else None
        info["is_cuda_build"] = bool(re.search(r"['\"]is_cuda_build['\"]\s*,\s*True", text))
    out["dists"][name] = info
print(json.dumps(out))
"""

@dataclass(frozen=True)
class Problem:
    code: str
    severity: str
    message: str
    fix: str

    def to_json(self) -> dict[str, str]:
        return {"code": self.code, "severity": self.severity, "message": self.message, "fix": self.fix}


@dataclass(frozen=True)
class Installed:
    """A framework found in the environment, and the build of the matrices it is (when known)."""

    framework: str
    distribution: str
    version: str
    variant: str | None
    cuda: str | None

    def to_json(self) -> dict[str, object]:
        return {"framework": self.framework, "distribution": self.distribution, "version": self.version,
                "variant": self.variant, "cuda": self.cuda}


@dataclass
class DoctorResult:
    host: HostFacts
    environment: dict[str, Any]
    installed: list[Installed] = field(default_factory=list)
    companions: dict[str, str] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)
    commands: list[str] = field(default_factory=list)
    smoke: list[dict[str, Any]] | None = None

    @property
    def ok(self) -> bool:
        failed_smoke = any(not s.get("ok") for s in self.smoke or [])
        return not failed_smoke and not any(p.severity == ERROR for p in self.problems)

    def to_json(self) -> dict[str, object]:
        return {
            "ok": self.ok,
            "host": self.host.to_json(),
            "environment": {k: self.environment.get(k) for k in ("executable", "python", "prefix", "platform")},
            "installed": [i.to_json() for i in self.installed],
            "companions": self.companions,
            "problems": [p.to_json() for p in self.problems],
            "lock_commands": self.commands,
            "smoke": self.smoke,
        }


def active_python(explicit: str | None = None, environ: dict[str, str] | None = None) -> str:
    """The interpreter of the active environment: --python, else $VIRTUAL_ENV / $CONDA_PREFIX, else this one."""
    env = os.environ if environ is None else environ
    if explicit:
        return explicit
    for variable in ("VIRTUAL_ENV", "CONDA_PREFIX"):
        prefix = env.get(variable)
        if prefix and Path(prefix).resolve() != Path(sys.prefix).resolve():
            for candidate in (Path(prefix) / "bin" / "python", Path(prefix) / "python.exe",
                              Path(prefix) / "Scripts" / "python.exe"):
                if candidate.exists():
                    return str(candidate)
    return sys.executable


def inventory(python: str) -> dict[str, Any]:
    """The environment's Python and framework distributions, as its own interpreter reports them."""
    try:
        proc = subprocess.run([python, "-c", INVENTORY_SCRIPT], capture_output=True, text=True,
                              timeout=SUBPROCESS_TIMEOUT_S)
    except FileNotFoundError:
        raise EnvironmentFailure(f"cannot run {python}: no such interpreter",
                                 fix="pass --python PATH to the environment's python") from None
    except subprocess.TimeoutExpired:
        raise EnvironmentFailure(f"{python} did not list its packages within {SUBPROCESS_TIMEOUT_S} s") from None
    if proc.returncode != 0:
        raise EnvironmentFailure(f"{python} could not list its packages: {proc.stderr.strip()[-500:]}",
                                 fix="check that it is a working Python >= 3.8")
    try:
        return json.loads(proc.stdout.strip().splitlines()[-1])
    except (json.JSONDecodeError, IndexError):
        raise EnvironmentFailure(f"{python} printed no package list: {proc.stdout[-300:]!r}") from None


def _minor(version: str) -> str:
    return ".".join(version.split(".")[:2])


def _identify(matrix: Matrix, dists: dict[str, Any]) -> list[Installed]:
    found = []
    torch = dists.get("torch")
    if torch:
        version, _, local = torch["version"].partition("+")
        builds = [b for b in matrix.builds("torch") if b.version == version]
        build = None
        if local:
            build = next((b for b in builds if b.local == local or b.variant == local), None)
        elif torch.get("cuda"):
            build = next((b for b in builds if b.cuda and _minor(b.cuda) == _minor(torch["cuda"])), None)
        elif torch.get("hip"):
            build = next((b for b in builds if b.rocm), None)
        else:
            build = next((b for b in builds if b.variant == "cpu"), None)
        found.append(Installed("torch", "torch", torch["version"], build.variant if build else None,
                               torch.get("cuda")))
    for name in ("tensorflow", "tensorflow-gpu", "tensorflow-cpu", "tensorflow-intel"):
        tf = dists.get(name)
        if not tf:
            continue
        builds = [b for b in matrix.builds("tensorflow") if b.version == tf["version"]]
        if name in ("tensorflow-cpu", "tensorflow-intel") or not tf.get("is_cuda_build"):
            variant = "cpu"
        elif any(d.startswith("nvidia-cudnn-cu") for d in dists):
            variant = "and-cuda"
        else:
            variant = "cuda"
        build = next((b for b in builds if b.variant == variant), None)
        found.append(Installed("tensorflow", name, tf["version"], build.variant if build else None, tf.get("cuda")))
        break
    jax = dists.get("jax")
    if jax:
        builds = [b for b in matrix.builds("jax") if b.version == jax["version"]]
        plugins = sorted(d for d in dists if d.startswith("jax-cuda") and d.endswith("-plugin"))
        variant = "cpu"
        if plugins:
            major = plugins[-1][len("jax-cuda"):].split("-")[0]
            bundled = any(d.startswith("nvidia-cuda-runtime-cu") or d == "nvidia-cuda-runtime" for d in dists)
            variant = f"cuda{major}" if bundled else f"cuda{major}-local"
        jaxlib_local = (dists.get("jaxlib") or {}).get("version", "").partition("+")[2]
        if jaxlib_local.startswith("cuda"):
            variant = f"cuda{jaxlib_local[4:].split('.')[0]}-local"
        build = next((b for b in builds if b.variant == variant), None)
        found.append(Installed("jax", "jax", jax["version"], build.variant if build else None,
                               build.cuda if build else None))
    return found


def _problems(matrix: Matrix, host: HostFacts, env: dict[str, Any], installed: Sequence[Installed],
              dists: dict[str, Any], platform: str) -> list[Problem]:
    # Probe notes on a machine with no trace of an NVIDIA driver are the normal "no GPU" story (shown with the
    # machine); where a driver or GPU is there, a failing source is a problem worth its fix.
    problems = [Problem("probe_failed", WARNING, f"{n.source}: {n.message}", n.fix or "see `envforge detect`")
                for n in host.notes if host.driver or host.gpus]
    python = _minor(env["python"])
    nvidia = [g for g in host.gpus if g.vendor == "nvidia"]
    for item in installed:
        release = matrix.release(item.framework, item.version.partition("+")[0])
        newest = matrix.releases(item.framework)[-1]
        if release is None:
            if _is_newer(item.version.partition("+")[0], newest.version):
                problems.append(Problem("unknown_release", WARNING,
                                        f"{item.distribution} {item.version} is newer than envforge's matrices "
                                        f"(newest known {newest.version}); it was not checked",
                                        "run `envforge matrix refresh --write` (or upgrade envforge)"))
            else:
                problems.append(Problem("unknown_release", WARNING,
                                        f"envforge's matrices know no {item.framework} {item.version}",
                                        "check the installed version, or refresh the matrices"))
            continue
        if item.variant is None:
            problems.append(Problem("not_published", WARNING,
                                    f"{item.distribution} {item.version} (CUDA {item.cuda or '?'}) is not a build "
                                    "envforge knows; it was not checked",
                                    "reinstall it from PyPI or the framework's own index"))
            continue
        build = next(b for b in matrix.builds(item.framework)
                     if b.version == release.version and b.variant == item.variant)

        if not supports_python(release, python):
            problems.append(Problem("python_unsupported", ERROR,
                                    f"{item.framework} {release.version} supports Python {release.python}, and this "
                                    f"environment runs {env['python']}", "use the lock command below"))
        if build.variant == "cpu" and nvidia:
            problems.append(Problem("cuda_mismatch", WARNING,
                                    f"{item.framework} {item.version} is the CPU build, and this machine has "
                                    f"{nvidia[0].name}: the GPU goes unused", "use the lock command below"))
        elif build.cuda and not nvidia and not host.driver:
            problems.append(Problem("cuda_mismatch", WARNING,
                                    f"{item.framework} {item.version} is the {build.variant} build, and no NVIDIA "
                                    "GPU or driver was found: it runs on the CPU only",
                                    "fine for CPU work; on a GPU machine check `envforge detect`"))
        elif build.cuda or build.rocm:
            problems.extend(_host_reasons(matrix, host, item, release, build, python, platform))
    torch = next((i for i in installed if i.framework == "torch"), None)
    if torch is not None:
        release = matrix.release("torch", torch.version.partition("+")[0])
        for package in TORCH_COMPANIONS:
            info = dists.get(package)
            if info is None or release is None:
                continue
            wanted = getattr(release, package)
            have, _, have_local = info["version"].partition("+")
            torch_local = torch.version.partition("+")[2]
            if wanted and have != wanted:
                problems.append(Problem("companion_mismatch", ERROR,
                                        f"{package} {info['version']} is installed with torch {torch.version}, "
                                        f"which needs {package} {wanted}",
                                        f"pip install {package}=={wanted}{'+' + torch_local if torch_local else ''}"))
            elif have_local and torch_local and have_local != torch_local:
                problems.append(Problem("companion_mismatch", ERROR,
                                        f"{package} {info['version']} is a {have_local} build, torch {torch.version} "
                                        f"a {torch_local} one", f"pip install {package}=={wanted}+{torch_local}"))
    return problems



def _host_reasons(matrix: Matrix, host: HostFacts, item: Installed, release: ReleaseRow, build: BuildRow,
                  python: str, platform: str) -> list[Problem]:
    request = Request(framework=item.framework, version=f"=={release.version}", cuda="auto",
                      python=python, platform=platform, allow_cpu=True)
    resolution = resolve(matrix, host, request)
    out = []
    for rejection in resolution.rejected:
        if rejection.version == release.version and rejection.variant == build.variant:
            for reason in rejection.reasons:
                if reason.code != "python_unsupported":
                    out.append(Problem(reason.code, ERROR, reason.message, reason.fix))
    return out


def lock_commands(matrix: Matrix, host: HostFacts, installed: Sequence[Installed], python: str,
                  platform: str) -> list[str]:
    """`envforge lock` for each installed framework (its release if one of its builds works here, else the
    newest that does); for all three when none is installed."""
    wanted: list[tuple[str, str | None]] = [(i.framework, i.version.partition("+")[0]) for i in installed] or \
        [("torch", None), ("tensorflow", None), ("jax", None)]
    commands = []
    for framework, version in wanted:
        selected = None
        for spec in ([f"=={version}"] if version else []) + [None]:
            try:
                resolution = resolve(matrix, host, Request(framework=framework, version=spec, cuda="auto",
                                                           python=python, platform=platform))
            except Exception:  # noqa: BLE001 - an unknown release falls through to the newest
                continue
            if resolution.ok:
                selected = resolution.selected
                break
        if selected is None:
            commands.append(f"# no {framework} build runs on this machine with Python {python} "
                            f"(see `envforge resolve -f {framework}`)")
            continue
        cuda = selected.cuda or (f"rocm{selected.rocm}" if selected.rocm else "cpu")
        parts = ["envforge", "lock", "-f", framework, "--version", selected.version, "--cuda", cuda,
                 "--python", python, "-o", "."]
        commands.append(" ".join(shlex.quote(p) for p in parts))
    return commands


def run_smoke(python: str, installed: Sequence[Installed], host: Any, gpu_lookup: Any) -> list[dict[str, Any]]:
    """`envforge smoke` (the real checks: kernels, training, ...) on each installed framework."""
    from .errors import EnvforgeError
    from .smoke import run

    frameworks = tuple(dict.fromkeys(item.framework for item in installed))
    if not frameworks:
        return []
    try:
        result = run.smoke(run.SmokeRequest(python=python, frameworks=frameworks), host, gpu_lookup)
    except EnvforgeError as exc:
        return [{"framework": name, "ok": False, "error": exc.message} for name in frameworks]
    out = []
    for framework_run in result.runs:
        doc = framework_run.to_json()
        failed = [c for c in doc["checks"] if c.get("status") == "fail"]
        entry: dict[str, Any] = {"framework": doc["framework"], "ok": doc["ok"], "device": doc.get("ran_on")}
        if failed:
            entry["error"] = f"{failed[0]['name']}: {failed[0].get('detail', '')}".strip()
        out.append(entry)
    return out


def doctor(matrix: Matrix, *, driver: str | None = None, gpus: Sequence[str] = (), arch: Sequence[str] = (),
           no_detect: bool = False, python: str | None = None, smoke: bool = False) -> DoctorResult:
    from . import hardware

    overrides = hardware.overrides_from(driver, gpus, arch, no_detect)
    host = hardware.probe(overrides, include_toolkit=True, gpu_lookup=matrix.gpu, branch_cuda=matrix.branch_cuda)
    interpreter = active_python(python)
    env = inventory(interpreter)
    dists = env.get("dists", {})
    platform = host.platform or "linux-64"
    installed = _identify(matrix, dists)
    result = DoctorResult(host, env, installed)
    result.companions = {p: dists[p]["version"] for p in TORCH_COMPANIONS if p in dists}
    result.problems = _problems(matrix, host, env, installed, dists, platform)
    result.commands = lock_commands(matrix, host, installed, _minor(env["python"]), platform)
    if smoke:
        result.smoke = run_smoke(interpreter, installed, host, matrix.gpu)
    return result


def render_text(result: DoctorResult) -> str:
    from .report import host_text

    lines = ["machine", *("  " + line for line in host_text(result.host).splitlines()), ""]
    env = result.environment
    lines.append(f"environment  {env.get('prefix')} (Python {env.get('python')}, {env.get('executable')})")
    if result.installed:
        for item in result.installed:
            what = f"{item.variant} build" if item.variant else "a build envforge does not know"
            lines.append(f"  {item.distribution} {item.version}: {what}")
        for package, version in result.companions.items():
            lines.append(f"  {package} {version}")
    else:
        lines.append("  no deep-learning framework installed (torch, tensorflow, jax)")
    lines.append("")
    if result.problems:
        lines.append("problems")
        for p in result.problems:
            lines.append(f"  {p.severity} [{p.code}] {p.message}")
            lines.append(f"    fix: {p.fix}")
    else:
        lines.append("problems: none found")
    if result.smoke is not None:
        lines.append("")
        lines.append("smoke")
        if not result.smoke:
            lines.append("  nothing to smoke-test: no framework installed")
        for s in result.smoke:
            state = f"ok on {s.get('device')}" if s.get("ok") else f"FAILED: {s.get('error')}"
            lines.append(f"  {s['framework']}: {state}")
    lines.append("")
    verb = "a working environment for this machine" if result.installed else \
        "a working environment for this machine, per framework"
    lines.append(f"{verb}:")
    lines.extend(f"  {c}" for c in result.commands)
    return "\n".join(lines)


__all__ = ["DoctorResult", "Installed", "Problem", "active_python", "doctor", "inventory", "lock_commands",
           "render_text"]
