"""A fake libnvidia-ml.so.1 and the machines it can pretend to be.

`build_fake_nvml(dest)` compiles fake_nvml.c (next to this file) into
dest/libnvidia-ml.so.1. `machine_env(tmp, lib_dir, name)` writes the
configuration of one of MACHINES and returns the environment a *new* process
needs to see it: the dynamic loader reads LD_LIBRARY_PATH at process start and
pynvml keeps the library it loaded, so each machine needs its own process.

The configuration format is documented at the top of fake_nvml.c. Every value
in MACHINES is what NVML / nvidia-smi report on such a host; where a value was
checked against a public capture the capture is cited next to it. UUIDs are
made up (random hex in NVIDIA's "GPU-" + 8-4-4-4-12 layout), never someone's
real board.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
from dataclasses import dataclass, replace
from pathlib import Path

HERE = Path(__file__).resolve().parent
SOURCE = HERE / "fake_nvml.c"
LIBRARY_NAME = "libnvidia-ml.so.1"

MIB = 1024 * 1024

# NVML return codes used below (pynvml.NVML_ERROR_*).
NVML_ERROR_NO_PERMISSION = 4
NVML_ERROR_DRIVER_NOT_LOADED = 9
NVML_ERROR_LIB_RM_VERSION_MISMATCH = 18


class FakeNvmlBuildError(RuntimeError):
    """The fake library could not be compiled (no C compiler, or it failed)."""


def build_fake_nvml(dest: Path) -> Path:
    """Compile fake_nvml.c into dest/libnvidia-ml.so.1 and return its path."""
    compiler = os.environ.get("CC") or shutil.which("gcc") or shutil.which("cc")
    if not compiler:
        raise FakeNvmlBuildError(
            f"no C compiler found (looked for $CC, gcc, cc): the fake {LIBRARY_NAME} is compiled from "
            f"{SOURCE} by the test suite. Install gcc (e.g. `apt-get install gcc`) or set CC."
        )
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    target = dest / LIBRARY_NAME
    cmd = [compiler, "-shared", "-fPIC", "-O2", "-Wall", "-o", str(target), str(SOURCE)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.SubprocessError) as exc:
        raise FakeNvmlBuildError(f"cannot run {' '.join(cmd)}: {exc}") from exc
    if proc.returncode != 0 or not target.is_file():
        raise FakeNvmlBuildError(
            f"compiling the fake {LIBRARY_NAME} failed ({' '.join(cmd)}, exit {proc.returncode}):\n"
            f"{proc.stdout}{proc.stderr}"
        )
    return target


# --------------------------------------------------------------------------- machines


@dataclass(frozen=True)
class FakeGpu:
    name: str  # nvmlDeviceGetName
    uuid: str  # nvmlDeviceGetUUID
    arch: str  # nvmlDeviceGetCudaComputeCapability as "major.minor"
    memory_mib: int  # nvmlDeviceGetMemoryInfo().total // MiB (what nvidia-smi prints as memory.total)
    mig: bool | None  # nvmlDeviceGetMigMode current mode; None = NVML_ERROR_NOT_SUPPORTED

    def config_line(self) -> str:
        major, minor = self.arch.split(".")
        mig = -1 if self.mig is None else int(self.mig)
        return f"gpu={self.name}|{self.uuid}|{major}|{minor}|{self.memory_mib * MIB}|{mig}"


@dataclass(frozen=True)
class Machine:
    driver: str  # nvmlSystemGetDriverVersion
    cuda: int | None  # nvmlSystemGetCudaDriverVersion_v2, e.g. 12020; None = not supported
    gpus: tuple[FakeGpu, ...]
    init_error: int | None = None  # nvmlInit fails with this NVML return code
    fails: tuple[tuple[str, int], ...] = ()  # (NVML function, return code) injected failures

    @property
    def driver_cuda(self) -> str | None:
        """The CUDA version as nvidia-smi's banner and envforge print it: 12020 -> "12.2"."""
        if self.cuda is None:
            return None
        return f"{self.cuda // 1000}.{(self.cuda % 1000) // 10}"

    def config_text(self) -> str:
        lines = [f"driver={self.driver}"]
        if self.cuda is not None:
            lines.append(f"cuda={self.cuda}")
        if self.init_error is not None:
            lines.append(f"init_error={self.init_error}")
        lines += [f"fail={function}:{code}" for function, code in self.fails]
        lines += [gpu.config_line() for gpu in self.gpus]
        return "\n".join(lines) + "\n"


def _gpus(name: str, arch: str, memory_mib: int, mig: bool | None, uuids: list[str]) -> tuple[FakeGpu, ...]:
    return tuple(FakeGpu(name, uuid, arch, memory_mib, mig) for uuid in uuids)


# Sources (public nvidia-smi captures; "find_string" = found by exact text in
# the code-search index, which does not name the repository):
#  - 535.104.05 -> "CUDA Version: 12.2": NVIDIA's release notes for 535.104.05
#    ("CUDA Toolkit 12: 12.2.2", docs.nvidia.com/datacenter/tesla/tesla-release-notes-535-104-05)
#    and nvidia-smi banners of 535.104.05 (e.g. a Colab T4 capture, find_string).
#  - A100-SXM4-80GB = 81920 MiB on R535 and later: dexmal/dexbotic#41 (535.86.10, A800-SXM4-80GB,
#    same board), NVIDIA A100-SXM4-80GB captures on 550.90.07 / 565.57.01 / 570.124.06 (find_string),
#    modal-labs/modal-client#2797. (R470 printed 81251MiB for the same board.)
#  - H100 80GB HBM3 = 81559 MiB under 550.54.15, CUDA 12.4: NVIDIA/nccl#1264; 550.54.15 banner with
#    "CUDA Version: 12.4": vllm-project/vllm#41519.
#  - Tesla T4 under 470.82.01 = 15109 MiB (ECC on, the data-centre default), CUDA 11.4: nvidia-smi
#    capture "NVIDIA-SMI 470.82.01 ... Tesla T4 ... 0MiB / 15109MiB" (find_string, a TensorRT/CUDA
#    notes repo), and AWS's Graviton DLAMI guide (470.82.01, NVIDIA T4G, 15109MiB). The 15360 MiB
#    often quoted for a T4 is what R510+ drivers print (e.g. 535.104.05 on Colab, 560.35.03).
#  - RTX 4090 = 24564 MiB: RLinf/RLinf#255 (550.163.01); also 545.23.08, 570.124.06, 580.95.05
#    captures (find_string). 560.35.03 -> CUDA 12.6: many 560.35.03 banners (find_string).
#  - RTX 5090 = 32607 MiB, cc 12.0: noonghunna/club-3090#1261; 570.133.07 captures. 570.124.06 ->
#    CUDA 12.8: 570.124.06 banners (find_string; tinygrad/open-gpu-kernel-modules#47 names it).
#  - Tesla K80 = 11441 MiB per GPU, two GPUs per board, cc 3.7: rcgsheffield/sheffield_hpc#1030,
#    openmm/openmm#2386; a two-GPU K80 capture under "NVIDIA-SMI 470.42.01 ... CUDA Version: 11.4"
#    with 11441MiB each (find_string). R470 is the last branch that supports Kepler.
#  - Driver/library version mismatch = NVML_ERROR_LIB_RM_VERSION_MISMATCH (18); nvidia-smi prints
#    "Failed to initialize NVML: Driver/library version mismatch" and exits 18 (mozilla/translations#1167).

A100_80GB = "NVIDIA A100-SXM4-80GB"

MACHINES: dict[str, Machine] = {
    # An 8-GPU HGX A100 80GB box on the R535 data-centre driver, MIG off on every GPU.
    "a100x8": Machine(
        driver="535.104.05",
        cuda=12020,
        gpus=_gpus(A100_80GB, "8.0", 81920, False, [
            "GPU-419dc5e8-bc11-614d-c1b2-0ff9e98e486a",
            "GPU-d607b469-38ae-00d3-56b3-a10ba6b48d66",
            "GPU-a0257bba-4076-66d0-db28-e4f7a5cb0899",
            "GPU-024ea13f-4680-a61d-9270-a66d0b37b96b",
            "GPU-89e62a61-57e4-95f3-c3af-527bef3fdc32",
            "GPU-8d0c497c-fcbe-c538-0ef4-e6cc2f867e39",
            "GPU-79a43646-127d-e3cd-211b-2568061263ac",
            "GPU-070f60dc-7afe-f9ad-8b9b-e79a335465f4",
        ]),
    ),
    "h100": Machine(
        driver="550.54.15",
        cuda=12040,
        gpus=_gpus("NVIDIA H100 80GB HBM3", "9.0", 81559, False, ["GPU-97df2e00-fb7f-5fae-323e-9c8b9bae5c29"]),
    ),
    # Turing has no MIG: nvmlDeviceGetMigMode -> NVML_ERROR_NOT_SUPPORTED.
    "t4": Machine(
        driver="470.82.01",
        cuda=11040,
        gpus=_gpus("Tesla T4", "7.5", 15109, None, ["GPU-dd7806b0-dbe2-5986-d236-59875177ca79"]),
    ),
    "rtx4090": Machine(
        driver="560.35.03",
        cuda=12060,
        gpus=_gpus("NVIDIA GeForce RTX 4090", "8.9", 24564, None, ["GPU-a830f812-16f9-844e-c4e3-2dfe2f086521"]),
    ),
    "rtx5090": Machine(
        driver="570.124.06",
        cuda=12080,
        gpus=_gpus("NVIDIA GeForce RTX 5090", "12.0", 32607, None, ["GPU-9ae363b8-e045-dab7-b0b3-9104c56f0c8d"]),
    ),
    # One K80 board: two GK210 GPUs, each its own NVML device.
    "k80": Machine(
        driver="470.42.01",
        cuda=11040,
        gpus=_gpus("Tesla K80", "3.7", 11441, None, [
            "GPU-981eaa74-199e-2237-a5c2-a33f9d53c240",
            "GPU-4461dc8f-64c0-8b51-3cf3-6af06a66c8ef",
        ]),
    ),
    # MIG is set per GPU (`nvidia-smi -i 0 -mig 1`): GPU 0 partitioned, GPU 1 whole.
    "a100_mig": Machine(
        driver="535.104.05",
        cuda=12020,
        gpus=(
            FakeGpu(A100_80GB, "GPU-f808ba6e-8a8d-6963-1ada-638d8e259610", "8.0", 81920, True),
            FakeGpu(A100_80GB, "GPU-ff583c51-b537-5799-ad30-260ef3ab908e", "8.0", 81920, False),
        ),
    ),
}

# Failure states of real hosts. "mismatch": the a100x8 box after its user-space
# driver was upgraded to 550.144.03 while the 535.104.05 kernel module stays
# loaded (no reboot); nvidia-smi on such a host prints "NVML library version:
# 550.144" (the replay's mismatch recording, mozilla/translations#1167).
# "no_permission": a user outside the group owning /dev/nvidia*.
# "driver_not_loaded": the nvidia kernel module is not loaded.
MACHINES["mismatch"] = replace(
    MACHINES["a100x8"], driver="550.144.03", cuda=12040, init_error=NVML_ERROR_LIB_RM_VERSION_MISMATCH
)
MACHINES["no_permission"] = replace(MACHINES["a100x8"], init_error=NVML_ERROR_NO_PERMISSION)
MACHINES["driver_not_loaded"] = replace(MACHINES["a100x8"], init_error=NVML_ERROR_DRIVER_NOT_LOADED)


def write_config(path: Path, machine: Machine) -> Path:
    """Write atomically: a process already reading the file sees the old text or the new, never half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_text(machine.config_text(), encoding="utf-8")
    os.replace(tmp, path)
    return path


def machine_env(tmp: Path, lib_dir: Path, name: str | Machine) -> dict[str, str]:
    """Write the machine's configuration under tmp; return the environment additions for a new process."""
    if isinstance(name, Machine):
        machine, stem = name, f"machine-{abs(hash(name)):x}"
    else:
        if name not in MACHINES:
            raise KeyError(f"unknown fake machine {name!r}; known: {', '.join(MACHINES)}")
        machine, stem = MACHINES[name], name
    config = write_config(Path(tmp) / f"{stem}.nvml.conf", machine)
    return {"LD_LIBRARY_PATH": str(Path(lib_dir)), "FAKE_NVML_CONFIG": str(config)}
