#!/usr/bin/env python3
"""envforge start-up guard: refuse to start on a host driver older than this image needs.

A CUDA runtime newer than the driver fails later with "CUDA driver version is
insufficient" or "no kernel image is available"; this says so at start-up,
with the fix. Reads the host driver through NVML (libnvidia-ml.so.1, mounted
by the NVIDIA container runtime). ENVFORGE_SKIP_GUARD=1 bypasses it.

In a conda image (CONDA_PREFIX set), it then activates the environment the way
`micromamba activate` does for a POSIX shell (libmamba/src/core/activation.cpp,
mamba @ 03564bf): the variables of etc/conda/env_vars.d/* (sorted) and of
conda-meta/state's "env_vars" (which win), names upper-cased, "***unset***"
unsetting; then etc/conda/activate.d/*.sh sourced in sorted order, before the
command. Standard library only: the image need not contain envforge.
"""

import ctypes
import glob
import json
import os
import shlex
import shutil
import sys

UNSET = "***unset***"


def _fail(message: str) -> None:
    sys.stderr.write(f"envforge-guard: {message}\n")
    sys.stderr.write("envforge-guard: set ENVFORGE_SKIP_GUARD=1 to start anyway\n")
    sys.exit(1)


def _version(text: str) -> tuple:
    return tuple(int(p) for p in text.split(".") if p.isdigit())


def host_driver() -> str:
    try:
        nvml = ctypes.CDLL("libnvidia-ml.so.1")
    except OSError:
        _fail(
            "this image needs an NVIDIA GPU, but no NVIDIA driver is visible in the container "
            "(libnvidia-ml.so.1 not found). Run it with the NVIDIA container toolkit: "
            "docker run --gpus all ... (or --runtime=nvidia)"
        )
    if nvml.nvmlInit_v2() != 0:
        _fail("NVML failed to initialise in the container: check `nvidia-smi` on the host")
    buffer = ctypes.create_string_buffer(96)
    if nvml.nvmlSystemGetDriverVersion(buffer, ctypes.c_uint(96)) != 0:
        _fail("could not read the host driver version through NVML")
    return buffer.value.decode()


def _json_vars(path, key=None):
    try:
        with open(path, encoding="utf-8") as handle:
            doc = json.load(handle)
    except (OSError, ValueError) as exc:
        sys.stderr.write(f"envforge-guard: could not read {path}: {exc}\n")
        return {}
    doc = doc.get(key, {}) if key and isinstance(doc, dict) else doc
    return {str(k).upper(): str(v) for k, v in doc.items()} if isinstance(doc, dict) else {}


def activate(argv):
    """Apply a conda environment's activation to this process; return the command to exec."""
    prefix = os.environ.get("CONDA_PREFIX", "")
    if not prefix or not os.path.isdir(os.path.join(prefix, "conda-meta")):
        return argv
    variables = {}
    for path in sorted(glob.glob(os.path.join(prefix, "etc", "conda", "env_vars.d", "*"))):
        variables.update(_json_vars(path))
    state = os.path.join(prefix, "conda-meta", "state")
    if os.path.exists(state):
        variables.update(_json_vars(state, "env_vars"))
    os.environ.setdefault("CONDA_DEFAULT_ENV", prefix)
    os.environ.setdefault("CONDA_SHLVL", "1")
    for name, value in variables.items():
        if value == UNSET:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    scripts = sorted(glob.glob(os.path.join(prefix, "etc", "conda", "activate.d", "*.sh")))
    if not scripts:
        return argv
    # Packages write these for the user's shell, which is bash in conda's own setups; sh where there is none.
    shell = shutil.which("bash") or "/bin/sh"
    sources = "; ".join(f". {shlex.quote(s)}" for s in scripts)
    return [shell, "-c", f'{sources}; exec "$@"', "envforge-guard", *argv]


def main() -> None:
    argv = sys.argv[1:] or ["python"]
    need = os.environ.get("ENVFORGE_MIN_DRIVER", "")
    label = os.environ.get("ENVFORGE_TARGET", "this image")
    if os.environ.get("ENVFORGE_SKIP_GUARD") == "1":
        sys.stderr.write("envforge-guard: skipped (ENVFORGE_SKIP_GUARD=1)\n")
    elif not need:
        sys.stderr.write(f"envforge-guard: {label} runs on the CPU: no driver needed\n")
    else:
        have = host_driver()
        if _version(have) < _version(need):
            _fail(
                f"{label} needs NVIDIA driver >= {need}, but the host has {have}. "
                f"Upgrade the host driver to >= {need}, or build an image for this driver: "
                f"envforge lock --driver {have} ... && envforge build"
            )
        sys.stderr.write(f"envforge-guard: host driver {have} >= {need} for {label}: OK\n")
    argv = activate(argv)
    try:
        os.execvp(argv[0], argv)
    except OSError as exc:
        _fail(f"cannot start {argv[0]!r}: {exc.strerror}")


if __name__ == "__main__":
    main()
