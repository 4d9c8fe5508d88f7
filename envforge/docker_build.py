"""`envforge build`: docker build through the docker SDK, with readable streamed progress; wheelhouses.

The docker package is imported lazily. An unreachable daemon is exit 3 with the
way to start it or point at it.
"""

from __future__ import annotations

import functools
import os
import re
import sys
from pathlib import Path
from typing import Any, Callable

from .errors import BadInput, EnvforgeError, EnvironmentFailure, ToolNotFound
from .proc import isolated_env, run


class BuildFailed(EnvforgeError):
    exit_code = 1
    code = "build_failed"


@functools.lru_cache(maxsize=1)
def client() -> Any:
    """The Docker client, connected and pinged once per process."""
    try:
        import docker
    except ImportError:
        raise ToolNotFound("the docker Python SDK is not installed", fix="pip install docker") from None
    try:
        handle = docker.from_env(timeout=600)
        handle.ping()
        return handle
    except Exception as exc:  # docker.errors.DockerException and the requests errors under it
        where = os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
        raise EnvironmentFailure(
            f"cannot reach the Docker daemon at {where}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}",
            fix="start it (`sudo systemctl start docker`, or `dockerd &`), or point DOCKER_HOST at a reachable "
            "daemon (e.g. DOCKER_HOST=ssh://user@gpu-box)",
        ) from None


def build(context: Path, tag: str, dockerfile: str = "Dockerfile",
          progress: Callable[[str], None] = lambda line: print(line, file=sys.stderr)) -> str:
    """Build `context` into `tag`; stream the build's own lines to `progress`. Returns the image id."""
    if not (context / dockerfile).is_file():
        raise BadInput(f"{context / dockerfile} not found", fix="run `envforge lock` (it writes one) or "
                       "`envforge dockerfile --lock DIR`")
    api = client().api
    image_id = ""
    last: list[str] = []
    try:
        for chunk in api.build(path=str(context), dockerfile=dockerfile, tag=tag, rm=True, forcerm=True,
                               decode=True, pull=False):
            if "stream" in chunk:
                for line in chunk["stream"].splitlines():
                    if line.strip():
                        progress(line.rstrip())
                        last = (last + [line.rstrip()])[-20:]
            if "aux" in chunk and "ID" in chunk["aux"]:
                image_id = chunk["aux"]["ID"]
            if "error" in chunk:
                raise BuildFailed(f"docker build of {context} failed: {chunk['error'].strip()}\n"
                                  + "\n".join("  " + line for line in last[-10:]),
                                  fix="read the step output above; a missing wheel in an air-gapped build "
                                  "means the wheelhouse does not match the lock's target")
    except EnvforgeError:
        raise
    except Exception as exc:  # the daemon went away mid-build
        raise EnvironmentFailure(f"docker build of {context} was interrupted: {exc}") from None
    return image_id or tag


def nvidia_runtime() -> bool:
    """Whether the daemon has the NVIDIA container runtime (so --gpus can be honoured)."""
    info = client().info()
    return "nvidia" in (info.get("Runtimes") or {})


LINUX_TAGS = {
    "linux-64": ["manylinux_2_%d_x86_64" % n for n in range(40, 16, -1)] + ["manylinux2014_x86_64",
                                                                             "manylinux1_x86_64", "linux_x86_64"],
    "linux-aarch64": ["manylinux_2_%d_aarch64" % n for n in range(40, 16, -1)] + ["manylinux2014_aarch64",
                                                                                   "linux_aarch64"],
}


def fill_wheelhouse(lock_file: Path, wheelhouse: Path, python: str, platform: str, verbose: bool = False) -> None:
    """Download every wheel of the lock, hash-checked, for the target Python and platform (pip download)."""
    if platform not in LINUX_TAGS:
        raise BadInput(f"wheelhouses are for Linux images; the lock targets {platform}")
    wheelhouse.mkdir(parents=True, exist_ok=True)
    major, minor = python.split(".")
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--require-hashes", "--only-binary=:all:",
           "--implementation", "cp", "--python-version", f"{major}{minor}", "-d", str(wheelhouse),
           "-r", str(lock_file)]
    for tag in LINUX_TAGS[platform]:
        cmd += ["--platform", tag]
    # no timeout: a CUDA lock's wheels are gigabytes
    proc = run(cmd, tool="pip download", install_hint="python -m ensurepip", env=isolated_env(), timeout=None,
               verbose=verbose)
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.strip().splitlines()[-12:])
        if re.search(r"connection|resolve|timed out|unreachable", proc.stderr, re.IGNORECASE):
            raise EnvironmentFailure(f"pip download could not reach the index:\n{tail}")
        raise BuildFailed(f"pip download could not fetch the lock's wheels for Python {python} on {platform}:\n{tail}")
