"""Dockerfiles from a resolution or a lock: the base image, the Python, the venv, the guard.

Renderers return strings (templates/Dockerfile.j2 for pip locks,
templates/Dockerfile.conda.j2 for conda locks, through Jinja2, imported lazily);
the CLI writes the files. The build context a Dockerfile expects is the lock
directory: the lock file, envforge-guard.py and, for air-gapped pip builds, a
wheelhouse/ directory.
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

# The conda flavour copies micromamba's static executable out of this image (the pattern of
# mamba-org/micromamba-docker docs/advanced_usage.rst, "Adding micromamba to an existing Docker image",
# which starts `FROM mambaorg/micromamba:2.6.1 as micromamba`). 2.6.1 is the newest tag read in that
# repository (tag v2.6.1 = a815800c, 2026-05-13; debian.Dockerfile `ARG VERSION=2.6.1`, `ENV
# MAMBA_EXE="/bin/micromamba"`, and it copies /etc/ssl/certs/ca-certificates.crt into the image).
# Newer tags (2.9.0) were seen only in third-party Dockerfiles, so they are not the default.
# Override with --micromamba-image.
MICROMAMBA_IMAGE = "mambaorg/micromamba:2.6.1"
CONDA_PREFIX = "/opt/conda-env"
# A CPU conda environment brings its own Python and libraries; the base needs only a glibc at least as new
# as the lock's (__glibc, envforge.lock.conda.DEFAULT_GLIBC). Debian 12 is what micromamba-docker's images
# were based on from 1.5 to 2.3.1 (its CHANGELOG; debian:13-slim since 2.3.2).
CONDA_CPU_BASE = "debian:bookworm-slim"
# glibc of the base images envforge picks (packages.ubuntu.com / packages.debian.org, package libc6:
# bionic 2.27, focal 2.31, jammy 2.35, noble 2.39; bullseye 2.31, bookworm 2.36).
DISTRO_GLIBC = {"ubuntu18.04": "2.27", "ubuntu20.04": "2.31", "ubuntu22.04": "2.35", "ubuntu24.04": "2.39",
                "debian11": "2.31", "debian12": "2.36", "bullseye": "2.31", "bookworm": "2.36"}
DOCKER_PLATFORMS = {"linux-64": "linux/amd64", "linux-aarch64": "linux/arm64"}

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
    format: str = "pip"  # pip | conda
    platforms: tuple[str, ...] = ()  # a conda lock's platforms (one Dockerfile serves them all)

    @classmethod
    def from_resolution(cls, res: Resolution, lock_file: str, base_why: str = "", format: str = "pip",
                        platforms: tuple[str, ...] = ()) -> "Target":
        sel = res.selected
        assert sel is not None
        return cls(sel.framework, sel.version, sel.variant, sel.cuda, sel.min_driver, sel.arch,
                   res.request.python or "3.11", res.request.platform, sel.base_image, base_why, lock_file,
                   format, platforms or (res.request.platform,))

    @classmethod
    def from_manifest(cls, entry: dict[str, Any], base_why: str = "", format: str = "pip",
                      platforms: tuple[str, ...] = ()) -> "Target":
        return cls(entry["framework"], entry["version"], entry["variant"], entry.get("cuda"),
                   entry.get("min_driver"), tuple(entry.get("arch") or ()), entry["python"], entry["platform"],
                   entry.get("base_image"), base_why, entry["file"], format, platforms or (entry["platform"],))


def is_conda_lock_file(name: str) -> bool:
    return name.startswith("conda-lock") and name.endswith(".yml")


def dockerfile_name(lock_file: str, several: bool) -> str:
    """Dockerfile, or Dockerfile.<variant> beside a lock of several targets."""
    if not several:
        return "Dockerfile"
    stem = lock_file.removesuffix(".lock").removesuffix(".yml")
    return "Dockerfile." + stem.removeprefix("requirements-").removeprefix("conda-lock-")


def targets_from_lock(lock_dir: Path) -> list[Target]:
    path = lock_dir / MANIFEST
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BadInput(f"{path} not found: --lock takes a directory written by `envforge lock`") from None
    except (OSError, ValueError) as exc:
        raise BadInput(f"cannot read {path}: {exc}") from None
    fmt = doc.get("format") or "pip"
    if fmt not in ("pip", "conda"):
        raise BadInput(f"{path}: Dockerfiles are made from pip or conda locks, not {fmt!r}",
                       fix="lock with --format pip (the default) or --format conda")
    try:
        entries = doc["targets"]
        if fmt == "conda":  # environment.yml rows describe the same targets as the lock rows
            return [Target.from_manifest(t, format="conda", platforms=lock_platforms(lock_dir / t["file"]))
                    for t in entries if is_conda_lock_file(t["file"])]
        return [Target.from_manifest(t) for t in entries]
    except (KeyError, TypeError) as exc:
        raise BadInput(f"{path}: not an envforge lock manifest (missing {exc})") from None


def lock_platforms(path: Path) -> tuple[str, ...]:
    """metadata.platforms of a conda-lock.yml."""
    import yaml

    try:
        platforms = yaml.safe_load(path.read_text(encoding="utf-8"))["metadata"]["platforms"]
    except FileNotFoundError:
        raise BadInput(f"{path} not found: the lock directory is incomplete (re-run `envforge lock`)") from None
    except OSError as exc:
        raise BadInput(f"cannot read {path}: {exc.strerror}") from None
    except (yaml.YAMLError, KeyError, TypeError) as exc:
        raise BadInput(f"{path} is not a conda-lock file ({type(exc).__name__}: {exc})") from None
    if not isinstance(platforms, list) or not platforms:
        raise BadInput(f"{path}: metadata.platforms is empty")
    return tuple(str(p) for p in platforms)


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
           wheelhouse: str | None = None, micromamba_image: str | None = None, pin: bool = False) -> str:
    """The Dockerfile text for one target. pin: resolve the images' tags to digests (exit 3 offline)."""
    if target.format == "conda":
        if wheelhouse:
            raise BadInput("--wheelhouse is for pip locks: a conda lock installs from its channel URLs",
                           fix="lock with --conda-channel NAME=URL pointing at a mirror the build can reach")
        return render_conda(target, command=command, matrices_read=matrices_read, base_image=base_image,
                            micromamba_image=micromamba_image, pin=pin)
    if micromamba_image:
        raise BadInput("--micromamba-image applies to conda locks (--format conda)")
    from .render import header, template

    image = base_image or target.base_image
    if not image:
        raise BadInput(f"envforge knows no base image for {target.framework} {target.version} ({target.variant})",
                       fix="pass --base-image")
    why = "given with --base-image" if base_image else (target.base_why or _default_why(target))
    if pin:
        image, why = pin_digest(image), why + "; pinned to its digest (--pin-digest)"
    python_why, build_setup, runtime_setup, exe = python_plan(image, target.python)
    return template("Dockerfile.j2").render(
        header=header(command, matrices_read).rstrip("\n"),
        base_image=image, base_why=why, python_why=python_why,
        python_setup_build=build_setup, python_setup_runtime=runtime_setup, python_exe=exe,
        lock_file=target.lock_file, wheelhouse=wheelhouse,
        **_labels(target, f"{target.framework} {target.version} ({target.variant})", (target.platform,),
                  ",".join(target.arch)),
    )


def _labels(target: Target, title: str, platforms: tuple[str, ...], arch: str) -> dict[str, str]:
    """The values of templates/_labels.j2 (and of ENVFORGE_MIN_DRIVER / ENVFORGE_TARGET), read back by smoke."""
    accel = f"CUDA {target.cuda}" if target.cuda else "CPU"
    return dict(title=title, framework=target.framework, version=target.version, variant=target.variant,
                description=f"{title}, {accel}, Python {target.python}, {', '.join(platforms)}; made by envforge",
                cuda=target.cuda or "", min_driver=target.min_driver or "", arch=arch, python=target.python,
                format="" if target.format == "pip" else target.format, envforge_version=__version__)


def conda_base_image(target: Target) -> tuple[str | None, str]:
    """(image, why) for a conda environment: it brings Python, CUDA libraries and cuDNN itself."""
    from .matrix import load
    from .resolve import cuda_image

    if not target.cuda:
        return CONDA_CPU_BASE, ("a CPU conda environment brings its own Python and libraries: a slim Debian "
                                f"(glibc {DISTRO_GLIBC['bookworm']}) is enough")
    image, cuda = cuda_image(load(), target.cuda, "base")
    if image is None:
        return None, cuda
    return (image, f"the conda environment carries its CUDA libraries (cuda-version {target.cuda}) and cuDNN: the "
            f"smallest nvidia/cuda flavour (base), CUDA {cuda}, not newer than the build's (NVIDIA_REQUIRE_CUDA), "
            "so the NVIDIA container runtime mounts the driver and checks it")


def render_conda(target: Target, *, command: str, matrices_read: str, base_image: str | None = None,
                 micromamba_image: str | None = None, pin: bool = False) -> str:
    """The Dockerfile for a conda lock: micromamba installs conda-lock.yml in a build stage."""
    from packaging.version import Version

    from .lock.conda import DEFAULT_GLIBC
    from .render import header, template

    if base_image:
        image, why = base_image, "given with --base-image"
    else:
        image, why = conda_base_image(target)
        if image is None:
            raise BadInput(f"envforge knows no base image for {target.framework} {target.version} "
                           f"({target.variant}): {why}", fix="pass --base-image")
    distro = next((d for d in DISTRO_GLIBC if d in image), None)
    if distro and Version(DISTRO_GLIBC[distro]) < Version(DEFAULT_GLIBC):
        raise BadInput(f"{image} has glibc {DISTRO_GLIBC[distro]}; the conda lock was solved for glibc "
                       f">= {DEFAULT_GLIBC} (__glibc) and its packages may not run there",
                       fix="pass --base-image with a newer distribution (e.g. nvidia/cuda:<cuda>-base-ubuntu22.04)")
    major, _, minor = target.python.partition(".")
    if not (major.isdigit() and minor.isdigit()):
        raise BadInput(f"Python {target.python!r} is not major.minor")
    micromamba_image = micromamba_image or MICROMAMBA_IMAGE
    if pin:  # micromamba-docker's docs/tags.rst: "reference the image's sha256 digest and not use tags"
        image, why = pin_digest(image), why + "; pinned to its digest (--pin-digest)"
        micromamba_image = pin_digest(micromamba_image)
    platforms = target.platforms or (target.platform,)
    return template("Dockerfile.conda.j2").render(
        header=header(command, matrices_read).rstrip("\n"),
        base_image=image, base_why=why, python_tuple=f"{major}, {minor}",
        micromamba_image=micromamba_image, prefix=CONDA_PREFIX,
        lock_file=target.lock_file, lock_platforms=", ".join(platforms),
        docker_platforms=" or ".join(DOCKER_PLATFORMS.get(p, p) for p in platforms),
        # The GPU architectures are conda-forge's build flags, which envforge's matrices do not hold (the
        # pip build's list would be a guess): the label stays empty rather than wrong.
        **_labels(target, f"{target.framework} {target.version} ({target.variant}, conda)", platforms, arch=""),
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
    """image:tag -> image:tag@sha256:..., asking the registry (Docker Hub's token flow). Exit 3 when unreachable.

    The tag stays for readers and for envforge's own reading of the distribution in it (Docker pulls by the
    digest and ignores the tag when both are given)."""
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
    return f"{image.split('@')[0]}@{digest}"
