"""Dockerfiles from a resolution or a lock: the base image, the Python, the venv, the guard.

Renderers return strings (templates/Dockerfile.j2 through Jinja2, imported
lazily); the CLI writes the files. The build context a Dockerfile expects is
the lock directory: the lock file, envforge-guard.py and, for air-gapped builds,
a wheelhouse/ directory.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import __version__
from .errors import BadInput, EnvironmentFailure
from .lock.pip import MANIFEST
from .models import Resolution

GUARD_FILE = "envforge-guard.py"

# The Python a base image brings (or its distribution packages); read from the distributions'
# package pages (packages.ubuntu.com, python3 in bionic / focal / jammy / noble: 3.6.7, 3.8.2,
# 3.10.6, 3.12.3; packages.debian.org, bullseye / bookworm: 3.9, 3.11). Also used by `envforge check`.
DISTRO_PYTHON = {"ubuntu18.04": "3.6", "ubuntu20.04": "3.8", "ubuntu22.04": "3.10", "ubuntu24.04": "3.12",
                 "debian11": "3.9", "debian12": "3.11", "bullseye": "3.9", "bookworm": "3.11"}


@dataclass(frozen=True)
class Target:
    """What a Dockerfile needs to know about one locked target."""

    framework: str
    version: str
    variant: str
    cuda: str | None
    min_driver: str | None
    arch: tuple[str, ...]
    python: str
    platform: str
    base_image: str | None
    base_why: str
    lock_file: str

    @classmethod
    def from_resolution(cls, res: Resolution, lock_file: str, base_why: str = "") -> "Target":
        sel = res.selected
        assert sel is not None
        return cls(sel.framework, sel.version, sel.variant, sel.cuda, sel.min_driver, sel.arch,
                   res.request.python or "3.11", res.request.platform, sel.base_image, base_why, lock_file)

    @classmethod
    def from_manifest(cls, entry: dict[str, Any], base_why: str = "") -> "Target":
        return cls(entry["framework"], entry["version"], entry["variant"], entry.get("cuda"),
                   entry.get("min_driver"), tuple(entry.get("arch") or ()), entry["python"], entry["platform"],
                   entry.get("base_image"), base_why, entry["file"])


def targets_from_lock(lock_dir: Path) -> list[Target]:
    path = lock_dir / MANIFEST
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BadInput(f"{path} not found: --lock takes a directory written by `envforge lock`") from None
    except (OSError, ValueError) as exc:
        raise BadInput(f"cannot read {path}: {exc}") from None
    if doc.get("format") not in ("pip", None):
        raise BadInput(f"{path}: Dockerfiles are made from pip-format locks, not {doc.get('format')!r}",
                       fix="lock with --format pip (the default)")
    try:
        return [Target.from_manifest(t) for t in doc["targets"]]
    except (KeyError, TypeError) as exc:
        raise BadInput(f"{path}: not an envforge lock manifest (missing {exc})") from None


def python_plan(base_image: str, python: str) -> tuple[str, str, str, str]:
    """(why, build-stage shell, runtime-stage shell, python executable) for getting `python` into the image."""
    exe = f"python{python}"
    official = re.match(r"^(?:docker\.io/)?(?:library/)?python:(\d+\.\d+)", base_image)
    if official:
        if official.group(1) != python:
            raise BadInput(f"the base image {base_image} has Python {official.group(1)}, the lock is for {python}",
                           fix=f"use --base-image python:{python}-slim, or lock for --python {official.group(1)}")
        return f"the base image is the official Python {python} image", "", "", exe
    distro = next((d for d in DISTRO_PYTHON if d in base_image), None)
    apt = "apt-get update && apt-get install -y --no-install-recommends"
    clean = "rm -rf /var/lib/apt/lists/*"
    check = f"{exe} -c 'import venv' 2>/dev/null"
    if distro is None:
        guard = (f"{check} || {{ echo 'envforge: the base image has no working {exe} with venv: install it, "
                 f"or choose a base with Python {python}' >&2; exit 1; }}")
        return (f"taken from the base image (its Python is not known to envforge; the build stops if {exe} "
                f"is missing)", guard, "", exe)
    if DISTRO_PYTHON[distro] == python:
        return (f"{distro}'s own Python",
                f"{check} || {{ {apt} {exe} {exe}-venv && {clean}; }}",
                f"command -v {exe} >/dev/null || {{ {apt} {exe} && {clean}; }}", exe)
    if distro.startswith("ubuntu"):
        ppa = (f"{apt} software-properties-common gpg-agent && add-apt-repository -y ppa:deadsnakes/ppa && "
               f"{apt} {{pkgs}} && apt-get purge -y --auto-remove software-properties-common gpg-agent && {clean}")
        return (f"{distro} ships Python {DISTRO_PYTHON[distro]}; {python} comes from the deadsnakes PPA",
                ppa.format(pkgs=f"{exe} {exe}-venv"), ppa.format(pkgs=exe), exe)
    raise BadInput(f"{base_image} ships Python {DISTRO_PYTHON[distro]}, the lock is for {python}",
                   fix=f"lock for --python {DISTRO_PYTHON[distro]}, or pass --base-image python:{python}-slim")


def render(target: Target, *, command: str, matrices_read: str, base_image: str | None = None,
           wheelhouse: str | None = None) -> str:
    """The Dockerfile text for one target."""
    from .render import header, template

    image = base_image or target.base_image
    if not image:
        raise BadInput(f"envforge knows no base image for {target.framework} {target.version} ({target.variant})",
                       fix="pass --base-image")
    why = "given with --base-image" if base_image else (target.base_why or _default_why(target))
    python_why, build_setup, runtime_setup, exe = python_plan(image, target.python)
    title = f"{target.framework} {target.version} ({target.variant})"
    accel = f"CUDA {target.cuda}" if target.cuda else "CPU"
    return template("Dockerfile.j2").render(
        header=header(command, matrices_read).rstrip("\n"),
        base_image=image, base_why=why, python=target.python, python_why=python_why,
        python_setup_build=build_setup, python_setup_runtime=runtime_setup, python_exe=exe,
        lock_file=target.lock_file, wheelhouse=wheelhouse,
        title=title, description=f"{title}, {accel}, Python {target.python}, {target.platform}; made by envforge",
        framework=target.framework, version=target.version, variant=target.variant, cuda=target.cuda or "",
        min_driver=target.min_driver or "", arch=",".join(target.arch), envforge_version=__version__,
    )


def _default_why(target: Target) -> str:
    if not target.cuda:
        return "a CPU build needs no CUDA userspace: the official slim Python image"
    return (f"the smallest nvidia/cuda flavour that works for this build (CUDA {target.cuda}; "
            "see `envforge resolve` for the reasoning)")


def guard_text() -> str:
    from .render import template_path

    return template_path(GUARD_FILE).read_text(encoding="utf-8")


def pin_digest(image: str) -> str:
    """image:tag -> image@sha256:..., asking the registry (Docker Hub's token flow). Exit 3 when unreachable."""
    import urllib.error
    import urllib.request

    match = re.match(r"^(?:(?P<registry>[^/]+\.[^/]+)/)?(?P<repo>[^:@]+)(?::(?P<tag>[^@]+))?$", image)
    if not match:
        raise BadInput(f"cannot read image name {image!r}")
    registry = match.group("registry") or "registry-1.docker.io"
    repo = match.group("repo")
    if registry == "registry-1.docker.io" and "/" not in repo:
        repo = f"library/{repo}"
    tag = match.group("tag") or "latest"
    accept = ", ".join([
        "application/vnd.oci.image.index.v1+json", "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.docker.distribution.manifest.v2+json", "application/vnd.oci.image.manifest.v1+json"])
    try:
        headers = {"Accept": accept}
        if registry == "registry-1.docker.io":
            token_url = f"https://auth.docker.io/token?service=registry.docker.io&scope=repository:{repo}:pull"
            with urllib.request.urlopen(token_url, timeout=20) as response:
                headers["Authorization"] = "Bearer " + json.load(response)["token"]
        request = urllib.request.Request(f"https://{registry}/v2/{repo}/manifests/{tag}", headers=headers,
                                         method="HEAD")
        with urllib.request.urlopen(request, timeout=20) as response:
            digest = response.headers.get("Docker-Content-Digest")
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            raise BadInput(f"{image}: the registry has no such tag") from None
        raise EnvironmentFailure(f"cannot resolve {image} to a digest: {registry} answered HTTP {exc.code}") from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise EnvironmentFailure(
            f"cannot resolve {image} to a digest: {registry} is unreachable ({getattr(exc, 'reason', exc)})",
            fix="drop --pin-digest, or run where the registry is reachable",
        ) from None
    if not digest:
        raise EnvironmentFailure(f"{registry} gave no digest for {image}")
    name = image.split("@")[0].rsplit(":", 1)[0] if match.group("tag") else image
    return f"{name}@{digest}"
