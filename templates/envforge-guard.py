#!/usr/bin/env python3
"""envforge start-up guard: refuse to start on a host driver older than this image needs.

A CUDA runtime newer than the driver fails later with "CUDA driver version is
insufficient" or "no kernel image is available"; this says so at start-up,
with the fix. Reads the host driver through NVML (libnvidia-ml.so.1, mounted
by the NVIDIA container runtime). ENVFORGE_SKIP_GUARD=1 bypasses it.
Standard library only: the image need not contain envforge.
"""

import ctypes
import os
import sys


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
    try:
        os.execvp(argv[0], argv)
    except OSError as exc:
        _fail(f"cannot start {argv[0]!r}: {exc.strerror}")


if __name__ == "__main__":
    main()
