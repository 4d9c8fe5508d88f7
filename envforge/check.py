"""`envforge check`: read what a project already pins and report every incompatibility, with file and line.

Parsers, one per input kind, turn files into located facts: framework pins, the
Python a project runs on, Dockerfile base images and the CUDA in them, PyTorch
index URLs. A *context* groups the facts that end up in one environment (a
requirements file with its includes, a pyproject dependency group, a conda
environment, a Dockerfile stage). Findings come from the matrices through
resolve.py: driver and GPU-architecture verdicts are resolve() verdicts for the
pinned build on each target, image choices are base_image(), driver floors
driver_floor(); nothing here re-derives a compatibility rule.

Every finding carries a reason code from the closed set (models.REASON_CODES),
a severity (error or warning) and a fix that names a version, driver, variant or
image that works.
"""

from __future__ import annotations

import fnmatch
import functools
import hashlib
import json
import os
import re
import shlex
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence
from urllib.parse import unquote

from packaging.markers import Marker
from packaging.requirements import InvalidRequirement, Requirement
from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

from .dockerfile import DISTRO_PYTHON
from .errors import BadInput, ToolNotFound
from .matrix import Matrix
from .models import BuildRow, HostFacts, ReleaseRow, Request
from .resolve import base_image, driver_floor, requirements, resolve, supports_python

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.9/3.10 only
    import tomli as tomllib

ERROR = "error"
WARNING = "warning"
SEVERITIES = (ERROR, WARNING)

# Distributions that decide a framework build; everything else a project pins is not judged.
TORCH_COMPANIONS = ("torchvision", "torchaudio")
_JAX_PLUGIN = re.compile(r"^jax-cuda(\d+)-(plugin|pjrt)$")
FRAMEWORK_OF = {
    "torch": "torch", "pytorch": "torch",
    "tensorflow": "tensorflow", "tensorflow-gpu": "tensorflow", "tensorflow-cpu": "tensorflow",
    "jax": "jax", "jaxlib": "jax",
}
_PYTORCH_INDEX = re.compile(r"download\.pytorch\.org/whl/(?:nightly/|test/)?(cu\d+|cpu|rocm[\d.]+)(?:/|$)")

# The Python `apt-get install python3` gives on each Ubuntu release: one table, in dockerfile.py.
UBUNTU_PYTHON = {k[len("ubuntu"):]: v for k, v in DISTRO_PYTHON.items() if k.startswith("ubuntu")}
UBUNTU_CODENAMES = {"bionic": "18.04", "focal": "20.04", "jammy": "22.04", "noble": "24.04"}

# Lock formats a project may pin its frameworks in that check does not read yet: named in a note, never ignored silently.
UNREAD = frozenset({"uv.lock", "poetry.lock", "Pipfile", "Pipfile.lock", "pdm.lock", "pixi.lock", "setup.py", "setup.cfg"})

SKIP_DIRS = frozenset({
    ".git", ".hg", ".svn", ".venv", "venv", ".tox", ".nox", "node_modules", "__pycache__", "site-packages",
    ".mypy_cache", ".pytest_cache", ".ruff_cache", ".eggs", "build", "dist",
})

# Short descriptions of the reason codes (README "Reason codes"), used by SARIF rules.
RULES: dict[str, str] = {
    "python_unsupported": "The Python the project runs on is outside the framework release's supported range.",
    "platform_unsupported": "The pinned build is not published for the target platform.",
    "cuda_mismatch": "The build's accelerator or CUDA does not match the image, the system libraries or the target.",
    "driver_too_old": "A target's NVIDIA driver is below the floor of the build's (or the image's) CUDA.",
    "arch_unsupported": "A target GPU's compute capability has no kernels in the pinned build.",
    "cudnn_mismatch": "The cuDNN the build needs is not the one the image carries.",
    "companion_mismatch": "torchvision / torchaudio from another torch release or another variant.",
    "not_published": "The pinned release has no such build, or the image tag does not exist.",
    "unknown_release": "A pin envforge's matrices do not know (newer than them): refresh the matrices.",
    "stale_lock": "A lock that no longer matches its inputs.",
}


# --------------------------------------------------------------------------- value types


@dataclass(frozen=True)
class Loc:
    file: str  # relative to the checked directory, POSIX separators
    line: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}"


@dataclass(frozen=True)
class Finding:
    file: str
    line: int
    code: str
    severity: str
    message: str
    fix: str

    def to_json(self) -> dict[str, object]:
        return {"file": self.file, "line": self.line, "code": self.code, "severity": self.severity,
                "message": self.message, "fix": self.fix}


def _finding(loc: Loc, code: str, severity: str, message: str, fix: str) -> Finding:
    return Finding(loc.file, loc.line, code, severity, message, fix)


@dataclass(frozen=True)
class Pin:
    """A framework-relevant requirement as a project file writes it."""

    loc: Loc
    name: str  # canonical distribution name (conda names mapped: pytorch -> torch)
    spec: str = ""  # PEP 440 specifier without local labels: "==2.1.2", ">=2.0,<2.3", ""
    local: str | None = None  # the local label pinned: "cu118"
    extras: tuple[str, ...] = ()
    text: str = ""
    index_variant: str | None = None  # PyTorch index in effect for this pin: cu118, cpu, rocm6.0
    manager: str = "pip"  # pip | conda
    conda_cuda: str | None = None  # conda: the CUDA asked for (pytorch-cuda, cudatoolkit, cuda-version, build string)
    conda_cpu: bool = False

    @property
    def exact(self) -> str | None:
        """The version of an `==V` pin (no wildcard), else None."""
        match = re.fullmatch(r"===?([^,*]+)", self.spec)
        return match.group(1) if match else None

    @property
    def shown(self) -> str:
        return self.text or f"{self.name}{self.spec}"


@dataclass(frozen=True)
class PythonFact:
    """The Python an environment runs on: an exact X.Y (image, apt, conda, .python-version) or a range."""

    loc: Loc
    what: str  # how the file says it: "python:3.12-slim", "requires-python >=3.9", ...
    version: str | None = None  # X.Y
    spec: str | None = None  # requires-python
    kind: str = "image"  # image | apt | conda | file | spec


@dataclass(frozen=True)
class Image:
    """A Dockerfile stage's base image, as far as envforge knows it."""

    loc: Loc
    ref: str
    kind: str  # cuda | python | os | unknown
    cuda: str | None = None  # "11.8.0"
    flavour: str | None = None  # base | runtime | devel | cudnn-runtime | cudnn-devel
    cudnn: str | None = None  # cuDNN major inside the image
    os: str | None = None  # "ubuntu22.04"
    ubuntu: str | None = None
    python: str | None = None  # python:3.12-slim -> 3.12
    known: bool = True  # the tag is in images.toml

    @property
    def cuda_minor(self) -> str | None:
        return ".".join(self.cuda.split(".")[:2]) if self.cuda else None


@dataclass
class Context:
    """The facts that end up in one environment."""

    label: str
    pins: list[Pin] = field(default_factory=list)
    python: list[PythonFact] = field(default_factory=list)
    image: Image | None = None
    cuda_env: tuple[Loc, str] | None = None  # ENV CUDA_VERSION
    docker: bool = False


@dataclass(frozen=True)
class Pinned:
    """A framework pin identified as one (release, build) of the matrices."""

    pin: Pin
    framework: str
    release: ReleaseRow
    build: BuildRow
    exact: bool

    @property
    def name(self) -> str:
        return f"{self.framework} {self.build.version} ({self.build.variant})"


@dataclass(frozen=True)
class Target:
    """A machine the project must run on."""

    name: str
    host: HostFacts
    platform: str = "linux-64"

    @property
    def label(self) -> str:
        """How messages name it: "target a100", "target 2", "this machine"."""
        return self.name if self.name.startswith(("target ", "this machine", "command line")) else f"target {self.name}"

    def describe(self) -> str:
        parts = []
        names = list(dict.fromkeys(g.name for g in self.host.gpus))
        if names:
            parts.append(", ".join(names))
        if self.host.driver:
            parts.append(f"driver {self.host.driver}")
        if self.platform != "linux-64":
            parts.append(self.platform)
        return f"{self.name} ({'; '.join(parts)})" if parts else self.name

    def to_json(self) -> dict[str, object]:
        # the target's platform, not the one of the machine running check (HostFacts carries that)
        return {**self.host.to_json(), "name": self.name, "platform": self.platform}


@dataclass
class Report:
    root: Path
    findings: list[Finding]
    files: list[str]
    targets: list[Target]
    notes: list[str]

    @property
    def ok(self) -> bool:
        return not any(f.severity == ERROR for f in self.findings)

    def to_json(self) -> dict[str, object]:
        return {
            "ok": self.ok,
            "findings": [f.to_json() for f in self.findings],
            "root": str(self.root),
            "files": self.files,
            "targets": [t.to_json() for t in self.targets],
            "notes": self.notes,
        }


# --------------------------------------------------------------------------- targets


def make_target(matrix: Matrix, name: str, driver: str | None = None, gpus: Sequence[str] = (),
                arch: Sequence[str] = (), platform: str | None = None) -> Target:
    """A target described by its driver and GPUs (names or aliases from gpus.toml) or compute capabilities."""
    from . import hardware, specs

    if not (driver or gpus or arch):
        raise BadInput(f"target {name!r} names no driver, GPU or architecture",
                       fix='describe it like --target driver=535.104.05,gpu="NVIDIA A100-SXM4-80GB"')
    overrides = hardware.HostOverrides(driver=specs.parse_driver(driver), gpus=tuple(gpus),
                                       arch=tuple(specs.parse_arch(a) for a in arch), no_detect=True)
    host = hardware.probe(overrides, gpu_lookup=matrix.gpu, branch_cuda=matrix.branch_cuda)
    return Target(name, host, specs.parse_platform(platform) or "linux-64")


_TARGET_KEYS = ("name", "driver", "gpu", "gpus", "arch", "platform")


def parse_target(text: str, matrix: Matrix, index: int = 1) -> Target:
    """`driver=535.104.05,gpu="NVIDIA A100-SXM4-80GB"[,gpu=...][,arch=8.0][,name=a100][,platform=linux-64]`."""
    lexer = shlex.shlex(text, posix=True)
    lexer.whitespace = ","
    lexer.whitespace_split = True
    lexer.commenters = ""
    try:
        items = [item.strip() for item in lexer if item.strip()]
    except ValueError as exc:
        raise BadInput(f"cannot read --target {text!r}: {exc}") from None
    values: dict[str, list[str]] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip().lower()
        if not sep or key not in _TARGET_KEYS:
            raise BadInput(
                f"cannot read --target {text!r}: {item!r} is not KEY=VALUE with KEY one of {', '.join(_TARGET_KEYS)}",
                fix='write --target driver=535.104.05,gpu="NVIDIA A100-SXM4-80GB"',
            )
        values.setdefault("gpu" if key == "gpus" else key, []).append(value.strip())
    def last(key: str) -> str | None:
        return values[key][-1] if values.get(key) else None

    return make_target(matrix, last("name") or f"target {index}", last("driver"), values.get("gpu", ()),
                       values.get("arch", ()), last("platform"))


def load_fleet(path: Path, matrix: Matrix) -> list[Target]:
    """A fleet file: `[[machine]]` tables with name, driver, gpus (or gpu), arch, platform."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise BadInput(f"cannot read the fleet file {path}: {exc.strerror or exc}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise BadInput(f"{path}: not valid TOML: {exc}") from None
    machines = data.get("machine", data.get("target"))
    if not isinstance(machines, list) or not machines:
        raise BadInput(f"{path}: no [[machine]] tables",
                       fix='list each machine: [[machine]] name = "a100" driver = "535.104.05" gpus = ["NVIDIA A100-SXM4-80GB"]')
    targets = []
    for number, machine in enumerate(machines, 1):
        if not isinstance(machine, dict):
            raise BadInput(f"{path}: machine {number} is not a table")
        unknown = sorted(set(machine) - {"name", "driver", "gpus", "gpu", "arch", "platform", "count", "note"})
        if unknown:
            raise BadInput(f"{path}: machine {number} has unknown keys {', '.join(unknown)}",
                           fix="use name, driver, gpus, arch, platform")

        def strings(key: str) -> list[str]:
            value = machine.get(key, [])
            return [value] if isinstance(value, str) else [str(v) for v in value]

        targets.append(make_target(matrix, str(machine.get("name") or f"machine {number}"),
                                   machine.get("driver"), strings("gpus") + strings("gpu"), strings("arch"),
                                   machine.get("platform")))
    return targets


# --------------------------------------------------------------------------- small parsing helpers


def _canon(name: str) -> str:
    return canonicalize_name(name)


def _norm_extra(extra: str) -> str:
    return re.sub(r"[-_.]+", "_", extra.lower())


def _relevant(name: str) -> bool:
    return name in FRAMEWORK_OF or name in TORCH_COMPANIONS or bool(_JAX_PLUGIN.match(name))


def _index_variant(url: str) -> str | None:
    match = _PYTORCH_INDEX.search(url)
    return match.group(1) if match else None


def _split_local(specifier: SpecifierSet) -> tuple[str, str | None]:
    parts, local = [], None
    for spec in specifier:
        version = spec.version
        if spec.operator in ("==", "===") and "+" in version:
            version, local = version.split("+", 1)
        parts.append(f"{spec.operator}{version}")
    return ",".join(sorted(parts)), local


def _wheel_version(url: str) -> tuple[str, str] | None:
    """(name, version) from a wheel URL or file name: torch-2.1.2%2Bcu118-cp311-...whl."""
    filename = unquote(url.rsplit("/", 1)[-1].split("#", 1)[0])
    match = re.match(r"^([A-Za-z0-9_.]+)-([^-]+)-.*\.whl$", filename)
    return (match.group(1), match.group(2)) if match else None


def _marker_env(python: str, platform: str) -> dict[str, str]:
    system, sys_platform, machine, os_name = {
        "linux-64": ("Linux", "linux", "x86_64", "posix"),
        "linux-aarch64": ("Linux", "linux", "aarch64", "posix"),
        "osx-arm64": ("Darwin", "darwin", "arm64", "posix"),
        "win-64": ("Windows", "win32", "AMD64", "nt"),
    }[platform]
    return {
        "python_version": python, "python_full_version": f"{python}.0", "implementation_name": "cpython",
        "implementation_version": f"{python}.0", "platform_python_implementation": "CPython",
        "sys_platform": sys_platform, "platform_system": system, "platform_machine": machine, "os_name": os_name,
        "platform_release": "", "platform_version": "", "extra": "",
    }


@dataclass(frozen=True)
class Env:
    """What markers are evaluated against: the project's Python and the targets' platform."""

    python: str = "3.11"
    platform: str = "linux-64"

    def admits(self, marker: Marker | str | None) -> bool:
        if marker is None or marker == "":
            return True
        try:
            parsed = marker if isinstance(marker, Marker) else Marker(marker)
            return bool(parsed.evaluate(_marker_env(self.python, self.platform)))  # type: ignore[arg-type]
        except Exception:  # noqa: BLE001 - an unreadable marker (InvalidMarker or worse) keeps the pin
            return True


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise BadInput(f"cannot read {path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise BadInput(f"cannot read {path}: {exc.strerror or exc}") from None


def _line_of(lines: Sequence[str], needles: Sequence[str], start: int = 0, default: int = 1) -> int:
    """1-based number of the first line at or after `start` (0-based) containing any needle."""
    for number in range(start, len(lines)):
        if any(n in lines[number] for n in needles):
            return number + 1
    for number in range(0, min(start, len(lines))):
        if any(n in lines[number] for n in needles):
            return number + 1
    return default


def _quoted(text: str) -> list[str]:
    return [f'"{text}"', f"'{text}'"]


def _pin_from_requirement(req: Requirement, loc: Loc, text: str) -> Pin:
    name = _canon(req.name)
    spec, local = _split_local(req.specifier)
    if req.url:
        wheel = _wheel_version(req.url)
        if wheel:
            version = wheel[1]
            version, _, local_part = version.partition("+")
            spec, local = f"=={version}", local_part or None
        index = _index_variant(req.url)
        return Pin(loc, name, spec, local, tuple(sorted(req.extras)), text, index)
    return Pin(loc, name, spec, local, tuple(sorted(req.extras)), text)


# --------------------------------------------------------------------------- requirements files


@dataclass
class RequirementsFile:
    pins: list[Pin] = field(default_factory=list)
    indexes: list[str] = field(default_factory=list)  # index-url, extra-index-url, find-links URLs in effect

    def index_variant(self) -> str | None:
        return next((v for v in map(_index_variant, self.indexes) if v), None)


def _logical_lines(text: str) -> Iterator[tuple[int, str]]:
    """pip's reading: join backslash continuations, then drop comments (`#` at the start or after a space)."""
    parts: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), 1):
        if not parts:
            start = number
        if raw.endswith("\\"):
            parts.append(raw[:-1])
            continue
        parts.append(raw)
        line = re.sub(r"(^|\s)#.*$", "", " ".join(parts)).strip()
        parts = []
        if line:
            yield start, line
    if parts:
        line = re.sub(r"(^|\s)#.*$", "", " ".join(parts)).strip()
        if line:
            yield start, line


_OPTION_WITH_VALUE = {
    "-r": "requirement", "--requirement": "requirement", "-c": "constraint", "--constraint": "constraint",
    "-i": "index", "--index-url": "index", "--extra-index-url": "index", "-f": "index", "--find-links": "index",
    "-e": "editable", "--editable": "editable", "--trusted-host": None, "--use-feature": None,
    "--no-binary": None, "--only-binary": None, "--global-option": None, "--config-settings": None, "-C": None,
}


def _options(tokens: Sequence[str]) -> Iterator[tuple[str, str | None]]:
    """(kind, value) for each option of a requirements-file line; kind None for ignored ones."""
    iterator = iter(tokens)
    for token in iterator:
        name, eq, value = token.partition("=")
        if name in _OPTION_WITH_VALUE:
            if not eq:
                value = next(iterator, "")
            kind = _OPTION_WITH_VALUE[name]
            if kind:
                yield kind, value
        elif re.match(r"^-[rcief]\S", token):  # -rfile, -ifile
            kind = _OPTION_WITH_VALUE.get(token[:2])
            if kind:
                yield kind, token[2:]


class Project:
    """One checked directory: its files parsed once each, relative paths, notes."""

    def __init__(self, root: Path, matrix: Matrix, env: Env) -> None:
        self.root = root
        self.matrix = matrix
        self.env = env
        self.notes: list[str] = []
        self.read: dict[str, None] = {}  # files read, in order
        self._requirements: dict[Path, RequirementsFile] = {}

    def rel(self, path: Path) -> str:
        try:
            return path.resolve().relative_to(self.root.resolve()).as_posix()
        except ValueError:
            return Path(os.path.relpath(path.resolve(), self.root.resolve())).as_posix()

    def text(self, path: Path) -> str:
        self.read.setdefault(self.rel(path), None)
        return _read(path)

    def note(self, message: str) -> None:
        if message not in self.notes:
            self.notes.append(message)

    # --- requirements
    def requirements(self, path: Path, _stack: tuple[Path, ...] = ()) -> RequirementsFile:
        """A requirements file with its -r / -c includes (pins keep their own file and line)."""
        path = path.resolve()
        if path in self._requirements:
            return self._requirements[path]
        if path in _stack:
            return RequirementsFile()
        rel = self.rel(path)
        text = self.text(path)
        out = RequirementsFile()
        for number, line in _logical_lines(text):
            loc = Loc(rel, number)
            if line.startswith("-"):
                try:
                    tokens = shlex.split(line)
                except ValueError:
                    tokens = line.split()
                for kind, value in _options(tokens):
                    if kind in ("requirement", "constraint") and value:
                        include = (path.parent / value).resolve()
                        if not include.is_file():
                            raise BadInput(f"{loc}: {'-r' if kind == 'requirement' else '-c'} {value}: no such file",
                                           fix="fix the path (it is relative to the file that names it)")
                        sub = self.requirements(include, (*_stack, path))
                        out.pins.extend(sub.pins)
                        out.indexes.extend(sub.indexes)
                    elif kind == "index" and value:
                        out.indexes.append(value)
                continue
            pin = self.requirement_line(line, loc)
            if pin is not None:
                out.pins.append(pin)
        variant = out.index_variant()
        if variant:
            out.pins = [replace(p, index_variant=p.index_variant or variant) for p in out.pins]
        self._requirements[path] = out
        return out

    def requirement_line(self, line: str, loc: Loc) -> Pin | None:
        """One requirement (per-requirement options such as --hash stripped); None when not a framework pin."""
        text = re.split(r"\s+--?[A-Za-z]", line, maxsplit=1)[0].strip()
        try:
            req = Requirement(text)
        except InvalidRequirement as exc:
            wheel = _wheel_version(text)
            if wheel:
                req = Requirement(f"{wheel[0]} @ {text}")
            elif "${" in text or "/" in text or text.startswith((".", "git+", "hg+", "svn+", "bzr+")):
                if re.match(r"^(torch|tensorflow|jax)\b", text):
                    self.note(f"{loc}: {text!r} is not a plain requirement (a path, URL or variable); not checked")
                return None
            else:
                raise BadInput(f"{loc}: cannot read the requirement {text!r}: {exc}",
                               fix="write it as PEP 508 (name[extras]==version; marker), as pip expects") from None
        if not _relevant(_canon(req.name)):
            return None
        if not self.env.admits(req.marker):
            return None
        return _pin_from_requirement(req, loc, text)

    # --- pyproject.toml
    def pyproject(self, path: Path) -> tuple[list[Context], list[PythonFact]]:
        rel = self.rel(path)
        text = self.text(path)
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise BadInput(f"{rel}: not valid TOML: {exc}") from None
        lines = text.splitlines()
        project = data.get("project") or {}
        for key, kind in (("dependencies", list), ("optional-dependencies", dict)):
            if key in project and not isinstance(project[key], kind):
                raise BadInput(f"{rel}:{_line_of(lines, [key])}: [project] {key} must be a "
                               f"{'list of requirement strings' if kind is list else 'table of lists'} (PEP 621)")
        groups = data.get("dependency-groups") or {}
        if not isinstance(groups, dict):
            raise BadInput(f"{rel}: [dependency-groups] must be a table of lists (PEP 735)")
        python: list[PythonFact] = []
        requires_python = project.get("requires-python")
        if isinstance(requires_python, str):
            number = _line_of(lines, ["requires-python"])
            try:
                SpecifierSet(requires_python)
            except InvalidSpecifier:
                raise BadInput(f"{rel}:{number}: requires-python {requires_python!r} is not a PEP 440 specifier") from None
            python.append(PythonFact(Loc(rel, number), f"requires-python {requires_python}", spec=requires_python,
                                     kind="spec"))
        if (data.get("tool") or {}).get("poetry", {}).get("dependencies"):
            self.note(f"{rel}: [tool.poetry.dependencies] is not read yet; only PEP 621 dependencies were checked")
        uv = (data.get("tool") or {}).get("uv") or {}
        indexes = [i for i in uv.get("index", []) if isinstance(i, dict)]
        index_url = {str(i.get("name")): str(i.get("url", "")) for i in indexes}
        implicit = [str(i.get("url", "")) for i in indexes if not i.get("explicit")]
        implicit += [u for u in [uv.get("index-url"), *(uv.get("extra-index-url") or [])] if isinstance(u, str)]
        sources = {_canon(k): v for k, v in (uv.get("sources") or {}).items()}

        def variant_for(name: str, extra: str | None, group: str | None) -> str | None:
            entries = sources.get(name)
            if entries is not None:
                for entry in entries if isinstance(entries, list) else [entries]:
                    if not isinstance(entry, dict):
                        continue
                    if "extra" in entry and entry["extra"] != extra:
                        continue
                    if "group" in entry and entry["group"] != group:
                        continue
                    if not self.env.admits(entry.get("marker")):
                        continue
                    if "index" in entry:
                        return _index_variant(index_url.get(str(entry["index"]), ""))
                    if "url" in entry:
                        wheel = _wheel_version(str(entry["url"]))
                        return wheel[1].partition("+")[2] or None if wheel else None
                    return None
            return next((v for v in map(_index_variant, implicit) if v), None)

        def pins(deps: object, header: str, extra: str | None = None, group: str | None = None) -> list[Pin]:
            out = []
            start = _line_of(lines, [header], default=1) - 1
            for dep in deps if isinstance(deps, list) else []:
                if not isinstance(dep, str):
                    continue
                loc = Loc(rel, _line_of(lines, _quoted(dep), start))
                pin = self.requirement_line(dep, loc)
                if pin is not None:
                    if pin.name == "torch" or pin.name in TORCH_COMPANIONS:
                        pin = replace(pin, index_variant=pin.index_variant or variant_for(pin.name, extra, group))
                    out.append(pin)
            return out

        main = pins(project.get("dependencies"), "dependencies")
        contexts = [Context(f"{rel} [project] dependencies", main)]
        for extra, deps in (project.get("optional-dependencies") or {}).items():
            extra_pins = pins(deps, "optional-dependencies", extra=extra)
            if extra_pins:
                contexts.append(Context(f"{rel} [project.optional-dependencies] {extra}", main + extra_pins))
        for group, deps in groups.items():
            group_pins = pins(deps, "dependency-groups", group=group)
            if group_pins:
                contexts.append(Context(f"{rel} [dependency-groups] {group}", main + group_pins))
        return contexts, python

    # --- pylock.toml (PEP 751)
    def pylock(self, path: Path) -> tuple[Context, list[PythonFact]]:
        rel = self.rel(path)
        text = self.text(path)
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise BadInput(f"{rel}: not valid TOML: {exc}") from None
        lines = text.splitlines()
        headers = [i for i, line in enumerate(lines) if line.strip() == "[[packages]]"]
        python = []
        if isinstance(data.get("requires-python"), str):
            python.append(PythonFact(Loc(rel, _line_of(lines, ["requires-python"])),
                                     f"requires-python {data['requires-python']}", spec=data["requires-python"],
                                     kind="spec"))
        ctx = Context(rel)
        for number, package in enumerate(data.get("packages") or []):
            name = _canon(str(package.get("name", "")))
            version = package.get("version")
            if not _relevant(name) or not isinstance(version, str) or not self.env.admits(package.get("marker")):
                continue
            start = headers[number] if number < len(headers) else 0
            loc = Loc(rel, _line_of(lines, _quoted(package.get("name", "")), start, default=start + 1))
            base, _, local = version.partition("+")
            index = _index_variant(str(package.get("index", "")))
            ctx.pins.append(Pin(loc, name, f"=={base}", local or None, (), f"{name}=={version}", index))
        return ctx, python

    # --- conda: environment.yml and conda-lock.yml
    def conda_environment(self, path: Path) -> Context:
        rel = self.rel(path)
        root = _yaml_compose(self.text(path), rel)
        ctx = Context(rel)
        deps = _yaml_get(root, "dependencies")
        conda_specs: list[tuple[Loc, str]] = []
        for item in getattr(deps, "value", []) if deps is not None else []:
            if _yaml_scalar(item):
                conda_specs.append((Loc(rel, item.start_mark.line + 1), str(item.value)))
            elif _yaml_get(item, "pip") is not None:
                for sub in _yaml_get(item, "pip").value:
                    if not _yaml_scalar(sub):
                        continue
                    loc = Loc(rel, sub.start_mark.line + 1)
                    line = str(sub.value).strip()
                    if line.startswith("-"):
                        for kind, value in _options(shlex.split(line)):
                            if kind == "index" and value and _index_variant(value):
                                ctx.pins = [replace(p, index_variant=p.index_variant or _index_variant(value))
                                            for p in ctx.pins]
                        continue
                    pin = self.requirement_line(line, loc)
                    if pin is not None:
                        ctx.pins.append(pin)
        ctx.pins.extend(_conda_pins(conda_specs, ctx))
        return ctx

    def conda_lock(self, path: Path) -> tuple[Context, dict[str, tuple[Loc, str, str]]]:
        """The pins of conda-lock.yml for one platform (the targets'), and name -> (loc, version, manager)."""
        rel = self.rel(path)
        root = _yaml_compose(self.text(path), rel)
        packages = _yaml_get(root, "package")
        entries: dict[str, tuple[Loc, str, str]] = {}
        platforms = set()
        for item in getattr(packages, "value", []) if packages is not None else []:
            values = {str(k.value): v for k, v in getattr(item, "value", []) if _yaml_scalar(k)}
            get = {k: str(v.value) for k, v in values.items() if _yaml_scalar(v)}
            platforms.add(get.get("platform"))
            if get.get("platform") != self.env.platform:
                continue
            name = get.get("name", "")
            loc = Loc(rel, item.start_mark.line + 1)
            build = ""
            url = get.get("url", "")
            match = re.search(rf"/{re.escape(name)}-[^-/]+-([^/]+?)\.(conda|tar\.bz2)$", url)
            if match:
                build = match.group(1)
            entries[f"{get.get('manager', 'conda')}:{name}"] = (loc, get.get("version", ""), build)
        ctx = Context(f"{rel} ({self.env.platform})")
        if not entries and platforms:
            self.note(f"{rel}: no packages for {self.env.platform}; not checked")
        specs = [(loc, f"{key.split(':', 1)[1]} =={version} {build}".strip())
                 for key, (loc, version, build) in entries.items() if key.startswith("conda:")]
        for key, (loc, version, _) in entries.items():
            if key.startswith("pip:"):
                pin = self.requirement_line(f"{key[4:]}=={version}", loc)
                if pin is not None:
                    ctx.pins.append(pin)
        ctx.pins.extend(_conda_pins(specs, ctx))
        return ctx, entries


# --------------------------------------------------------------------------- YAML (PyYAML, imported lazily)


def _yaml() -> Any:
    try:
        import yaml
    except ImportError:  # pragma: no cover - PyYAML comes with conda-lock and most Python installs
        raise ToolNotFound("reading environment.yml / conda-lock.yml needs PyYAML",
                           fix="pip install pyyaml (or pip install 'envforge[conda]')") from None
    return yaml


def _yaml_compose(text: str, rel: str) -> Any:
    yaml = _yaml()
    try:
        return yaml.compose(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{rel}:{mark.line + 1}" if mark is not None else rel
        raise BadInput(f"{where}: not valid YAML: {getattr(exc, 'problem', None) or exc}") from None


def _yaml_scalar(node: Any) -> bool:
    return node is not None and type(node).__name__ == "ScalarNode"


def _yaml_get(node: Any, key: str) -> Any:
    if node is None or type(node).__name__ != "MappingNode":
        return None
    return next((v for k, v in node.value if _yaml_scalar(k) and k.value == key), None)


# --------------------------------------------------------------------------- conda specs

_CONDA_SPEC = re.compile(r"^\s*(?:[^:\s]+::)?([A-Za-z0-9_][A-Za-z0-9_.\-]*)\s*(.*)$")
CONDA_NAMES = {"pytorch": "torch", "pytorch-gpu": "torch", "pytorch-cpu": "torch",
               "tensorflow-gpu": "tensorflow", "tensorflow-cpu": "tensorflow"}


def _conda_split(spec: str) -> tuple[str, str, str]:
    """MatchSpec -> (name, version, build): `pytorch=2.1.2=cuda118*`, `pytorch 2.1.2 cuda*`, `pytorch>=2.1`."""
    match = _CONDA_SPEC.match(spec)
    if not match:
        return spec.strip(), "", ""
    name, rest = match.group(1).lower(), match.group(2).strip()
    rest = re.sub(r"\[.*\]$", "", rest).strip()
    if rest.startswith("=") and not rest.startswith("=="):
        version, _, build = rest[1:].partition("=")
        version = version.strip()
        if version and not version.endswith("*") and not re.search(r"[<>=!|,]", version):
            version += "*"  # `=2.1` is a fuzzy match: 2.1*
        return name, version, build.strip()
    parts = rest.split()
    if len(parts) >= 2 and not re.search(r"[<>=!]$", parts[0]):
        return name, parts[0], parts[1]
    return name, rest.replace(" ", ""), ""


def conda_to_pep440(version: str) -> str | None:
    """A conda version spec as a PEP 440 one where it has the same meaning ('' for any); None if not."""
    version = version.strip()
    if not version or version == "*":
        return ""
    if "|" in version:
        return None
    if version.endswith("*"):
        stem = version.rstrip("*").rstrip(".")
        return f"=={stem}.*" if re.fullmatch(r"[\d.]+", stem) else None
    if re.fullmatch(r"[\d.]+[a-z0-9.]*", version):
        return f"=={version}"
    try:
        return str(SpecifierSet(version))
    except InvalidSpecifier:
        return None


def _conda_cuda_of_build(build: str) -> str | None:
    match = re.search(r"cuda(\d+)(\d)(?!\d)", build)
    return f"{match.group(1)}.{match.group(2)}" if match else None


def _conda_pins(specs: Sequence[tuple[Loc, str]], ctx: Context) -> list[Pin]:
    """Framework pins of a conda environment, with the CUDA it asks for; adds its Python to ctx."""
    cuda = None
    cpu = False
    pins = []
    for loc, spec in specs:
        name, version, build = _conda_split(spec)
        if name == "python":
            match = re.match(r"^=?=?(\d+)\.(\d+)", version.lstrip("=<>~"))
            if match and not version.startswith((">", "<", "!")):
                ctx.python.append(PythonFact(loc, f"python {version}", f"{match.group(1)}.{match.group(2)}",
                                             kind="conda"))
        elif name in ("pytorch-cuda", "cudatoolkit", "cuda-version", "cuda-toolkit", "cuda-runtime", "cuda"):
            match = re.match(r"^=?=?(\d+)\.(\d+)", version.lstrip("=<>~"))
            if match:
                cuda = cuda or f"{match.group(1)}.{match.group(2)}"
        elif name == "cpuonly":
            cpu = True
        pip_name = CONDA_NAMES.get(name, name)
        if _relevant(pip_name):
            pep440 = conda_to_pep440(version)
            if pep440 is None:
                continue
            if build:
                cuda = cuda or _conda_cuda_of_build(build)
                cpu = cpu or build.startswith("cpu")
            if name == "pytorch-cpu" or name == "tensorflow-cpu":
                cpu = True
            pins.append(Pin(loc, pip_name, pep440, None, (), spec.strip(), manager="conda"))
    return [replace(p, conda_cuda=None if cpu else cuda, conda_cpu=cpu) for p in pins]


# --------------------------------------------------------------------------- Dockerfiles


@dataclass
class Stage:
    index: int
    name: str | None
    image: Image | None
    parent: Stage | None = None
    pins: list[Pin] = field(default_factory=list)
    python: list[PythonFact] = field(default_factory=list)
    cuda_env: tuple[Loc, str] | None = None
    copies_from: list[str] = field(default_factory=list)
    installs_python3: Loc | None = None
    indexes: list[str] = field(default_factory=list)

    def effective(self, stages: dict[str, Stage]) -> tuple[Image | None, list[Pin], list[PythonFact], Any]:
        image, pins, python, cuda_env = self.image, list(self.pins), list(self.python), self.cuda_env
        if self.parent is not None:
            p_image, p_pins, p_python, p_cuda = self.parent.effective(stages)
            image = image or p_image
            pins = p_pins + pins
            python = python or p_python
            cuda_env = cuda_env or p_cuda
        for source in self.copies_from:
            other = stages.get(source)
            if other is not None and other is not self:
                pins = other.effective(stages)[1] + pins
        return image, pins, python, cuda_env


def _docker_instructions(text: str) -> Iterator[tuple[int, str, list[tuple[int, str]]]]:
    """(first line, logical instruction, physical lines) with continuations joined and comment lines dropped."""
    lines = text.splitlines()
    index = 0
    while index < len(lines):
        raw = lines[index]
        if not raw.strip() or raw.lstrip().startswith("#"):
            index += 1
            continue
        start = index + 1
        physical = [(index + 1, raw)]
        parts = []
        line = raw
        while line.rstrip().endswith("\\"):
            parts.append(line.rstrip()[:-1])
            index += 1
            while index < len(lines) and (lines[index].lstrip().startswith("#") or not lines[index].strip()):
                index += 1
            if index >= len(lines):
                line = ""
                break
            line = lines[index]
            physical.append((index + 1, line))
        parts.append(line)
        joined = " ".join(p.strip() for p in parts)
        heredoc = re.search(r"<<-?\s*[\"']?([A-Za-z_]\w*)[\"']?", joined)
        if heredoc:
            word = heredoc.group(1)
            body = []
            index += 1
            while index < len(lines) and lines[index].strip() != word:
                body.append(lines[index])
                physical.append((index + 1, lines[index]))
                index += 1
            joined = joined[: heredoc.start()] + "\n" + "\n".join(body)
        index += 1
        yield start, joined, physical


def _substitute(text: str, variables: dict[str, str]) -> str:
    def value(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(3)
        default = match.group(2)
        if name in variables and variables[name] != "":
            return variables[name]
        if default is not None:
            return default
        return match.group(0)

    return re.sub(r"\$\{(\w+)(?::?-([^}]*))?\}|\$(\w+)", value, text)


def parse_image(ref: str, loc: Loc, matrix: Matrix) -> Image:
    """What envforge knows about a base image reference."""
    ref = ref.split("@", 1)[0]
    repo, _, tag = ref.rpartition(":") if ":" in ref.rsplit("/", 1)[-1] else (ref, "", "latest")
    repo = re.sub(r"^(docker\.io/|index\.docker\.io/|registry\.hub\.docker\.com/|nvcr\.io/)", "", repo)
    repo = repo.removeprefix("library/")
    if repo == "nvidia/cuda":
        match = re.match(r"^(\d+\.\d+(?:\.\d+)?)-(base|runtime|devel|(cudnn\d*)-(runtime|devel))-([a-z]+)([\d.]+)$", tag)
        if not match:
            return Image(loc, ref, "cuda", known=False)
        cuda = match.group(1)
        flavour = match.group(2)
        token = match.group(3)
        if token:
            flavour = f"cudnn-{match.group(4)}"
        os_name, os_version = match.group(5), match.group(6)
        row = next((r for r in matrix.images() if r.cuda == cuda), None)
        cudnn = None
        if token:
            cudnn = token[len("cudnn"):] or (row.cudnn if row else None)
        known = True
        if os_name == "ubuntu":
            known = row is not None and flavour in row.flavours and os_version in row.ubuntu \
                and (not token or token == (row.cudnn_token or "cudnn"))
        return Image(loc, ref, "cuda", cuda, flavour, cudnn, f"{os_name}{os_version}",
                     os_version if os_name == "ubuntu" else None, known=known)
    if repo == "python":
        match = re.match(r"^(\d+)\.(\d+)", tag)
        return Image(loc, ref, "python", python=f"{match.group(1)}.{match.group(2)}" if match else None)
    if repo == "ubuntu":
        version = UBUNTU_CODENAMES.get(tag.split("-")[0], tag.split("-")[0])
        return Image(loc, ref, "os", ubuntu=version if re.fullmatch(r"\d+\.\d+", version) else None)
    if repo in ("debian", "alpine", "centos", "rockylinux", "almalinux", "fedora", "amazonlinux", "busybox"):
        return Image(loc, ref, "os")
    return Image(loc, ref, "unknown")


_PIP_VALUE_OPTIONS = {
    "-r", "--requirement", "-c", "--constraint", "-i", "--index-url", "--extra-index-url", "-f", "--find-links",
    "-e", "--editable", "-t", "--target", "--prefix", "--root", "--python-version", "--platform", "--implementation",
    "--abi", "--src", "--upgrade-strategy", "--progress-bar", "--cache-dir", "--python", "-p", "--trusted-host",
    "--no-binary", "--only-binary", "--config-settings", "-C", "--global-option", "--index-strategy",
    "--extra-index", "--index", "--default-index", "--torch-backend",
}
_CONDA_VALUE_OPTIONS = {"-c", "--channel", "-n", "--name", "-p", "--prefix", "--file", "--override-channels-x"}


def _commands(script: str) -> Iterator[list[str]]:
    for chunk in re.split(r"&&|\|\||;|\n|(?<![<>])\|", script):
        chunk = chunk.strip()
        if not chunk:
            continue
        try:
            tokens = shlex.split(chunk, comments=True)
        except ValueError:
            tokens = chunk.split()
        while tokens and (re.match(r"^\w+=", tokens[0]) or tokens[0] in ("sudo", "exec", "env", "time")):
            tokens = tokens[1:]
        if tokens:
            yield tokens


def _pip_args(tokens: list[str]) -> list[str] | None:
    """The arguments after `install` of a pip / python -m pip / uv pip command; None if not one."""
    for i, token in enumerate(tokens):
        base = token.rsplit("/", 1)[-1]
        if re.fullmatch(r"pip(\d(\.\d+)?)?", base):
            rest = tokens[i + 1:]
        elif re.fullmatch(r"python(\d(\.\d+)?)?", base) and tokens[i + 1:i + 3] == ["-m", "pip"]:
            rest = tokens[i + 3:]
        elif base == "uv" and tokens[i + 1:i + 2] == ["pip"]:
            rest = tokens[i + 2:]
        else:
            continue
        while rest and rest[0].startswith("-"):
            rest = rest[1:]
        return rest[1:] if rest and rest[0] == "install" else None
    return None


class DockerfileReader:
    def __init__(self, project: Project, path: Path) -> None:
        self.project = project
        self.path = path
        self.rel = project.rel(path)
        self.stages: list[Stage] = []
        self.by_name: dict[str, Stage] = {}

    def token_loc(self, physical: list[tuple[int, str]], token: str, start: int) -> Loc:
        """The physical line a word of an instruction is on (by its text, else by its leading name, since
        variables were substituted), else the instruction's first line."""
        for number, text in physical:
            if token in text:
                return Loc(self.rel, number)
        name = re.match(r"[A-Za-z0-9_.-]+", token)
        if name:
            word = re.compile(rf"(?<![\w.-]){re.escape(name.group(0))}(?![\w-])")
            for number, text in physical:
                if word.search(text):
                    return Loc(self.rel, number)
        return Loc(self.rel, start)

    def read(self) -> list[Context]:
        project, matrix = self.project, self.project.matrix
        text = project.text(self.path)
        variables: dict[str, str] = {}
        stage: Stage | None = None
        for start, instruction, physical in _docker_instructions(text):
            keyword, _, rest = instruction.partition(" ")
            keyword = keyword.upper()
            rest = rest.strip()
            loc = Loc(self.rel, start)
            if keyword == "ARG":
                for item in shlex.split(rest) if rest else []:
                    name, eq, value = item.partition("=")
                    if eq:
                        variables[name] = _substitute(value, variables)
                    else:
                        variables.setdefault(name, "")
            elif keyword == "FROM":
                words = [w for w in _substitute(rest, variables).split() if not w.startswith("--")]
                if not words:
                    continue
                ref = words[0]
                alias = words[2] if len(words) >= 3 and words[1].lower() == "as" else None
                parent = self.by_name.get(ref.lower())
                image = None if parent is not None else parse_image(ref, loc, matrix)
                stage = Stage(len(self.stages), alias, image, parent)
                if image is not None and image.python:
                    stage.python.append(PythonFact(loc, image.ref, image.python, kind="image"))
                self.stages.append(stage)
                if alias:
                    self.by_name[alias.lower()] = stage
                self.by_name[str(stage.index)] = stage
            elif stage is None:
                continue
            elif keyword == "ENV":
                words = rest.split(None, 1)
                if words and "=" in words[0]:
                    pairs = re.findall(r"(\w+)=(\"[^\"]*\"|'[^']*'|\S+)", rest)
                else:
                    pairs = [(words[0], words[1])] if len(words) == 2 else []
                for name, value in pairs:
                    value = _substitute(value.strip("\"'"), variables)
                    variables[name] = value
                    if name == "CUDA_VERSION" and re.match(r"^\d+\.\d+", value):
                        stage.cuda_env = (loc, value)
                    elif name in ("PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "UV_INDEX_URL", "UV_EXTRA_INDEX_URL",
                                  "UV_INDEX"):
                        stage.indexes.extend(value.split())
            elif keyword == "COPY" or keyword == "ADD":
                match = re.search(r"--from=(\S+)", rest)
                if match:
                    stage.copies_from.append(match.group(1).lower())
            elif keyword == "RUN":
                script = re.sub(r"^(--\S+\s+)+", "", rest)
                if script.startswith("["):
                    try:
                        script = " ".join(json.loads(script))
                    except json.JSONDecodeError:
                        pass
                for tokens in _commands(_substitute(script, variables)):
                    self.command(stage, tokens, physical, start)
        contexts = []
        for stage in self.stages:
            image, pins, python, cuda_env = stage.effective(self.by_name)
            label = f"{self.rel} stage {stage.name or stage.index}"
            contexts.append(Context(label, pins, python, image, cuda_env, docker=True))
        return contexts

    def command(self, stage: Stage, tokens: list[str], physical: list[tuple[int, str]], start: int) -> None:
        args = _pip_args(tokens)
        if args is not None:
            self.pip_install(stage, args, physical, start)
            return
        base = tokens[0].rsplit("/", 1)[-1]
        if base in ("conda", "mamba", "micromamba") and "install" in tokens[1:3]:
            specs = []
            skip = False
            for token in tokens[tokens.index("install") + 1:]:
                if skip:
                    skip = False
                    continue
                if token in _CONDA_VALUE_OPTIONS:
                    skip = True
                    continue
                if token.startswith("-"):
                    continue
                specs.append((self.token_loc(physical, token, start), token))
            ctx = Context("conda")
            stage.pins.extend(_conda_pins(specs, ctx))
            for fact in ctx.python:
                stage.python.append(replace(fact, what=f"conda install {fact.what}"))
            return
        if base in ("apt-get", "apt") and "install" in tokens:
            for token in tokens:
                match = re.fullmatch(r"python(3(?:\.\d+)?)(?:-(?:dev|venv|pip|full))?", token)
                if match and match.group(1) != "3":
                    stage.python.append(PythonFact(self.token_loc(physical, token, start), f"apt-get install {token}",
                                                   match.group(1), kind="apt"))
                elif match:
                    stage.installs_python3 = self.token_loc(physical, token, start)
            image = stage.image or (stage.parent.effective(self.by_name)[0] if stage.parent else None)
            if stage.installs_python3 and not stage.python and image is not None and image.ubuntu in UBUNTU_PYTHON:
                version = UBUNTU_PYTHON[image.ubuntu]
                stage.python.append(PythonFact(stage.installs_python3,
                                               f"apt-get install python3 on Ubuntu {image.ubuntu}",
                                               version, kind="apt"))

    def pip_install(self, stage: Stage, args: list[str], physical: list[tuple[int, str]], start: int) -> None:
        project = self.project
        indexes = list(stage.indexes)
        requirement_files = []
        pins: list[Pin] = []
        iterator = iter(args)
        for token in iterator:
            name, eq, value = token.partition("=")
            if token.startswith("-"):
                if name in _PIP_VALUE_OPTIONS:
                    if not eq:
                        value = next(iterator, "")
                    if name in ("-r", "--requirement", "-c", "--constraint"):
                        requirement_files.append((value, self.token_loc(physical, value, start)))
                    elif name in ("-i", "--index-url", "--extra-index-url", "-f", "--find-links", "--extra-index",
                                  "--index", "--default-index"):
                        indexes.append(value)
                    elif name == "--torch-backend" and re.fullmatch(r"cu\d+|cpu|rocm[\d.]+", value):
                        indexes.append(f"https://download.pytorch.org/whl/{value}")
                continue
            loc = self.token_loc(physical, token, start)
            if token == "." or token.startswith((".[", "./", "/")) and not token.endswith(".whl"):
                self.project_install(stage, token, loc)
                continue
            pin = project.requirement_line(token, loc)
            if pin is not None:
                pins.append(pin)
        for value, loc in requirement_files:
            path = self.resolve_copy(value)
            if path is None:
                project.note(f"{loc}: pip install -r {value}: the file is not in the build context as envforge "
                             "guesses it; its pins are not checked against this image")
                continue
            sub = project.requirements(path)
            pins.extend(sub.pins)
            indexes.extend(sub.indexes)
        variant = next((v for v in map(_index_variant, indexes) if v), None)
        stage.pins.extend(replace(p, index_variant=p.index_variant or variant) for p in pins)

    def project_install(self, stage: Stage, token: str, loc: Loc) -> None:
        directory = token.split("[", 1)[0]
        extras = re.findall(r"[\w-]+", token.split("[", 1)[1]) if "[" in token else []
        pyproject = (self.path.parent / directory / "pyproject.toml") if not directory.startswith("/") else None
        if pyproject is None or not pyproject.is_file():
            pyproject = self.project.root / "pyproject.toml"
        if not pyproject.is_file():
            return
        contexts, _ = self.project.pyproject(pyproject)
        wanted = {f"{self.project.rel(pyproject)} [project.optional-dependencies] {e}" for e in extras}
        for ctx in contexts:
            if ctx.label.endswith("[project] dependencies") or ctx.label in wanted:
                stage.pins.extend(p for p in ctx.pins if p not in stage.pins)

    def resolve_copy(self, value: str) -> Path | None:
        """The build-context file a `pip install -r PATH` inside the image most likely is."""
        candidates = [self.path.parent / value.lstrip("/"), self.project.root / value.lstrip("/")]
        name = value.rsplit("/", 1)[-1]
        candidates += [self.path.parent / name, self.project.root / name]
        return next((c for c in candidates if c.is_file()), None)


# --------------------------------------------------------------------------- identifying pinned builds


def _variant_label(pin: Pin) -> str | None:
    return pin.local or pin.index_variant


def _choose_build(matrix: Matrix, framework: str, pin: Pin, version: str, ctx: Context,
                  platform: str) -> BuildRow | None:
    builds = [b for b in matrix.builds(framework) if b.version == version]
    if framework == "torch":
        if pin.manager == "conda":
            if pin.conda_cpu:
                return next((b for b in builds if b.variant == "cpu"), None)
            if pin.conda_cuda:
                wanted = Version(pin.conda_cuda)
                same_major = [b for b in builds if b.cuda and Version(b.cuda).major == wanted.major]
                fitting = [b for b in same_major if Version(b.cuda or "0") <= wanted] or same_major
                return max(fitting, key=lambda b: Version(b.cuda or "0")) if fitting else None
            return None
        label = _variant_label(pin)
        if label:
            return next((b for b in builds if b.local == label or b.variant == label), None)
        if platform == "linux-64":
            return next((b for b in builds if b.pypi_default), None)
        return next((b for b in builds if b.variant == "cpu"), None)
    if framework == "tensorflow":
        if pin.name == "tensorflow-cpu" or pin.conda_cpu:
            variant = "cpu"
        elif "and-cuda" in (_norm_extra(e).replace("_", "-") for e in pin.extras):
            variant = "and-cuda"
        elif platform == "linux-64":
            variant = "cuda"
        else:
            variant = "cpu"
        return next((b for b in builds if b.variant == variant), None)
    # jax: the extra names the build; the CUDA plugins pinned beside it say the same thing.
    extras = {_norm_extra(e) for e in pin.extras}
    for build in builds:
        if build.extra and build.variant != "cpu" and _norm_extra(build.extra) in extras:
            return build
    plugins = [p for p in ctx.pins if _JAX_PLUGIN.match(p.name)]
    for plugin in plugins:
        major = _JAX_PLUGIN.match(plugin.name).group(1)  # type: ignore[union-attr]
        # A lock lists the plugin without its [with-cuda] extra: the bundled build is the common one.
        found = next((b for b in builds if b.variant == f"cuda{major}"), None)
        if found:
            return found
    if pin.name == "jaxlib" and pin.local and pin.local.startswith("cuda"):
        major = re.match(r"cuda(\d+)", pin.local).group(1)  # type: ignore[union-attr]
        return next((b for b in builds if b.variant == f"cuda{major}-local"), None)
    if pin.manager == "conda" and pin.conda_cuda:
        major = pin.conda_cuda.split(".")[0]
        return next((b for b in builds if b.variant == f"cuda{major}"), None)
    return next((b for b in builds if b.variant == "cpu"), None)


def _identify(matrix: Matrix, pin: Pin, ctx: Context, platform: str) -> tuple[Pinned | None, list[Finding]]:
    framework = FRAMEWORK_OF[pin.name]
    releases = matrix.releases(framework)
    try:
        spec = SpecifierSet(pin.spec)
    except InvalidSpecifier:
        return None, []
    matching = [r for r in releases if spec.contains(r.version, prereleases=True)]
    exact = pin.exact
    label = _variant_label(pin) if framework == "torch" and pin.manager == "pip" else None
    newest = releases[-1]
    if not matching:
        if exact is not None and _is_newer(exact, newest.version):
            message = (f"{pin.shown}: {framework} {exact} is newer than envforge's matrices (newest known "
                       f"{newest.version}, read {matrix.read_date()}); it was not checked")
            fix = "run `envforge matrix refresh --write` (or upgrade envforge) so the matrices know it"
        elif exact is not None:
            near = _near_versions([r.version for r in releases], exact)
            message = f"{pin.shown}: envforge's matrices know no {framework} {exact}; it was not checked"
            fix = (f"check the version: the {framework} releases around it are {', '.join(near)}"
                   if near else "check the version")
        else:
            message = (f"{pin.shown}: no {framework} release envforge knows matches {pin.spec} (known "
                       f"{releases[0].version} … {newest.version}); it was not checked")
            fix = "run `envforge matrix refresh --write` if the release is newer than the matrices"
        return None, [_finding(pin.loc, "unknown_release", WARNING, message, fix)]
    if label:
        with_variant = [r for r in matching if any(
            (b.local == label or b.variant == label) for b in matrix.builds(framework) if b.version == r.version)]
        if not with_variant:
            release = matching[-1]
            variants = [b.variant for b in matrix.builds(framework) if b.version == release.version]
            having = [r.version for r in releases if any(
                (b.local == label or b.variant == label) for b in matrix.builds(framework) if b.version == r.version)]
            source = f"+{label}" if pin.local else f"the index {label}"
            message = (f"{pin.shown}: {framework} {release.version} has no {label} build (from {source}); "
                       f"it is published as {', '.join(variants)}")
            gpu = [b for b in matrix.builds(framework) if b.version == release.version and b.cuda]
            example = max(gpu, key=lambda b: Version(b.cuda or "0")) if gpu else None
            fix = f"use a variant it has ({', '.join(variants)})"
            if example is not None:
                fix += f", e.g. {_pin_text(framework, release, example, 'pip', explicit=True, companions=())}"
            if having:
                fix += f"; or {framework} {having[0]} … {having[-1]}, the releases with a {label} build"
            return None, [_finding(pin.loc, "not_published", ERROR, message, fix)]
        matching = with_variant
    release = matching[-1]
    build = _choose_build(matrix, framework, pin, release.version, ctx, platform)
    if build is None:
        return None, []
    return Pinned(pin, framework, release, build, exact is not None), []


def _is_newer(version: str, than: str) -> bool:
    try:
        return Version(version) > Version(than)
    except InvalidVersion:
        return False


def _near_versions(known: Sequence[str], version: str) -> list[str]:
    try:
        wanted = Version(version)
    except InvalidVersion:
        return []
    older = [v for v in known if Version(v) < wanted][-1:]
    newer = [v for v in known if Version(v) > wanted][:1]
    return older + newer


# --------------------------------------------------------------------------- judging: companions


def _companion_findings(matrix: Matrix, ctx: Context, pinned: Sequence[Pinned]) -> list[Finding]:
    torch = next((p for p in pinned if p.framework == "torch"), None)
    findings = []
    for pin in ctx.pins:
        if pin.name not in TORCH_COMPANIONS or (torch is not None and pin.manager != torch.pin.manager):
            continue
        rows = [c for c in matrix.companions() if c.package == pin.name]
        try:
            spec = SpecifierSet(pin.spec)
        except InvalidSpecifier:
            continue
        candidates = [c for c in rows if spec.contains(c.version, prereleases=True)]
        if not candidates:
            if pin.exact and rows and _is_newer(pin.exact, rows[-1].version):
                findings.append(_finding(pin.loc, "unknown_release", WARNING,
                                         f"{pin.shown}: {pin.name} {pin.exact} is newer than envforge's matrices "
                                         f"(newest known {rows[-1].version}); it was not checked",
                                         "run `envforge matrix refresh --write` (or upgrade envforge)"))
            continue
        if torch is None:
            continue
        torch_pin = torch.pin
        torch_spec = SpecifierSet(torch_pin.spec)
        torch_versions = [r.version for r in matrix.releases("torch")
                          if torch_spec.contains(r.version, prereleases=True)]

        def fits(companion: Any, torch_version: str) -> bool:
            if companion.torch:
                return SpecifierSet(companion.torch).contains(torch_version, prereleases=True)
            release = matrix.release("torch", torch_version)
            return release is not None and getattr(release, pin.name) == companion.version

        wanted = getattr(torch.release, pin.name)
        if not any(fits(c, t) for c in candidates for t in torch_versions):
            chosen = candidates[-1]
            built_for = chosen.torch or next(
                (f"=={r.version}" for r in matrix.releases("torch") if getattr(r, pin.name) == chosen.version), "?")
            if wanted:
                local = f"+{torch.pin.local}" if torch.pin.local else ""
                fix = f"pin {pin.name}=={wanted}{local} (the release for torch {torch.release.version})"
            else:
                fix = f"torch {torch.release.version} has no {pin.name} release: drop {pin.name} or change torch"
            partner = next((r.version for r in matrix.releases("torch") if fits(chosen, r.version)), None)
            if partner:
                fix += f", or torch=={partner} to match {pin.name} {chosen.version}"
            findings.append(_finding(
                pin.loc, "companion_mismatch", ERROR,
                f"{pin.shown}: {pin.name} {chosen.version} is built for torch{built_for}, but torch is pinned "
                f"{torch_pin.shown} at {torch_pin.loc}; pip either fails to resolve or replaces torch",
                fix,
            ))
            continue
        label = pin.local
        if label and torch.pin.manager == "pip" and label != torch.build.local:
            findings.append(_finding(
                pin.loc, "companion_mismatch", ERROR,
                f"{pin.shown}: a {label} build of {pin.name}, but torch is the {torch.build.variant} build "
                f"at {torch_pin.loc}; their compiled operators must come from the same variant",
                f"pin {pin.name}=={pin.exact or (wanted or '')}+{torch.build.local or torch.build.variant}"
                + (f" from {torch.build.index_url}" if torch.build.index_url else ""),
            ))
    return findings


# --------------------------------------------------------------------------- judging: Python


@functools.lru_cache(maxsize=64)
def _python_minors(matrix: Matrix, framework: str) -> tuple[str, ...]:
    """Every Python minor some release of the framework supports (what a range is compared over)."""
    minors = []
    for minor in range(5, 20):
        python = f"3.{minor}"
        if any(SpecifierSet(r.python).contains(f"{python}.0", prereleases=True) for r in matrix.releases(framework)):
            minors.append(python)
    return tuple(minors)




def _python_alternatives(matrix: Matrix, framework: str, release: ReleaseRow, python: str) -> str:
    supporting = [r.version for r in matrix.releases(framework) if supports_python(r, python)]
    if not supporting:
        return ""
    if Version(supporting[0]) > Version(release.version):
        return f"{framework}>={supporting[0]}, the first release with Python {python} wheels"
    return f"{framework}<={supporting[-1]}, the last release with Python {python} wheels"


def _python_fix_for(fact: PythonFact, release: ReleaseRow, matrix: Matrix, framework: str) -> str:
    supported = [p for p in _python_minors(matrix, framework) if supports_python(release, p)]
    best = supported[-1] if supported else None
    if best is None:
        return "change the framework release"
    if fact.kind == "image":
        new = re.sub(r":\d+\.\d+", f":{best}", fact.what, count=1)
        first = f"use FROM {new}"
    elif fact.kind == "apt":
        first = f"install python{best} (e.g. from the deadsnakes PPA) instead"
    elif fact.kind == "conda":
        first = f"use python={best}"
    elif fact.kind == "file":
        first = f"write {best} in .python-version"
    else:
        first = f"use a Python in {release.python}"
    other = _python_alternatives(matrix, framework, release, fact.version or best)
    return f"{first}, or pin {other}" if other and fact.version else first


def _python_findings(matrix: Matrix, ctx: Context, pinned: Sequence[Pinned]) -> list[Finding]:
    findings = []
    for item in pinned:
        release = item.release
        for fact in ctx.python:
            where = f"{item.pin.shown} at {item.pin.loc}"
            if fact.version:
                if not supports_python(release, fact.version):
                    findings.append(_finding(
                        fact.loc, "python_unsupported", ERROR,
                        f"Python {fact.version} ({fact.what}) is outside the range of {item.framework} "
                        f"{release.version}, {release.python}, pinned by {where}: there are no wheels for it",
                        _python_fix_for(fact, release, matrix, item.framework),
                    ))
            elif fact.spec:
                spec = SpecifierSet(fact.spec)
                admitted = [p for p in _python_minors(matrix, item.framework)
                            if spec.contains(f"{p}.0", prereleases=True) or spec.contains(f"{p}.99", prereleases=True)]
                unsupported = [p for p in admitted if not supports_python(release, p)]
                if not unsupported:
                    continue
                supported = [p for p in admitted if p not in unsupported]
                if not supported:
                    findings.append(_finding(
                        fact.loc, "python_unsupported", ERROR,
                        f"{fact.what} admits Python {_span(admitted)}, none of which {item.framework} "
                        f"{release.version} ({release.python}, pinned by {where}) has wheels for",
                        f"use requires-python within {release.python}, or pin "
                        f"{_python_alternatives(matrix, item.framework, release, admitted[0]) or 'another release'}",
                    ))
                else:
                    newest = [r.version for r in matrix.releases(item.framework) if supports_python(r, unsupported[-1])]
                    also = f", or {item.framework}>={newest[0]} for Python {unsupported[-1]}" if newest and \
                        Version(newest[0]) > Version(release.version) else ""
                    findings.append(_finding(
                        fact.loc, "python_unsupported", WARNING,
                        f"{fact.what} also admits Python {_span(unsupported)}, which {item.framework} "
                        f"{release.version} ({release.python}, pinned by {where}) has no wheels for",
                        f"cap requires-python to {_cap(release.python, unsupported)}{also}",
                    ))
    return findings


def _span(minors: Sequence[str]) -> str:
    return minors[0] if len(minors) == 1 else f"{minors[0]}-{minors[-1]}"


def _cap(release_python: str, unsupported: Sequence[str]) -> str:
    upper = next((s for s in SpecifierSet(release_python) if s.operator in ("<", "<=")), None)
    return f"{upper.operator}{upper.version}" if upper else f"<{unsupported[0]}"


# --------------------------------------------------------------------------- judging: Dockerfile images


def _docker_findings(matrix: Matrix, ctx: Context, pinned: Sequence[Pinned], targets: Sequence[Target]) -> list[Finding]:
    findings: list[Finding] = []
    image = ctx.image
    if image is None:
        return findings
    gpu_targets = any(t.host.gpus for t in targets)
    image_cuda = image.cuda if image.kind == "cuda" else None
    cuda_loc = image.loc
    if ctx.cuda_env and image_cuda is None:
        cuda_loc, image_cuda = ctx.cuda_env
    image_cudnn = image.cudnn if image.kind == "cuda" else None
    for item in pinned:
        build = item.build
        where = f"{item.pin.shown} at {item.pin.loc}"
        python = _image_python(ctx) or _oldest_python(item.release)
        if build.rocm and image_cuda:
            findings.append(_finding(
                cuda_loc, "cuda_mismatch", ERROR,
                f"{image.ref} is a CUDA image, and {item.pin.shown} at {item.pin.loc} is the ROCm {build.rocm} build",
                "pin a CUDA build of the same release, or use a ROCm base image",
            ))
            continue
        if not build.cuda:
            continue
        wanted_image, _ = base_image(matrix, build, python)
        alt = _and_cuda_alternative(matrix, item)
        if build.system_cuda:
            if image_cuda is None:
                explicit = item.pin.local or item.pin.index_variant or build.variant.endswith("-local") \
                    or item.pin.name == "tensorflow-gpu"
                if image.kind in ("python", "os") and (gpu_targets or explicit):
                    fix = f"use FROM {wanted_image}" if wanted_image else "use an nvidia/cuda cudnn-runtime image"
                    if alt:
                        fix += f", or install {alt}, which brings its CUDA libraries as pip packages"
                    findings.append(_finding(
                        image.loc, "cuda_mismatch", ERROR,
                        f"{image.ref} has no CUDA libraries, and {item.name}, pinned by {where}, loads CUDA {build.cuda}"
                        f"{' and cuDNN ' + build.cudnn if build.cudnn else ''} from the system: without them it "
                        f"runs on the CPU only",
                        fix,
                    ))
                continue
            have, need = Version(image_cuda), Version(build.cuda)
            fix = f"use FROM {wanted_image}" if wanted_image else f"use an nvidia/cuda {need.major}.x cudnn image"
            if alt:
                fix += f", or install {alt} (bundles its CUDA libraries) on a CUDA {need.major} image"
            if have.major != need.major:
                findings.append(_finding(
                    cuda_loc, "cuda_mismatch", ERROR,
                    f"{image.ref if cuda_loc == image.loc else 'CUDA_VERSION ' + image_cuda} carries CUDA "
                    f"{image_cuda}, but {item.name}, pinned by {where}, loads CUDA {build.cuda} libraries "
                    f"(lib*.so.{need.major}) from the system: it cannot find them and runs on the CPU only",
                    fix,
                ))
                continue
            if have.release[:2] < need.release[:2]:
                findings.append(_finding(
                    cuda_loc, "cuda_mismatch", WARNING,
                    f"{image.ref} carries CUDA {image_cuda}, older than the CUDA {build.cuda} {item.name} "
                    f"(pinned by {where}) was built with; CUDA libraries are only backward compatible",
                    fix,
                ))
            if image.kind == "cuda" and build.cudnn and image.flavour and not image.flavour.startswith("cudnn"):
                findings.append(_finding(
                    image.loc, "cuda_mismatch", ERROR,
                    f"{image.ref} is the {image.flavour} flavour, which has no cuDNN; {item.name}, pinned by {where}, loads "
                    f"cuDNN {build.cudnn} from the system",
                    fix,
                ))
            elif image_cudnn and build.cudnn and image_cudnn != build.cudnn.split(".")[0]:
                findings.append(_finding(
                    image.loc, "cudnn_mismatch", ERROR,
                    f"{image.ref} carries cuDNN {image_cudnn}, but {item.name}, pinned by {where}, needs cuDNN "
                    f"{build.cudnn.split('.')[0]} ({build.cudnn})",
                    fix,
                ))
        elif image_cuda is not None:
            have, need = Version(image_cuda), Version(build.cuda)
            if have.major != need.major:
                devel = bool(image.flavour and image.flavour.endswith("devel"))
                findings.append(_finding(
                    cuda_loc, "cuda_mismatch", ERROR if devel else WARNING,
                    f"{image.ref} carries CUDA {image_cuda}, but {item.name}, pinned by {where}, is built with CUDA "
                    f"{build.cuda} (its own libraries come as pip packages)"
                    + ("; extensions compiled with the image's nvcc will not load (CUDA major mismatch)" if devel
                       else "; the image's CUDA is unused and its driver requirement misleading"),
                    f"use FROM {wanted_image}" if wanted_image else f"use an nvidia/cuda {need.major}.x image",
                ))
    return findings


def _image_python(ctx: Context) -> str | None:
    return next((f.version for f in ctx.python if f.version), None)


def _oldest_python(release: ReleaseRow) -> str:
    lower = next((s.version for s in SpecifierSet(release.python) if s.operator in (">=", "~=", "==")), "3.9")
    return ".".join(lower.split(".")[:2])


def _and_cuda_alternative(matrix: Matrix, item: Pinned) -> str | None:
    """The same release as a build that brings its own CUDA libraries (tensorflow[and-cuda], jax[cudaXX])."""
    if not item.build.system_cuda:
        return None
    for build in matrix.builds(item.framework):
        if build.version == item.build.version and build.cuda and not build.system_cuda \
                and Version(build.cuda).major == Version(item.build.cuda or "0").major:
            return requirements(item.framework, build)[0]
    return None


def _image_findings(matrix: Matrix, image: Image, targets: Sequence[Target]) -> list[Finding]:
    """A base image on its own: does the tag exist, does the container start on each target's driver."""
    findings: list[Finding] = []
    if image.kind != "cuda":
        return findings
    if not image.known:
        near = _nearest_image(matrix, image)
        findings.append(_finding(
            image.loc, "not_published", WARNING,
            f"{image.ref} is not a tag envforge knows (images.toml, read {matrix.files['images'].meta.read}): "
            "docker pull may fail with 'manifest unknown'",
            f"use {near}" if near else "check the tag on Docker Hub (nvidia/cuda)",
        ))
    if not image.cuda:
        return findings
    minor = image.cuda_minor or image.cuda
    for target in targets:
        driver = target.host.driver
        driver_cuda = matrix.branch_cuda(driver) if driver else None
        if not driver or not driver_cuda or Version(driver_cuda) >= Version(minor):
            continue
        toolkits = matrix.toolkits(minor)
        floor = toolkits[0].linux_driver if toolkits else None
        older = _nearest_image(matrix, image, at_most=driver_cuda)
        fix = f"use {older}" if older else f"use an nvidia/cuda image of CUDA <= {driver_cuda}"
        if floor:
            fix += f", or upgrade the driver on {target.label} to >= {floor}"
        findings.append(_finding(
            image.loc, "driver_too_old", WARNING,
            f"{image.ref} sets NVIDIA_REQUIRE_CUDA=cuda>={minor}, which the NVIDIA container runtime checks "
            f"against the driver: driver {driver} on {target.label} supports CUDA {driver_cuda}, so the "
            "container does not start (unless it is a data-center GPU on a driver branch the image admits "
            "through the forward-compatibility package)",
            fix,
        ))
    return findings


def _nearest_image(matrix: Matrix, image: Image, at_most: str | None = None) -> str | None:
    """The newest existing tag of the same flavour: of CUDA <= `at_most` (an older driver), else of the image's
    own CUDA minor (a mistyped tag), else of its major and not newer."""
    flavour = image.flavour or "runtime"
    rows = [r for r in matrix.images() if flavour in r.flavours]
    if at_most is not None:
        limit = Version(at_most).release[:2]
        rows = [r for r in rows if Version(r.cuda).release[:2] <= limit]
    elif image.cuda:
        wanted = Version(image.cuda)
        if image.cudnn and flavour.startswith("cudnn"):
            rows = [r for r in rows if not r.cudnn or r.cudnn == image.cudnn]
        same_minor = [r for r in rows if Version(r.cuda).release[:2] == wanted.release[:2]]
        rows = same_minor or [r for r in rows if Version(r.cuda).major == wanted.major and Version(r.cuda) <= wanted]
    best = max(rows, key=lambda r: Version(r.cuda), default=None)
    if best is None or not best.ubuntu:
        return None
    ubuntu = image.ubuntu if image.ubuntu in best.ubuntu else sorted(best.ubuntu, key=Version)[-1]
    tag_flavour = flavour.replace("cudnn", best.cudnn_token or "cudnn") if flavour.startswith("cudnn") else flavour
    return f"nvidia/cuda:{best.cuda}-{tag_flavour}-ubuntu{ubuntu}"


# --------------------------------------------------------------------------- judging: targets (resolve() verdicts)


@functools.lru_cache(maxsize=4096)
def _verdict(matrix: Matrix, framework: str, version: str, host: HostFacts, platform: str, python: str,
             policy: str) -> dict[str, tuple[Any, ...]]:
    """variant -> the reasons resolve() rejects it for on this host (empty tuple: it runs)."""
    request = Request(framework=framework, version=f"=={version}", cuda="auto", python=python, platform=platform,
                      driver_policy=policy, allow_cpu=True)
    resolution = resolve(matrix, host, request)
    out: dict[str, tuple[Any, ...]] = {b.variant: () for b in matrix.builds(framework) if b.version == version}
    for rejection in resolution.rejected:
        if rejection.version == version:
            out[rejection.variant] = tuple(r for r in rejection.reasons if r.code != "python_unsupported")
    return out


def _python_for(release: ReleaseRow, python: str | None) -> str:
    return python if python and supports_python(release, python) else _oldest_python(release)


def _same_family(build: BuildRow, other: BuildRow) -> bool:
    if build.cuda:
        return bool(other.cuda)
    if build.rocm:
        return bool(other.rocm)
    return other.variant == "cpu"


def _alternative(matrix: Matrix, item: Pinned, targets: Sequence[Target], python: str | None,
                 policy: str) -> tuple[ReleaseRow, BuildRow] | None:
    """The build nearest to the pinned one that runs on every target: same release first, then the nearest
    releases (newer first on a tie), each judged by resolve()."""
    releases = list(matrix.releases(item.framework))
    here = next(i for i, r in enumerate(releases) if r.version == item.release.version)
    order = sorted(range(len(releases)), key=lambda i: (abs(i - here), -i))
    for index in order:
        release = releases[index]
        if python and not supports_python(release, python):
            continue
        py = _python_for(release, python)
        builds = [b for b in matrix.builds(item.framework) if b.version == release.version
                  and _same_family(item.build, b) and all(t.platform in b.platforms for t in targets)]
        working = [b for b in builds if all(
            not _verdict(matrix, item.framework, release.version, t.host, t.platform, py, policy).get(b.variant, ("?",))
            for t in targets)]
        if working:
            pinned = item.build

            def key(b: BuildRow) -> tuple[Any, ...]:
                return (b.variant == pinned.variant, b.system_cuda == pinned.system_cuda,
                        not b.variant.endswith("-local"), b.pypi_default, Version(b.cuda or b.rocm or "0"))

            return release, max(working, key=key)
    return None


def _pin_text(framework: str, release: ReleaseRow, build: BuildRow, manager: str, explicit: bool = False,
              companions: Iterable[str] = TORCH_COMPANIONS) -> str:
    """How to pin a build: the requirement, where it comes from, and torch's companions of the same variant.
    `explicit` spells the local label and index even for the build plain PyPI gives."""
    if manager == "conda":
        name = {"torch": "pytorch"}.get(framework, framework)
        return f"{name}={build.version} built for CUDA {build.cuda} (pytorch-cuda={build.cuda} or cuda-version={build.cuda})" \
            if build.cuda else f"{name}={build.version}"
    plain = build.pypi_default and not explicit
    text = requirements(framework, build)[0]
    if not plain and build.local and "+" not in text:
        text += f"+{build.local}"
    pins = []
    if framework == "torch":
        local = f"+{build.local}" if build.local and not plain else ""
        pins = [f"{p}=={getattr(release, p)}{local}" for p in TORCH_COMPANIONS if p in companions and getattr(release, p)]
    where = ""
    if build.index_url and not plain:
        where = f" from the index {build.index_url}"
    elif build.find_links:
        where = f" with -f {build.find_links}"
    extra = f" (and {', '.join(pins)})" if pins else ""
    return f"{text}{where}{extra}"


def _target_findings(matrix: Matrix, ctx: Context, item: Pinned, targets: Sequence[Target],
                     policy: str) -> list[Finding]:
    if not targets or item.build.variant == "cpu":
        return []
    python = _image_python(ctx)
    py = _python_for(item.release, python)
    grouped: dict[tuple[str, str], list[Target]] = {}
    fixes: dict[tuple[str, str], str] = {}
    for target in targets:
        verdict = _verdict(matrix, item.framework, item.build.version, target.host, target.platform, py, policy)
        for reason in verdict.get(item.build.variant, ()):
            message = reason.message.replace("this host has", f"{target.label} has")
            key = (reason.code, message)
            grouped.setdefault(key, []).append(target)
            fixes.setdefault(key, reason.fix)
    if not grouped:
        return []
    alternative = _alternative(matrix, item, targets, python, policy)
    alt_text = None
    if alternative is not None and alternative[1] != item.build:
        release, build = alternative
        scope = "every target" if len(targets) > 1 else targets[0].label
        companions = {p.name for p in ctx.pins if p.name in TORCH_COMPANIONS}
        explicit = bool(item.pin.local or item.pin.index_variant)
        alt_text = (f"pin {_pin_text(item.framework, release, build, item.pin.manager, explicit, companions)}, "
                    f"which runs on {scope}")
    findings = []
    for (code, message), hit in grouped.items():
        names = ", ".join(t.label for t in hit)
        if not any(t.label in message for t in hit):
            message += f" ({names})"
        if code == "driver_too_old":
            floor = driver_floor(matrix, item.build, policy, hit[0].platform).floor
            fix = f"upgrade the driver on {names} to >= {floor}"
            fix += f", or {alt_text}" if alt_text else ""
        elif alt_text:
            fix = alt_text
        else:
            fix = next(v for k, v in fixes.items() if k[0] == code)
        findings.append(_finding(item.pin.loc, code, ERROR, f"{item.pin.shown}: {message}", fix))
    return findings


# --------------------------------------------------------------------------- stale locks


_LOCK_COMMAND = re.compile(r"^#\s{2,}((?:pip-compile|uv pip compile|envforge lock)\b.*)$", re.MULTILINE)


def _lock_command(text: str) -> str | None:
    match = _LOCK_COMMAND.search(text)
    return match.group(1).strip() if match else None


def _compiled_pins(text: str) -> dict[str, tuple[int, str]]:
    """name -> (line, version) of every `name==version` line of a compiled requirements file."""
    out: dict[str, tuple[int, str]] = {}
    for number, line in _logical_lines(text):
        match = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?\s*==\s*([^\s;\\]+)", line)
        if match:
            out.setdefault(_canon(match.group(1)), (number, match.group(3)))
    return out


def _stale_requirements(project: Project, source: Path, lock: Path) -> list[Finding]:
    """A pip-compile / uv / envforge lock compiled from `source` (X.in -> X.txt / X.lock) that no longer satisfies it."""
    text = project.text(lock)
    command = _lock_command(text)
    if command is None and "--hash=" not in text and "# via" not in text:
        return []  # not a compiled file
    rel_lock, rel_source = project.rel(lock), project.rel(source)
    pins = _compiled_pins(text)
    findings = []
    source_text = project.text(source)
    for number, line in _logical_lines(source_text):
        if line.startswith("-"):
            continue
        text_req = re.split(r"\s+--?[A-Za-z]", line, maxsplit=1)[0]
        try:
            req = Requirement(text_req)
        except InvalidRequirement:
            continue
        if req.url or not project.env.admits(req.marker):
            continue
        name = _canon(req.name)
        fix = f"re-run `{command}`" if command else f"re-compile {rel_lock} from {rel_source}"
        if name not in pins:
            findings.append(_finding(Loc(rel_lock, 1), "stale_lock", ERROR,
                                     f"{rel_source}:{number} asks for {text_req}, and {rel_lock} does not pin "
                                     f"{name}: the lock no longer matches its inputs", fix))
            continue
        lock_line, version = pins[name]
        if req.specifier and not req.specifier.contains(version, prereleases=True):
            findings.append(_finding(Loc(rel_lock, lock_line), "stale_lock", ERROR,
                                     f"{rel_lock} pins {name}=={version}, but {rel_source}:{number} asks for "
                                     f"{text_req}: the lock no longer matches its inputs", fix))
    return findings


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _stale_manifest(project: Project, path: Path) -> list[Finding]:
    """envforge.lock.json: each lock file it lists unchanged, each input unchanged since the lock was made."""
    rel = project.rel(path)
    text = project.text(path)
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise BadInput(f"{rel}:{exc.lineno}: not valid JSON: {exc.msg}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("targets"), list):
        raise BadInput(f"{rel}: not an envforge.lock.json (no targets list)")
    lines = text.splitlines()
    command = doc.get("command") or "envforge lock"
    fix = f"re-run `{command}`"
    findings = []
    for target in doc["targets"]:
        if not isinstance(target, dict) or not isinstance(target.get("file"), str):
            raise BadInput(f"{rel}: a target without its lock file name; not an envforge.lock.json")
        name = target["file"]
        lock = path.parent / name
        loc = Loc(rel, _line_of(lines, [f'"file": "{name}"']))
        if not lock.is_file():
            findings.append(_finding(loc, "stale_lock", ERROR,
                                     f"{rel} lists the lock {name}, which is missing", fix))
        elif target.get("sha256") and _sha256(lock) != target["sha256"]:
            findings.append(_finding(Loc(project.rel(lock), 1), "stale_lock", ERROR,
                                     f"{project.rel(lock)} was changed after envforge wrote it (its sha256 differs "
                                     f"from the one in {rel})", fix))
    inputs = doc.get("inputs") or {}
    for kind in ("requirements", "pyproject"):
        for given, digest in (inputs.get(kind) or {}).items():
            candidates = [Path(given)] if Path(given).is_absolute() else [path.parent / given, project.root / given]
            found = next((c for c in candidates if c.is_file()), None)
            loc = Loc(rel, _line_of(lines, [json.dumps(given)]))
            if found is None:
                project.note(f"{loc}: the lock's input {given} was not found; not compared")
            elif _sha256(found) != digest:
                findings.append(_finding(loc, "stale_lock", ERROR,
                                         f"{project.rel(found)} changed since the lock was made: the lock no "
                                         f"longer matches its inputs", fix))
    return findings


def _stale_conda(project: Project, environment: Path, lock: Path, entries: dict[str, tuple[Loc, str, str]]) -> list[Finding]:
    rel_env = project.rel(environment)
    rel_lock = project.rel(lock)
    root = _yaml_compose(project.text(environment), rel_env)
    deps = _yaml_get(root, "dependencies")
    findings = []
    fix = f"re-run `conda-lock -f {rel_env}` (or `envforge lock --format conda`)"
    for item in getattr(deps, "value", []) if deps is not None else []:
        specs: list[tuple[str, str, str]] = []
        if _yaml_scalar(item):
            name, version, _ = _conda_split(str(item.value))
            specs.append((f"conda:{name}", version, str(item.value)))
        elif _yaml_get(item, "pip") is not None:
            for sub in _yaml_get(item, "pip").value:
                try:
                    req = Requirement(str(sub.value))
                except (InvalidRequirement, AttributeError):
                    continue
                specs.append((f"pip:{_canon(req.name)}", str(req.specifier), str(sub.value)))
        for key, version, written in specs:
            name = key.split(":", 1)[1]
            loc = Loc(rel_env, item.start_mark.line + 1)
            entry = entries.get(key)
            if entry is None:
                if entries:
                    findings.append(_finding(Loc(rel_lock, 1), "stale_lock", ERROR,
                                             f"{rel_env}:{loc.line} asks for {name}, and {rel_lock} has no "
                                             f"{name} for {project.env.platform}: the lock no longer matches its "
                                             "inputs", fix))
                continue
            pep440 = version if key.startswith("pip:") else conda_to_pep440(version)
            if not pep440:
                continue
            try:
                ok = SpecifierSet(pep440).contains(entry[1], prereleases=True)
            except (InvalidSpecifier, InvalidVersion):
                continue
            if not ok:
                findings.append(_finding(entry[0], "stale_lock", ERROR,
                                         f"{rel_lock} pins {name} {entry[1]}, but {rel_env}:{loc.line} asks for "
                                         f"{written}: the lock no longer matches its inputs", fix))
    return findings


# --------------------------------------------------------------------------- discovery


def file_kind(path: Path) -> str | None:
    name = path.name
    lower = name.lower()
    if name == "envforge.lock.json":
        return "manifest"
    if name == "pyproject.toml":
        return "pyproject"
    if lower == "pylock.toml" or re.fullmatch(r"pylock\.[^/]+\.toml", lower):
        return "pylock"
    if re.fullmatch(r"(.*\.)?conda-lock\.ya?ml", lower):
        return "conda-lock"
    if re.fullmatch(r"environment([-_.].*)?\.ya?ml", lower):
        return "conda-env"
    if lower in ("dockerfile", "containerfile") or lower.startswith(("dockerfile.", "containerfile.")) \
            or lower.endswith((".dockerfile", ".containerfile")):
        return "dockerfile"
    if name == ".python-version":
        return "python-version"
    if name in UNREAD:
        return "unread"
    if re.fullmatch(r"(.*[-_.])?requirements([-_.].*)?\.(txt|in|lock)", lower) \
            or re.fullmatch(r"constraints([-_.].*)?\.txt", lower):
        return "requirements"
    if path.parent.name == "requirements" and path.suffix in (".txt", ".in"):
        return "requirements"
    return None


def discover(root: Path, exclude: Sequence[str] = ()) -> list[tuple[str, Path]]:
    found = []
    for directory, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS and not _excluded(Path(directory) / d, root, exclude))
        for name in sorted(files):
            path = Path(directory) / name
            kind = file_kind(path)
            if kind and not _excluded(path, root, exclude):
                found.append((kind, path))
    return found


def _excluded(path: Path, root: Path, patterns: Sequence[str]) -> bool:
    rel = path.relative_to(root).as_posix()
    return any(fnmatch.fnmatch(rel, p) or fnmatch.fnmatch(rel, p.rstrip("/") + "/*") for p in patterns)


# --------------------------------------------------------------------------- the check


def _python_version_file(project: Project, path: Path) -> PythonFact | None:
    rel = project.rel(path)
    for number, line in enumerate(project.text(path).splitlines(), 1):
        match = re.match(r"^\s*(?:cpython-|python)?(\d+)\.(\d+)", line)
        if match:
            return PythonFact(Loc(rel, number), f".python-version {line.strip()}",
                              f"{match.group(1)}.{match.group(2)}", kind="file")
        if line.strip():
            break
    return None


def check(path: Path, targets: Sequence[Target], matrix: Matrix, *, driver_policy: str = "minor",
          exclude: Sequence[str] = ()) -> Report:
    """Every incompatibility in the project at `path` (a directory, or one file) on `targets`."""
    path = Path(path)
    if not path.exists():
        raise BadInput(f"cannot read {path}: no such file or directory")
    if path.is_file():
        kind = file_kind(path) or ("requirements" if path.suffix in (".txt", ".in", ".lock") else None)
        if kind is None:
            raise BadInput(f"{path}: not a file envforge check reads",
                           fix="pass a project directory, or a requirements*.txt, pyproject.toml, environment.yml, "
                               "conda-lock.yml, pylock.toml, Dockerfile or envforge.lock.json")
        root, files = path.parent, [(kind, path)]
    else:
        root, files = path, discover(path, exclude)
    platform = targets[0].platform if targets else "linux-64"
    project = Project(root, matrix, Env(platform=platform))

    # The project's Python: .python-version and requires-python (marker evaluation uses the first exact one).
    project_python: list[PythonFact] = []
    for kind, file in files:
        if kind == "python-version":
            fact = _python_version_file(project, file)
            if fact:
                project_python.append(fact)
    first = next((f.version for f in project_python if f.version), None)
    if first:
        project.env = replace(project.env, python=first)

    contexts: list[Context] = []
    findings: list[Finding] = []
    conda_locks: dict[Path, dict[str, tuple[Loc, str, str]]] = {}
    pyproject_python: list[PythonFact] = []
    for kind, file in files:
        if kind == "pyproject":
            found, python = project.pyproject(file)
            pyproject_python.extend(python)
            for ctx in found:
                ctx.python = python + project_python
            contexts.extend(found)
    for kind, file in files:
        if kind == "requirements":
            parsed = project.requirements(file)
            contexts.append(Context(project.rel(file), list(parsed.pins), pyproject_python + project_python))
        elif kind == "pylock":
            ctx, python = project.pylock(file)
            ctx.python = python or (pyproject_python + project_python)
            contexts.append(ctx)
        elif kind == "conda-env":
            ctx = project.conda_environment(file)
            contexts.append(ctx)
        elif kind == "conda-lock":
            ctx, entries = project.conda_lock(file)
            conda_locks[file] = entries
            contexts.append(ctx)
        elif kind == "dockerfile":
            reader = DockerfileReader(project, file)
            stage_contexts = reader.read()
            contexts.extend(stage_contexts)
            seen_images: set[str] = set()
            for stage in reader.stages:  # a build stage and a final stage on one base: one report, at the first
                if stage.image is not None and stage.image.ref not in seen_images:
                    seen_images.add(stage.image.ref)
                    findings.extend(_image_findings(matrix, stage.image, targets))
        elif kind == "manifest":
            findings.extend(_stale_manifest(project, file))
        elif kind == "unread":
            project.note(f"{project.rel(file)}: envforge check does not read this format yet; its pins were not checked")

    # Compiled requirements next to their inputs (pip-tools: X.in -> X.txt; uv / envforge: X.lock).
    for kind, file in files:
        if kind == "requirements" and file.suffix == ".in":
            for suffix in (".txt", ".lock"):
                lock = file.with_suffix(suffix)
                if lock.is_file():
                    findings.extend(_stale_requirements(project, file, lock))
    for lock, entries in conda_locks.items():
        for name in ("environment.yml", "environment.yaml"):
            environment = lock.parent / name
            if environment.is_file():
                findings.extend(_stale_conda(project, environment, lock, entries))

    for ctx in contexts:
        findings.extend(_judge(matrix, ctx, targets, driver_policy, platform))

    if not targets:
        project.note("no targets: driver and GPU-architecture checks were skipped "
                     "(pass --target driver=...,gpu=... or --fleet FILE)")
    unique = {(f.file, f.line, f.code, f.message): f for f in findings}
    ordered = sorted(unique.values(), key=lambda f: (f.file, f.line, f.code, f.message))
    return Report(root, ordered, list(project.read), list(targets), project.notes)


def _judge(matrix: Matrix, ctx: Context, targets: Sequence[Target], policy: str, platform: str) -> list[Finding]:
    findings: list[Finding] = []
    pinned: list[Pinned] = []
    for pin in ctx.pins:
        if pin.name not in FRAMEWORK_OF:
            continue
        if pin.name == "jaxlib" and any(p.name == "jax" for p in ctx.pins):
            continue
        item, problems = _identify(matrix, pin, ctx, platform)
        findings.extend(problems)
        if item is not None:
            pinned.append(item)
    findings.extend(_companion_findings(matrix, ctx, pinned))
    findings.extend(_python_findings(matrix, ctx, pinned))
    if ctx.docker:
        findings.extend(_docker_findings(matrix, ctx, pinned, targets))
    for item in pinned:
        findings.extend(_target_findings(matrix, ctx, item, targets, policy))
    return findings


# --------------------------------------------------------------------------- rendering


def display_path(report: Report, file: str, cwd: Path | None = None) -> str:
    """A finding's file relative to the working directory (what editors, GitHub and SARIF consumers expect)."""
    absolute = (report.root / file).resolve()
    base = (cwd or Path.cwd()).resolve()
    try:
        return absolute.relative_to(base).as_posix()
    except ValueError:
        return absolute.as_posix()


def render_text(report: Report, cwd: Path | None = None) -> str:
    lines = []
    for f in report.findings:
        lines.append(f"{display_path(report, f.file, cwd)}:{f.line}: {f.severity} [{f.code}] {f.message}")
        lines.append(f"    fix: {f.fix}")
    for note in report.notes:
        lines.append(f"note: {note}")
    errors = sum(1 for f in report.findings if f.severity == ERROR)
    warnings = len(report.findings) - errors
    targets = "; ".join(t.describe() for t in report.targets) or "none"
    if report.findings:
        lines.append(f"{errors} error(s), {warnings} warning(s) in {len(report.files)} file(s) read; targets: {targets}")
    else:
        lines.append(f"OK: no incompatibility in {len(report.files)} file(s) read; targets: {targets}")
    return "\n".join(lines)


def _escape_data(text: str) -> str:
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _escape_property(text: str) -> str:
    return _escape_data(text).replace(":", "%3A").replace(",", "%2C")


def render_github(report: Report, cwd: Path | None = None) -> str:
    """GitHub Actions workflow commands: `::error file=F,line=L,title=T::message` per finding."""
    lines = []
    for f in report.findings:
        command = "error" if f.severity == ERROR else "warning"
        props = ",".join(f"{k}={_escape_property(v)}" for k, v in (
            ("file", display_path(report, f.file, cwd)), ("line", str(f.line)), ("title", f"envforge {f.code}")))
        lines.append(f"::{command} {props}::{_escape_data(f'{f.message}. Fix: {f.fix}')}")
    errors = sum(1 for f in report.findings if f.severity == ERROR)
    lines.append(f"envforge check: {errors} error(s), {len(report.findings) - errors} warning(s) "
                 f"in {len(report.files)} file(s)")
    return "\n".join(lines)


def _rule_name(code: str) -> str:
    return "".join(part.capitalize() for part in code.split("_"))


def render_sarif(report: Report, cwd: Path | None = None) -> str:
    """SARIF 2.1.0 for code-scanning upload: one rule per reason code, one result per finding."""
    from . import __version__
    from .models import REASON_CODES

    codes = list(REASON_CODES)
    rules = [{
        "id": code,
        "name": _rule_name(code),
        "shortDescription": {"text": RULES[code]},
        "fullDescription": {"text": RULES[code]},
        "help": {"text": f"{RULES[code]} Each result's message ends with the fix."},
        "defaultConfiguration": {"level": "warning" if code == "unknown_release" else "error"},
        "properties": {"tags": ["compatibility", "deep-learning"]},
    } for code in codes]
    results = []
    for f in report.findings:
        uri = display_path(report, f.file, cwd)
        fingerprint = hashlib.sha256(f"{f.file}|{f.code}|{f.message}".encode()).hexdigest()[:32]
        location: dict[str, Any] = {"physicalLocation": {
            "artifactLocation": {"uri": uri, **({"uriBaseId": "%SRCROOT%"} if not uri.startswith("/") else {})},
            "region": {"startLine": f.line},
        }}
        results.append({
            "ruleId": f.code,
            "ruleIndex": codes.index(f.code),
            "level": "error" if f.severity == ERROR else "warning",
            "message": {"text": f"{f.message}. Fix: {f.fix}"},
            "locations": [location],
            "partialFingerprints": {"envforgeFinding/v1": fingerprint},
            "properties": {"fix": f.fix},
        })
    base = (cwd or Path.cwd()).resolve().as_uri().rstrip("/") + "/"
    doc = {
        "$schema": "https://json.schemastore.org/sarif-2.1.0.json",
        "version": "2.1.0",
        "runs": [{
            "tool": {"driver": {
                "name": "envforge",
                "version": __version__,
                "semanticVersion": __version__,
                "informationUri": "https://pypi.org/project/envforge/",
                "rules": rules,
            }},
            "originalUriBaseIds": {"%SRCROOT%": {"uri": base}},
            "invocations": [{"executionSuccessful": True}],
            "results": results,
        }],
    }
    return json.dumps(doc, indent=2)


RENDERERS = {"text": render_text, "github": render_github, "sarif": render_sarif}

__all__ = [
    "Finding", "Report", "Target", "check", "discover", "file_kind", "load_fleet", "make_target", "parse_target",
    "render_github", "render_sarif", "render_text", "conda_to_pep440", "parse_image",
]
