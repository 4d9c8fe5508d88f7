"""Frozen value types shared by every layer: matrix rows, host facts, requests, resolutions.

Row dataclasses double as the schema of matrices/*.toml: matrix.py derives the
allowed keys, their types and their canonical order from the fields below, so
the data files and the code cannot drift apart.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

FRAMEWORKS: tuple[str, ...] = ("torch", "tensorflow", "jax")
PLATFORMS: tuple[str, ...] = ("linux-64", "linux-aarch64", "osx-arm64", "win-64")

# Reason codes are a closed set (DESIGN.md); `check` adds the last two.
ReasonCode = Literal[
    "python_unsupported",
    "platform_unsupported",
    "cuda_mismatch",
    "driver_too_old",
    "arch_unsupported",
    "cudnn_mismatch",
    "companion_mismatch",
    "not_published",
    "unknown_release",
    "stale_lock",
]
REASON_CODES: tuple[str, ...] = ReasonCode.__args__  # type: ignore[attr-defined]


# --------------------------------------------------------------------------- matrix rows
# Field order here is the canonical key order in the TOML files.


@dataclass(frozen=True)
class Meta:
    subject: str
    read: str
    notes: tuple[str, ...] = ()
    sources: tuple[tuple[str, str], ...] = ()

    def source(self, source_id: str) -> str | None:
        return dict(self.sources).get(source_id)


@dataclass(frozen=True)
class ReleaseRow:
    """One published framework release (a patch version)."""

    version: str
    python: str
    torchvision: str | None = None
    torchaudio: str | None = None
    jaxlib: str | None = None
    date: str | None = None
    source: tuple[str, ...] = ()
    inferred: tuple[str, ...] = ()
    note: str | None = None


@dataclass(frozen=True)
class BuildRow:
    """One installable build of a release: (version, variant)."""

    version: str
    variant: str
    cuda: str | None = None
    rocm: str | None = None
    cudnn: str | None = None
    arch: tuple[str, ...] = ()
    ptx: tuple[str, ...] = ()
    min_arch: str | None = None
    min_driver: str | None = None
    system_cuda: bool = False
    index_url: str | None = None
    find_links: str | None = None
    extra: str | None = None
    package: str | None = None
    local: str | None = None
    pypi_default: bool = False
    platforms: tuple[str, ...] = ()
    requires: tuple[str, ...] = ()
    source: tuple[str, ...] = ()
    inferred: tuple[str, ...] = ()
    note: str | None = None


@dataclass(frozen=True)
class CompanionRow:
    """A torchvision / torchaudio release and the torch requirement its wheel declares."""

    package: str
    version: str
    torch: str = ""
    source: tuple[str, ...] = ()
    inferred: tuple[str, ...] = ()
    note: str | None = None


@dataclass(frozen=True)
class SeriesRow:
    """A CUDA major series and its minor-version-compatibility driver floor."""

    major: str
    min_driver_linux: str | None = None
    min_driver_windows: str | None = None
    source: tuple[str, ...] = ()
    inferred: tuple[str, ...] = ()
    note: str | None = None


@dataclass(frozen=True)
class ToolkitRow:
    """A CUDA toolkit release (GA or update) and the driver it needs."""

    version: str
    linux_driver: str | None = None
    windows_driver: str | None = None
    source: tuple[str, ...] = ()
    inferred: tuple[str, ...] = ()
    note: str | None = None


@dataclass(frozen=True)
class TargetsRow:
    """The compute capabilities a CUDA toolkit minor can compile SASS for."""

    cuda: str
    sass: tuple[str, ...] = ()
    source: tuple[str, ...] = ()
    inferred: tuple[str, ...] = ()
    note: str | None = None


@dataclass(frozen=True)
class BranchRow:
    """The CUDA version a driver branch reports (nvidia-smi banner / NVML)."""

    driver: str
    cuda: str
    source: tuple[str, ...] = ()
    inferred: tuple[str, ...] = ()
    note: str | None = None


@dataclass(frozen=True)
class GpuRow:
    """A GPU model as NVML names it."""

    name: str
    arch: str
    aliases: tuple[str, ...] = ()
    family: str | None = None
    kind: str | None = None
    memory_mib: int | None = None
    fp32_tflops: float | None = None
    bf16_tflops: float | None = None
    fp16_tflops: float | None = None
    source: tuple[str, ...] = ()
    inferred: tuple[str, ...] = ()
    note: str | None = None


@dataclass(frozen=True)
class ImageRow:
    """An nvidia/cuda image release (full CUDA version) and its tags."""

    cuda: str
    ubuntu: tuple[str, ...] = ()
    flavours: tuple[str, ...] = ()
    cudnn_token: str | None = None
    cudnn: str | None = None
    source: tuple[str, ...] = ()
    inferred: tuple[str, ...] = ()
    note: str | None = None


# --------------------------------------------------------------------------- host facts


@dataclass(frozen=True)
class Gpu:
    name: str
    arch: str | None = None  # compute capability "8.0", or a gfx target "gfx90a" for ROCm
    memory_mib: int | None = None
    index: int | None = None
    uuid: str | None = None
    mig: bool | None = None
    vendor: str = "nvidia"

    def to_json(self) -> dict[str, object]:
        doc: dict[str, object] = {"name": self.name, "arch": self.arch, "memory_mib": self.memory_mib}
        for key in ("index", "uuid", "mig"):
            value = getattr(self, key)
            if value is not None:
                doc[key] = value
        if self.vendor != "nvidia":
            doc["vendor"] = self.vendor
        return doc


@dataclass(frozen=True)
class ProbeNote:
    """A failure met while probing: a fact with its source and a fix, never a crash."""

    source: str
    message: str
    fix: str | None = None

    def to_json(self) -> dict[str, object]:
        return {"source": self.source, "message": self.message, "fix": self.fix}


@dataclass(frozen=True)
class HostFacts:
    source: str = "none"
    driver: str | None = None
    driver_cuda: str | None = None
    gpus: tuple[Gpu, ...] = ()
    platform: str | None = None
    os: str | None = None
    glibc: str | None = None
    wsl: bool = False
    python: str | None = None
    nvcc: str | None = None
    rocm: str | None = None
    notes: tuple[ProbeNote, ...] = ()
    # False for --no-detect without overrides: "no host constraints" (DESIGN.md).
    constrained: bool = True

    def to_json(self) -> dict[str, object]:
        doc: dict[str, object] = {
            "source": self.source,
            "driver": self.driver,
            "driver_cuda": self.driver_cuda,
            "gpus": [gpu.to_json() for gpu in self.gpus],
        }
        extras = {
            "platform": self.platform,
            "os": self.os,
            "glibc": self.glibc,
            "wsl": self.wsl,
            "python": self.python,
            "nvcc": self.nvcc,
            "rocm": self.rocm,
        }
        doc.update({k: v for k, v in extras.items() if v not in (None, False)})
        if self.notes:
            doc["notes"] = [note.to_json() for note in self.notes]
        return doc


# --------------------------------------------------------------------------- requests and answers


@dataclass(frozen=True)
class Request:
    framework: str
    version: str | None = None  # as typed; normalised to a SpecifierSet by resolve
    cuda: str = "auto"
    python: str | None = None
    platform: str = "linux-64"
    driver_policy: str = "minor"
    allow_cpu: bool = False

    def to_json(self) -> dict[str, object]:
        return {
            "framework": self.framework,
            "version": self.version,
            "cuda": self.cuda,
            "python": self.python,
            "platform": self.platform,
        }


@dataclass(frozen=True)
class Reason:
    code: str
    message: str
    fix: str

    def to_json(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message, "fix": self.fix}


@dataclass(frozen=True)
class Rejection:
    version: str
    variant: str
    reasons: tuple[Reason, ...]

    def to_json(self) -> dict[str, object]:
        return {"version": self.version, "variant": self.variant, "reasons": [r.to_json() for r in self.reasons]}


@dataclass(frozen=True)
class Selected:
    """Everything downstream (lock, Dockerfile, smoke) needs about the chosen build."""

    framework: str
    version: str
    variant: str
    cuda: str | None
    cudnn: str | None
    python: str
    arch: tuple[str, ...]
    min_driver: str | None
    index_url: str | None
    requirements: tuple[str, ...]
    companions: tuple[tuple[str, str], ...]
    base_image: str | None
    rocm: str | None = None
    ptx: tuple[str, ...] = ()
    min_arch: str | None = None
    system_cuda: bool = False
    find_links: str | None = None

    def to_json(self) -> dict[str, object]:
        doc: dict[str, object] = {
            "framework": self.framework,
            "version": self.version,
            "variant": self.variant,
            "cuda": self.cuda,
            "cudnn": self.cudnn,
            "python": self.python,
            "arch": list(self.arch),
            "min_driver": self.min_driver,
            "index_url": self.index_url,
            "requirements": list(self.requirements),
            "companions": dict(self.companions),
            "base_image": self.base_image,
        }
        optional = {
            "rocm": self.rocm,
            "ptx": list(self.ptx) or None,
            "min_arch": self.min_arch,
            "system_cuda": self.system_cuda or None,
            "find_links": self.find_links,
        }
        doc.update({k: v for k, v in optional.items() if v is not None})
        return doc


@dataclass(frozen=True)
class Resolution:
    request: Request
    host: HostFacts
    selected: Selected | None
    rejected: tuple[Rejection, ...] = ()
    warnings: tuple[str, ...] = ()
    candidates: int = 0
    extra: dict[str, object] = field(default_factory=dict, compare=False)

    @property
    def ok(self) -> bool:
        return self.selected is not None

    def to_json(self) -> dict[str, object]:
        return {
            "ok": self.ok,
            "request": self.request.to_json(),
            "host": self.host.to_json(),
            "selected": self.selected.to_json() if self.selected else None,
            "rejected": [r.to_json() for r in self.rejected],
            "warnings": list(self.warnings),
        }
