"""The Locker interface: one adapter per external resolver (uv, pip-tools), same input, same kind of output."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

PYPI_SIMPLE = "https://pypi.org/simple"

# uv's --python-platform for each envforge platform. manylinux_2_28 admits every older manylinux tag.
UV_PLATFORMS = {
    "linux-64": "x86_64-manylinux_2_28",
    "linux-aarch64": "aarch64-manylinux_2_28",
    "osx-arm64": "aarch64-apple-darwin",
    "win-64": "x86_64-pc-windows-msvc",
}


@dataclass(frozen=True)
class IndexPlan:
    """Where packages may come from.

    `framework_packages` are the only distributions allowed from `framework_index`
    (e.g. torch, torchvision, torchaudio from download.pytorch.org); everything
    else must come from `default_index`: no dependency confusion.
    """

    default_index: str = PYPI_SIMPLE
    framework_index: str | None = None
    framework_packages: tuple[str, ...] = ()
    find_links: str | None = None

    def pip_lines(self) -> list[str]:
        """The index lines a requirements file needs so `pip install --require-hashes -r` works alone."""
        lines = [f"--index-url {self.default_index}"]
        if self.framework_index:
            lines.append(f"--extra-index-url {self.framework_index}")
        if self.find_links:
            lines.append(f"--find-links {self.find_links}")
        return lines


@dataclass(frozen=True)
class CompileSpec:
    requirements: tuple[str, ...]  # the direct requirements envforge adds (framework build, companions, --with)
    inputs: tuple[Path, ...]  # the user's requirement files and/or pyproject.toml, in order
    python: str  # "3.11"
    platform: str  # linux-64 | linux-aarch64 | osx-arm64 | win-64
    indexes: IndexPlan
    workdir: Path  # a scratch directory the adapter may write into
    output: str = "requirements"  # requirements | pylock
    verbose: bool = False


class Locker(Protocol):
    name: str

    def compile(self, spec: CompileSpec) -> str:
        """Resolve and return the lock body (pins with --hash lines, or a pylock.toml document), with paths
        under spec.workdir as the resolver printed them."""
        ...


_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?==([^\s;\\]+)", re.MULTILINE)


def write_requirements_in(spec: CompileSpec) -> Path:
    """envforge's own requirements as an input file in the scratch directory."""
    path = spec.workdir / "envforge.in"
    path.write_text("\n".join(spec.requirements) + "\n")
    return path


def pins(text: str) -> dict[str, str]:
    """name -> version of every `name==version` line of a requirements lock (names normalised)."""
    from packaging.utils import canonicalize_name

    return {canonicalize_name(m.group(1)): m.group(3) for m in _PIN.finditer(text)}
