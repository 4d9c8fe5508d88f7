"""probe() -> HostFacts: what this machine has. The only module that imports pynvml (lazily).

Sources are tried in order and the one that answered is recorded:
NVML (pynvml) -> `nvidia-smi` -> /proc/driver/nvidia/version (driver only) ->
ROCm (rocminfo / /sys/class/kfd) -> none. "No GPU" is a normal answer, never an
exception; failures on the way (driver/library mismatch, no permission, a
missing libnvidia-ml) are recorded as notes with a fix, and the next source is tried.
Overrides (flag > environment variable > probe) describe hosts you don't have.
"""

from __future__ import annotations

import os
import platform as platform_mod
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Mapping, Sequence

from .errors import BadInput
from .models import Gpu, HostFacts, ProbeNote

SMI_TIMEOUT_S = 15.0


@dataclass(frozen=True)
class HostOverrides:
    driver: str | None = None
    gpus: tuple[str, ...] = ()
    arch: tuple[str, ...] = ()
    no_detect: bool = False

    @property
    def any(self) -> bool:
        return bool(self.driver or self.gpus or self.arch)


def overrides_from(
    driver: str | None, gpus: Sequence[str], arch: Sequence[str], no_detect: bool,
    environ: Mapping[str, str] | None = None,
) -> HostOverrides:
    """Merge flags with ENVFORGE_DRIVER / ENVFORGE_GPUS / ENVFORGE_ARCH; a flag wins over its variable."""
    from .specs import parse_arch, parse_driver

    env = os.environ if environ is None else environ
    driver = driver or env.get("ENVFORGE_DRIVER") or None
    gpu_names = tuple(gpus) or tuple(g.strip() for g in env.get("ENVFORGE_GPUS", "").split(",") if g.strip())
    arches = tuple(arch) or tuple(a.strip() for a in re.split(r"[,;\s]+", env.get("ENVFORGE_ARCH", "")) if a.strip())
    return HostOverrides(
        driver=parse_driver(driver),
        gpus=gpu_names,
        arch=tuple(parse_arch(a) for a in arches),
        no_detect=no_detect,
    )


# --------------------------------------------------------------------------- system facts


def platform_tag() -> str | None:
    machine = platform_mod.machine().lower()
    if sys.platform.startswith("linux"):
        return {"x86_64": "linux-64", "amd64": "linux-64", "aarch64": "linux-aarch64", "arm64": "linux-aarch64"}.get(
            machine
        )
    if sys.platform == "darwin":
        return "osx-arm64" if machine == "arm64" else None
    if sys.platform == "win32":
        return "win-64" if machine in ("amd64", "x86_64") else None
    return None


def _system_facts(include_toolkit: bool) -> dict[str, object]:
    facts: dict[str, object] = {
        "platform": platform_tag(),
        "os": platform_mod.platform(terse=True),
        "python": ".".join(str(p) for p in sys.version_info[:3]),
    }
    libc, version = platform_mod.libc_ver()
    if libc == "glibc" and version:
        facts["glibc"] = version
    try:
        facts["wsl"] = "microsoft" in Path("/proc/version").read_text(errors="replace").lower()
    except OSError:
        facts["wsl"] = False
    if include_toolkit:
        facts["nvcc"] = _nvcc_version()
    return facts


def _nvcc_version() -> str | None:
    nvcc = shutil.which("nvcc")
    if not nvcc:
        return None
    try:
        out = subprocess.run([nvcc, "--version"], capture_output=True, text=True, timeout=SMI_TIMEOUT_S).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.search(r"release (\d+\.\d+)", out)
    return match.group(1) if match else None


# --------------------------------------------------------------------------- CUDA_VISIBLE_DEVICES


def visible(gpus: Sequence[Gpu], value: str | None) -> tuple[tuple[Gpu, ...], int]:
    """Apply CUDA_VISIBLE_DEVICES (indices or UUID prefixes, in order). Returns (visible, hidden count).

    Like the CUDA runtime, parsing stops at the first invalid entry, and an
    empty value or -1 hides every device.
    """
    if value is None:
        return tuple(gpus), 0
    chosen: list[Gpu] = []
    for token in value.split(","):
        token = token.strip()
        if not token:
            break
        match: Gpu | None = None
        if re.fullmatch(r"\d+", token):
            match = next((g for g in gpus if g.index == int(token)), None)
        elif token.upper().startswith(("GPU-", "MIG-")):
            match = next((g for g in gpus if g.uuid and g.uuid.upper().startswith(token.upper())), None)
        if match is None or match in chosen:
            break
        chosen.append(match)
    return tuple(chosen), len(gpus) - len(chosen)


# --------------------------------------------------------------------------- NVML

_NVML_FIXES = {
    "LIB_RM_VERSION_MISMATCH": "the kernel module and the user-space driver differ (usually after a driver "
    "upgrade without reboot): reboot, or reload the nvidia kernel modules",
    "NO_PERMISSION": "this user may not open /dev/nvidia*: add it to the group owning the device files "
    "(often 'video'), or check the container's device mounts",
    "LIBRARY_NOT_FOUND": "libnvidia-ml.so.1 is not on the library path: install the NVIDIA driver, or in a "
    "container run with the NVIDIA container runtime (--gpus all)",
    "DRIVER_NOT_LOADED": "the NVIDIA kernel driver is not loaded: install it, or `modprobe nvidia`",
}


def _nvml_error_name(pynvml: object, exc: Exception) -> str:
    value = getattr(exc, "value", None)
    for name in dir(pynvml):
        if name.startswith("NVML_ERROR_") and getattr(pynvml, name) == value:
            return name[len("NVML_ERROR_"):]
    return "UNKNOWN"


def _nvml_message(pynvml: object, exc: Exception) -> str:
    """The driver's own words for an NVML error (nvmlErrorString, what nvidia-smi prints).

    str(NVMLError) uses pynvml's built-in table for the codes it knows, which can
    differ from the driver: code 18 reads "RM has detected an NVML/RM version
    mismatch." there, but "Driver/library version mismatch" from the driver.
    """
    try:
        return _text(pynvml.nvmlErrorString(exc.value))  # type: ignore[attr-defined]
    except Exception:  # noqa: BLE001 - library not loaded, symbol missing: fall back to pynvml's text
        return str(exc)


def _probe_nvml(notes: list[ProbeNote]) -> HostFacts | None:
    try:
        import pynvml
    except ImportError:
        notes.append(ProbeNote("nvml", "the pynvml bindings (nvidia-ml-py) are not installed",
                               "pip install nvidia-ml-py"))
        return None
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        name = _nvml_error_name(pynvml, exc)
        if name == "LIBRARY_NOT_FOUND":
            # The ordinary answer on a machine without an NVIDIA driver: recorded, not alarming.
            notes.append(ProbeNote("nvml", "libnvidia-ml.so.1 not found (no NVIDIA driver installed?)",
                                   _NVML_FIXES[name]))
        else:
            notes.append(ProbeNote("nvml", f"NVML failed to initialise: {_nvml_message(pynvml, exc)}",
                                   _NVML_FIXES.get(name)))
        return None
    try:
        driver = _text(pynvml.nvmlSystemGetDriverVersion())
        try:
            raw = pynvml.nvmlSystemGetCudaDriverVersion_v2()
            driver_cuda = f"{raw // 1000}.{(raw % 1000) // 10}"
        except pynvml.NVMLError:
            driver_cuda = None
        gpus = []
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            name = _text(pynvml.nvmlDeviceGetName(handle))
            uuid = _optional(pynvml, lambda: _text(pynvml.nvmlDeviceGetUUID(handle)))
            cc = _optional(pynvml, lambda: pynvml.nvmlDeviceGetCudaComputeCapability(handle))
            memory = _optional(pynvml, lambda: pynvml.nvmlDeviceGetMemoryInfo(handle))
            mig = _optional(pynvml, lambda: pynvml.nvmlDeviceGetMigMode(handle))
            gpus.append(Gpu(
                name=name,
                arch=f"{cc[0]}.{cc[1]}" if cc else None,
                memory_mib=int(memory.total // (1024 * 1024)) if memory is not None else None,
                index=index,
                uuid=uuid,
                mig=bool(mig[0]) if mig is not None else None,
            ))
    except pynvml.NVMLError as exc:
        name = _nvml_error_name(pynvml, exc)
        notes.append(ProbeNote("nvml", f"NVML query failed: {_nvml_message(pynvml, exc)}",
                               _NVML_FIXES.get(name)))
        return None
    finally:
        try:
            pynvml.nvmlShutdown()
        except pynvml.NVMLError:
            pass
    return HostFacts(source="nvml", driver=driver, driver_cuda=driver_cuda, gpus=tuple(gpus))


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _optional(pynvml: object, call: object) -> object:
    """Values that some GPUs or drivers do not support (MIG mode on a T4) come back as None."""
    try:
        return call()  # type: ignore[operator]
    except pynvml.NVMLError:  # type: ignore[attr-defined]
        return None


# --------------------------------------------------------------------------- nvidia-smi

SMI_FIELDS = "index,name,uuid,driver_version,compute_cap,memory.total"


def _probe_smi(notes: list[ProbeNote]) -> HostFacts | None:
    smi = shutil.which("nvidia-smi")
    if not smi:
        return None
    fields = SMI_FIELDS
    noted = len(notes)
    out = _run_smi(smi, fields, notes)
    if out is None and len(notes) == noted:
        # Drivers before 510 do not know the compute_cap field (_run_smi returns None
        # without a note for that refusal only); ask without it.
        fields = fields.replace(",compute_cap", "")
        out = _run_smi(smi, fields, notes)
    if out is None:
        return None
    names = fields.split(",")
    gpus = []
    driver = None
    for line in out.splitlines():
        if not line.strip():
            continue
        cells = [c.strip() for c in line.split(",")]
        if len(cells) != len(names):
            notes.append(ProbeNote("nvidia-smi", f"unexpected output line: {line!r}"))
            continue
        row = dict(zip(names, cells))
        driver = row.get("driver_version") or driver
        memory = re.match(r"(\d+)", row.get("memory.total", ""))
        arch = row.get("compute_cap")
        gpus.append(Gpu(
            name=row["name"],
            arch=arch if arch and re.fullmatch(r"\d+\.\d+", arch) else None,
            memory_mib=int(memory.group(1)) if memory else None,
            index=int(row["index"]) if row["index"].isdigit() else None,
            uuid=row.get("uuid") or None,
        ))
    driver_cuda = _smi_banner_cuda(smi)
    return HostFacts(source="nvidia-smi", driver=driver, driver_cuda=driver_cuda, gpus=tuple(gpus))


def _run_smi(smi: str, fields: str, notes: list[ProbeNote]) -> str | None:
    cmd = [smi, f"--query-gpu={fields}", "--format=csv,noheader,nounits"]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=SMI_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        notes.append(ProbeNote("nvidia-smi", f"`{' '.join(cmd)}` did not answer in {SMI_TIMEOUT_S:.0f} s",
                               "the driver may be wedged: check `dmesg` for Xid errors"))
        return None
    except OSError as exc:
        notes.append(ProbeNote("nvidia-smi", f"cannot run nvidia-smi: {exc}"))
        return None
    if proc.returncode != 0:
        message = (proc.stdout + proc.stderr).strip().splitlines()
        text = message[0] if message else f"exit status {proc.returncode}"
        if "not a valid field" in (proc.stdout + proc.stderr):
            return None
        fix = None
        if "mismatch" in text.lower():
            fix = _NVML_FIXES["LIB_RM_VERSION_MISMATCH"]
        elif "couldn't communicate" in text.lower():
            fix = _NVML_FIXES["DRIVER_NOT_LOADED"]
        notes.append(ProbeNote("nvidia-smi", f"nvidia-smi failed: {text}", fix))
        return None
    return proc.stdout


def _smi_banner_cuda(smi: str) -> str | None:
    try:
        out = subprocess.run([smi], capture_output=True, text=True, timeout=SMI_TIMEOUT_S).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.search(r"CUDA (?:Version|UMD Version)\s*:\s*(\d+\.\d+)", out)
    return match.group(1) if match else None


# --------------------------------------------------------------------------- /proc and ROCm


def _probe_proc(notes: list[ProbeNote], root: Path) -> HostFacts | None:
    path = root / "proc/driver/nvidia/version"
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return None
    match = re.search(r"Kernel Module(?: for \S+)?\s+(\d+\.\d+(?:\.\d+)?)", text)
    if not match:
        notes.append(ProbeNote("proc", f"could not read a driver version from {path}"))
        return None
    return HostFacts(source="proc", driver=match.group(1))


def _probe_rocm(notes: list[ProbeNote], root: Path) -> HostFacts | None:
    nodes = root / "sys/class/kfd/kfd/topology/nodes"
    gpus = []
    if nodes.is_dir():
        for node in sorted(nodes.iterdir(), key=lambda p: int(p.name) if p.name.isdigit() else 0):
            try:
                props = (node / "properties").read_text()
            except OSError:
                continue
            match = re.search(r"gfx_target_version\s+(\d+)", props)
            if not match or match.group(1) == "0":
                continue  # CPU nodes report 0
            gpus.append(Gpu(name=f"AMD GPU (node {node.name})", arch=_gfx_name(int(match.group(1))),
                            index=len(gpus), vendor="amd"))
    if not gpus:
        return None
    rocm = None
    try:
        rocm = (root / "opt/rocm/.info/version").read_text().strip().split("-")[0] or None
    except OSError:
        pass
    return HostFacts(source="rocm", gpus=tuple(gpus), rocm=rocm)


def _gfx_name(target: int) -> str:
    """kfd's gfx_target_version 90010 -> gfx90a (major, minor, stepping; minor/stepping in hex)."""
    major, minor, stepping = target // 10000, (target // 100) % 100, target % 100
    return f"gfx{major}{minor:x}{stepping:x}"


# --------------------------------------------------------------------------- probe


def probe(
    overrides: HostOverrides | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    include_toolkit: bool = False,
    root: Path = Path("/"),
    gpu_lookup: object = None,
    branch_cuda: object = None,
) -> HostFacts:
    """Describe the host. Never raises for "no GPU"; raises BadInput only for an unknown --gpu name.

    `gpu_lookup(name) -> GpuRow | None` and `branch_cuda(driver) -> str | None`
    come from the matrix and fill what a source could not tell (and resolve overrides).
    """
    env = os.environ if environ is None else environ
    overrides = overrides or HostOverrides()
    system = _system_facts(include_toolkit)
    notes: list[ProbeNote] = []

    facts: HostFacts | None = None
    if overrides.no_detect:
        facts = HostFacts(source="none", constrained=overrides.any)
    else:
        for attempt in (_probe_nvml, _probe_smi):
            facts = attempt(notes)
            if facts is not None:
                break
        if facts is None:
            facts = _probe_proc(notes, root) or _probe_rocm(notes, root)
        if facts is None:
            facts = HostFacts(source="none")
        if facts.gpus and facts.source in ("nvml", "nvidia-smi"):
            shown, hidden = visible(facts.gpus, env.get("CUDA_VISIBLE_DEVICES"))
            if hidden:
                notes.append(ProbeNote(
                    facts.source,
                    f"CUDA_VISIBLE_DEVICES={env.get('CUDA_VISIBLE_DEVICES')!r} hides {hidden} of {len(facts.gpus)} GPU(s)",
                    "unset CUDA_VISIBLE_DEVICES to consider every GPU",
                ))
            facts = replace(facts, gpus=shown)

    facts = replace(facts, notes=tuple(notes), **system)  # type: ignore[arg-type]
    if facts.gpus and gpu_lookup is not None:
        facts = replace(facts, gpus=tuple(_fill_arch(g, gpu_lookup) for g in facts.gpus))
    if overrides.any:
        facts = _apply_overrides(facts, overrides, gpu_lookup)
    if facts.driver and not facts.driver_cuda and branch_cuda is not None:
        facts = replace(facts, driver_cuda=branch_cuda(facts.driver))  # type: ignore[operator]
    return facts


def _fill_arch(gpu: Gpu, gpu_lookup: object) -> Gpu:
    if gpu.arch or gpu.vendor != "nvidia":
        return gpu
    row = gpu_lookup(gpu.name)  # type: ignore[operator]
    return replace(gpu, arch=row.arch) if row else gpu


def _apply_overrides(facts: HostFacts, overrides: HostOverrides, gpu_lookup: object) -> HostFacts:
    gpus: list[Gpu] = []
    for name in overrides.gpus:
        row = gpu_lookup(name) if gpu_lookup is not None else None  # type: ignore[operator]
        if row is None:
            raise BadInput(
                f"unknown GPU {name!r}: not an NVML name or alias in gpus.toml.",
                fix="give the name as nvidia-smi prints it (e.g. \"NVIDIA A100-SXM4-80GB\", \"Tesla T4\"), "
                "or describe it by compute capability with --arch 8.0",
            )
        gpus.append(Gpu(name=row.name, arch=row.arch, memory_mib=row.memory_mib, index=len(gpus)))
    for arch in overrides.arch:
        gpus.append(Gpu(name=f"GPU with compute capability {arch}", arch=arch, index=len(gpus)))
    driver = overrides.driver or facts.driver
    return replace(
        facts,
        source="override",
        driver=driver,
        driver_cuda=None if overrides.driver else facts.driver_cuda,
        gpus=tuple(gpus) if gpus else facts.gpus,
        constrained=True,
    )
