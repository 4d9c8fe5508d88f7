"""Parsing of user-typed target values: version specifiers, CUDA tags, Python versions, drivers.

Every parser raises BadInput with a one-paragraph message that lists what is valid.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable

from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.version import Version

from .errors import BadInput
from .models import FRAMEWORKS, PLATFORMS

_BARE_VERSION = re.compile(r"^\d+(\.\d+)*(\.\*)?$")


def parse_framework(text: str) -> str:
    name = text.strip().lower()
    aliases = {"pytorch": "torch", "tf": "tensorflow", "tensorflow-gpu": "tensorflow", "jaxlib": "jax"}
    name = aliases.get(name, name)
    if name not in FRAMEWORKS:
        raise BadInput(
            f"unknown framework {text!r}. envforge knows: {', '.join(FRAMEWORKS)}.",
            fix="pass --framework torch, --framework tensorflow or --framework jax",
        )
    return name


def parse_version_spec(text: str | None) -> SpecifierSet:
    """`2.1` and `2.1.*` mean the 2.1 series, `2.4.1` that release, anything else is PEP 440."""
    if text is None or not text.strip():
        return SpecifierSet()
    raw = text.strip()
    if _BARE_VERSION.match(raw):
        if raw.endswith(".*"):
            spec = f"=={raw}"
        elif raw.count(".") >= 2:
            spec = f"=={raw}"
        else:
            spec = f"=={raw}.*"
    else:
        spec = raw
    try:
        return SpecifierSet(spec)
    except InvalidSpecifier:
        raise BadInput(
            f"cannot read the version {text!r}: give a bare version (2.1, 2.1.*, 2.4.1) "
            "or a PEP 440 specifier such as '>=2.3,<2.6' or '~=2.4.0'.",
        ) from None


@dataclass(frozen=True)
class CudaRequest:
    """What --cuda asked for: auto, cpu, an exact X.Y, a major X, or rocmX.Y."""

    kind: str  # "auto" | "cpu" | "cuda" | "rocm"
    version: str | None = None  # "11.8", "12" (major only), "6.0"

    @property
    def text(self) -> str:
        if self.kind in ("auto", "cpu"):
            return self.kind
        if self.kind == "rocm":
            return f"rocm{self.version}"
        return str(self.version)

    def matches_cuda(self, cuda: str) -> bool:
        if self.kind != "cuda" or self.version is None:
            return False
        wanted = Version(self.version).release
        have = Version(cuda).release
        return have[: len(wanted)] == wanted

    def matches_rocm(self, rocm: str) -> bool:
        if self.kind != "rocm" or self.version is None:
            return False
        wanted = Version(self.version).release
        return Version(rocm).release[: len(wanted)] == wanted


def parse_cuda(text: str | None, known_cuda: Iterable[str] = ()) -> CudaRequest:
    """Parse --cuda. `known_cuda` (X.Y strings from cuda.toml) makes an unknown version a clear error."""
    if text is None:
        return CudaRequest("auto")
    raw = text.strip().lower()
    known = sorted(set(known_cuda), key=Version)
    if raw in ("auto", ""):
        return CudaRequest("auto")
    if raw in ("cpu", "none"):
        return CudaRequest("cpu")
    match = re.match(r"^rocm-?(\d+(\.\d+){0,2})$", raw)
    if match:
        return CudaRequest("rocm", match.group(1))
    match = re.match(r"^(?:cuda-?)?(\d+)(?:\.(\d+))?(?:\.\d+)?$", raw)
    if not match:
        match_tag = re.match(r"^cu(\d+)(\d)$", raw)  # cu118 -> 11.8, cu121 -> 12.1
        if match_tag:
            match = re.match(r"^(\d+)\.(\d+)$", f"{match_tag.group(1)}.{match_tag.group(2)}")
    if match:
        major, minor = match.group(1), match.group(2)
        version = f"{major}.{minor}" if minor is not None else major
        if known and version not in known and not any(k.split(".")[0] == version for k in known):
            raise BadInput(
                f"unknown CUDA version {text!r}. Known CUDA versions: {', '.join(known)}. "
                "Also accepted: a major version (12), cpu, rocmX.Y, auto.",
            )
        return CudaRequest("cuda", version)
    listing = f" Known CUDA versions: {', '.join(known)}." if known else ""
    raise BadInput(
        f"cannot read --cuda {text!r}: give X.Y (11.8), a major (12), a wheel tag (cu121), "
        f"cpu, rocmX.Y (rocm6.0) or auto.{listing}",
    )


def parse_python(text: str | None) -> str | None:
    if text is None:
        return None
    raw = text.strip()
    match = re.match(r"^(?:cp|py|python)?(\d)\.?(\d{1,2})(?:\.\d+)?$", raw)
    if not match:
        raise BadInput(f"cannot read --python {text!r}: give a version like 3.11 (or 3.11.7, cp311).")
    return f"{match.group(1)}.{match.group(2)}"


def parse_platform(text: str | None) -> str | None:
    if text is None:
        return None
    raw = text.strip().lower()
    aliases = {
        "linux": "linux-64", "linux-x86_64": "linux-64", "manylinux_x86_64": "linux-64", "x86_64": "linux-64",
        "linux-arm64": "linux-aarch64", "aarch64": "linux-aarch64",
        "macos": "osx-arm64", "osx": "osx-arm64", "darwin": "osx-arm64", "macos-arm64": "osx-arm64",
        "windows": "win-64", "win": "win-64", "win_amd64": "win-64",
    }
    raw = aliases.get(raw, raw)
    if raw not in PLATFORMS:
        raise BadInput(f"unknown platform {text!r}. Valid platforms: {', '.join(PLATFORMS)}.")
    return raw


def parse_driver(text: str | None) -> str | None:
    if text is None:
        return None
    raw = text.strip()
    if not re.match(r"^\d{3}(\.\d{1,3}){0,2}$", raw):
        raise BadInput(f"cannot read --driver {text!r}: give an NVIDIA driver version like 535.104.05 or 550.54.15.")
    return raw


def parse_arch(text: str) -> str:
    raw = text.strip().lower().removeprefix("sm_").removeprefix("sm")
    match = re.match(r"^(\d{1,2})\.(\d)$", raw) or re.match(r"^(\d{1,2})(\d)$", raw)
    if not match:
        raise BadInput(f"cannot read --arch {text!r}: give a compute capability like 8.0, 8.6, 12.0 (or sm_80).")
    return f"{int(match.group(1))}.{match.group(2)}"


