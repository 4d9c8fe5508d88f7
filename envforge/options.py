"""Shared click options, defined once and reused by resolve / lock / dockerfile / check / matrix.

Only click is imported here: `envforge --help` must stay cheap.
"""

from __future__ import annotations

from typing import Any, Callable

import click

F = Callable[..., Any]

framework_option = click.option(
    "--framework", "-f", "framework", metavar="torch|tensorflow|jax", help="Framework to resolve."
)
version_option = click.option(
    "--version", "version", metavar="SPEC",
    help="Release: a bare version (2.1, 2.1.*, 2.4.1) or a PEP 440 specifier ('>=2.3,<2.6').",
)
cuda_option = click.option(
    "--cuda", "cuda", metavar="X.Y|X|cpu|rocmX.Y|auto", default=None,
    help="CUDA runtime of the build: exact (11.8), any of a major (12), cpu, rocmX.Y, or auto (default: from the host).",
)
python_option = click.option(
    "--python", "python", metavar="3.11", help="Target Python version (default: the running interpreter)."
)
platform_option = click.option(
    "--platform", "platform", metavar="linux-64|linux-aarch64|osx-arm64|win-64",
    help="Target platform (default: this machine's).",
)
driver_option = click.option(
    "--driver", "driver", metavar="535.104.05", help="Assume this NVIDIA driver instead of probing (env ENVFORGE_DRIVER)."
)
gpu_option = click.option(
    "--gpu", "gpu", multiple=True, metavar="NAME",
    help="Assume this GPU, by NVML name or alias from gpus.toml (repeatable; env ENVFORGE_GPUS, comma-separated).",
)
arch_option = click.option(
    "--arch", "arch", multiple=True, metavar="X.Y",
    help="Assume a GPU of this compute capability (repeatable; env ENVFORGE_ARCH).",
)
no_detect_option = click.option(
    "--no-detect", "no_detect", is_flag=True, help="Do not probe this machine; use only the overrides given."
)
driver_policy_option = click.option(
    "--driver-policy", "driver_policy", type=click.Choice(["minor", "strict"]), default="minor", show_default=True,
    help="minor: CUDA minor-version-compatibility floors; strict: each toolkit's own driver floor.",
)
allow_cpu_option = click.option(
    "--allow-cpu", "allow_cpu", is_flag=True, help="Allow a CPU build when no GPU build fits (never silent)."
)
json_option = click.option("--json", "as_json", is_flag=True, help="Print one JSON document on stdout.")

HOST_OPTIONS = (driver_option, gpu_option, arch_option, no_detect_option)
TARGET_OPTIONS = (
    framework_option, version_option, cuda_option, python_option, platform_option,
    *HOST_OPTIONS, driver_policy_option, allow_cpu_option,
)


def apply(options: tuple[Callable[[F], F], ...]) -> Callable[[F], F]:
    """Decorate a command with a group of options, in the order listed."""

    def decorator(func: F) -> F:
        for option in reversed(options):
            func = option(func)
        return func

    return decorator


target_options = apply(TARGET_OPTIONS)
host_options = apply(HOST_OPTIONS)

# `lock` takes several targets at once: --cuda and --platform repeat there.
cuda_multi_option = click.option(
    "--cuda", "cuda", metavar="X.Y|X|cpu|rocmX.Y|auto", multiple=True,
    help="CUDA runtime of the build (repeatable: one lock per target): 11.8, 12, cpu, rocmX.Y, auto (default).",
)
platform_multi_option = click.option(
    "--platform", "platform", metavar="linux-64|linux-aarch64|osx-arm64|win-64", multiple=True,
    help="Target platform (repeatable; default: this machine's).",
)
LOCK_TARGET_OPTIONS = (
    framework_option, version_option, cuda_multi_option, python_option, platform_multi_option,
    *HOST_OPTIONS, driver_policy_option, allow_cpu_option,
)
lock_target_options = apply(LOCK_TARGET_OPTIONS)
