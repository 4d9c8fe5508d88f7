"""`envforge detect --json` end to end, on recorded machines it is not running on.

NVML answers come from a fake libnvidia-ml.so.1 loaded by the real pynvml;
nvidia-smi answers from a replay of recorded output (tests/fakes). Each run is
its own process (see conftest.py). Nothing of envforge is monkeypatched.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.fakes.nvml import MACHINES, Machine, machine_env

NVML_MACHINES = ["a100x8", "h100", "t4", "rtx4090", "rtx5090", "k80", "a100_mig"]
A100 = "NVIDIA A100-SXM4-80GB"

# What each host reports, written out by hand (not derived from MACHINES), so an
# edit to the fakes that changes a recorded value fails here:
# (driver, driver_cuda, GPU count, name, arch, memory_mib, mig of each GPU)
RECORDED = {
    "a100x8": ("535.104.05", "12.2", 8, A100, "8.0", 81920, [False] * 8),
    "h100": ("550.54.15", "12.4", 1, "NVIDIA H100 80GB HBM3", "9.0", 81559, [False]),
    "t4": ("470.82.01", "11.4", 1, "Tesla T4", "7.5", 15109, [None]),
    "rtx4090": ("560.35.03", "12.6", 1, "NVIDIA GeForce RTX 4090", "8.9", 24564, [None]),
    "rtx5090": ("570.124.06", "12.8", 1, "NVIDIA GeForce RTX 5090", "12.0", 32607, [None]),
    "k80": ("470.42.01", "11.4", 2, "Tesla K80", "3.7", 11441, [None, None]),
    "a100_mig": ("535.104.05", "12.2", 2, A100, "8.0", 81920, [True, False]),
}

MISMATCH_FIX_WORDS = ("reboot", "kernel module")


def ok(result) -> dict[str, Any]:
    """The JSON document of a run that must succeed (exit 0); the failure message shows stderr."""
    assert result.code == 0, f"exit {result.code}\nstdout JSON: {result.doc}\nstderr:\n{result.stderr}"
    assert isinstance(result.doc, dict), f"stdout was not a JSON object\nstderr:\n{result.stderr}"
    return result.doc


def gpu_json(machine: Machine, index: int, *, smi: bool = False) -> dict[str, Any]:
    """A GPU as `detect --json` must print it. nvidia-smi does not report MIG mode."""
    gpu = machine.gpus[index]
    doc: dict[str, Any] = {"name": gpu.name, "arch": gpu.arch, "memory_mib": gpu.memory_mib,
                           "index": index, "uuid": gpu.uuid}
    if gpu.mig is not None and not smi:
        doc["mig"] = gpu.mig
    return doc


def notes_from(doc: dict[str, Any], source: str) -> list[dict[str, Any]]:
    return [n for n in doc.get("notes", []) if n["source"] == source]


def require_bare_host(bare_host: str | None) -> None:
    if bare_host:
        pytest.skip(f"cannot assert 'no GPU found' here: {bare_host}")


def gpus_toml_row(matrices: Path, name: str) -> dict[str, Any] | None:
    """The gpus.toml row for an NVML name, read directly (None if the file or row is absent)."""
    try:
        import tomllib
    except ImportError:  # Python < 3.11
        import tomli as tomllib

    path = matrices / "gpus.toml"
    if not path.is_file():
        return None
    rows = tomllib.loads(path.read_text(encoding="utf-8")).get("gpu", [])
    return next((row for row in rows if row.get("name") == name), None)


detect_run = pytest.mark.detect_run


@pytest.fixture(scope="session")
def matrix(matrices_dir: Path):
    from envforge import matrix as matrix_mod

    return matrix_mod.load(matrices_dir)


# --------------------------------------------------------------------------- NVML

ON_EACH_MACHINE = [pytest.param(name, marks=detect_run(machine=name), id=name) for name in NVML_MACHINES]


@pytest.mark.parametrize("name", ON_EACH_MACHINE)
def test_nvml_reports_every_gpu_exactly(result, name):
    machine = MACHINES[name]
    doc = ok(result)
    assert doc["source"] == "nvml"
    assert doc["driver"] == machine.driver
    assert doc["driver_cuda"] == machine.driver_cuda
    assert doc["gpus"] == [gpu_json(machine, i) for i in range(len(machine.gpus))]
    assert "notes" not in doc, doc.get("notes")


@pytest.mark.parametrize("name", ON_EACH_MACHINE)
def test_nvml_recorded_values(result, name):
    driver, driver_cuda, count, gpu_name, arch, memory_mib, migs = RECORDED[name]
    doc = ok(result)
    assert (doc["driver"], doc["driver_cuda"], len(doc["gpus"])) == (driver, driver_cuda, count)
    for index, (gpu, mig) in enumerate(zip(doc["gpus"], migs)):
        assert (gpu["name"], gpu["arch"], gpu["memory_mib"], gpu["index"]) == (gpu_name, arch, memory_mib, index)
        assert gpu.get("mig") is mig  # absent where NVML says MIG is not supported
        assert gpu["uuid"].startswith("GPU-") and [len(p) for p in gpu["uuid"][4:].split("-")] == [8, 4, 4, 4, 12]
    assert len({gpu["uuid"] for gpu in doc["gpus"]}) == count


# --------------------------------------------------------------------------- CUDA_VISIBLE_DEVICES


@detect_run(machine="a100x8", env={"CUDA_VISIBLE_DEVICES": "1,3"})
def test_cuda_visible_devices_by_index(result):
    machine = MACHINES["a100x8"]
    doc = ok(result)
    assert doc["source"] == "nvml"
    assert doc["gpus"] == [gpu_json(machine, 1), gpu_json(machine, 3)]
    (note,) = notes_from(doc, "nvml")
    assert "CUDA_VISIBLE_DEVICES='1,3'" in note["message"] and "hides 6 of 8" in note["message"]
    assert "unset CUDA_VISIBLE_DEVICES" in note["fix"]


# UUID prefixes of a100x8's GPU 4 and GPU 1, in that order.
@detect_run(machine="a100x8", env={"CUDA_VISIBLE_DEVICES": "GPU-89e62a61,GPU-d607"})
def test_cuda_visible_devices_by_uuid_prefix_keeps_their_order(result):
    machine = MACHINES["a100x8"]
    assert machine.gpus[4].uuid.startswith("GPU-89e62a61") and machine.gpus[1].uuid.startswith("GPU-d607")
    doc = ok(result)
    assert doc["gpus"] == [gpu_json(machine, 4), gpu_json(machine, 1)]
    (note,) = notes_from(doc, "nvml")
    assert "hides 6 of 8" in note["message"]


@detect_run(machine="a100x8", env={"CUDA_VISIBLE_DEVICES": "0,7,12,2"})
def test_cuda_visible_devices_stops_at_the_first_invalid_entry(result):
    machine = MACHINES["a100x8"]
    doc = ok(result)
    assert doc["gpus"] == [gpu_json(machine, 0), gpu_json(machine, 7)]
    (note,) = notes_from(doc, "nvml")
    assert "hides 6 of 8" in note["message"]


@detect_run(machine="h100", env={"CUDA_VISIBLE_DEVICES": ""})
def test_cuda_visible_devices_empty_hides_every_gpu(result):
    doc = ok(result)
    assert doc["source"] == "nvml" and doc["driver"] == "550.54.15"
    assert doc["gpus"] == []
    (note,) = notes_from(doc, "nvml")
    assert "hides 1 of 1" in note["message"]


@detect_run(machine="k80", env={"CUDA_VISIBLE_DEVICES": "0,1"})
def test_cuda_visible_devices_naming_every_gpu_adds_no_note(result):
    doc = ok(result)
    assert len(doc["gpus"]) == 2
    assert "notes" not in doc


# --------------------------------------------------------------------------- NVML failures


@detect_run(machine="mismatch")
def test_mismatch_without_nvidia_smi_reports_the_fix_and_finds_nothing(result, bare_host):
    require_bare_host(bare_host)
    doc = ok(result)
    assert doc["source"] == "none"
    assert doc["driver"] is None and doc["gpus"] == []
    (note,) = doc["notes"]
    assert note["source"] == "nvml"
    assert note["message"] == "NVML failed to initialise: Driver/library version mismatch"
    assert all(word in note["fix"] for word in MISMATCH_FIX_WORDS)


@detect_run(machine="mismatch", smi="mismatch")
def test_mismatch_with_failing_nvidia_smi_notes_each_source_once(result, bare_host):
    require_bare_host(bare_host)
    doc = ok(result)
    assert doc["source"] == "none" and doc["gpus"] == []
    (nvml,) = notes_from(doc, "nvml")
    (smi,) = notes_from(doc, "nvidia-smi")  # one note: a failed query is not retried without compute_cap
    assert "Driver/library version mismatch" in nvml["message"]
    assert smi["message"] == "nvidia-smi failed: Failed to initialize NVML: Driver/library version mismatch"
    assert all(word in smi["fix"] for word in MISMATCH_FIX_WORDS)


@detect_run(machine="mismatch", smi="a100x8")
def test_mismatch_falls_back_to_nvidia_smi(result):
    """NVML fails; the next source on the chain (nvidia-smi) answers and is recorded as the source."""
    machine = MACHINES["a100x8"]
    doc = ok(result)
    assert doc["source"] == "nvidia-smi"
    assert doc["driver"] == "535.104.05" and doc["driver_cuda"] == "12.2"
    assert doc["gpus"] == [gpu_json(machine, i, smi=True) for i in range(8)]
    (note,) = doc["notes"]
    assert note["source"] == "nvml" and "Driver/library version mismatch" in note["message"]


@pytest.mark.parametrize(
    ("message", "fix_word"),
    [
        pytest.param("Insufficient Permissions", "group", marks=detect_run(machine="no_permission"),
                     id="no_permission"),
        pytest.param("Driver Not Loaded", "modprobe", marks=detect_run(machine="driver_not_loaded"),
                     id="driver_not_loaded"),
    ],
)
def test_nvml_init_failures_are_notes_in_the_drivers_words(result, bare_host, message, fix_word):
    require_bare_host(bare_host)
    doc = ok(result)
    assert doc["source"] == "none" and doc["gpus"] == []
    (note,) = doc["notes"]
    assert note["source"] == "nvml"
    assert note["message"] == f"NVML failed to initialise: {message}"
    assert fix_word in note["fix"]


@detect_run()
def test_no_library_at_all_is_no_gpu_not_an_error(result, bare_host):
    require_bare_host(bare_host)
    doc = ok(result)
    assert doc["source"] == "none"
    assert doc["driver"] is None and doc["driver_cuda"] is None and doc["gpus"] == []
    (note,) = doc["notes"]
    assert note["source"] == "nvml" and "libnvidia-ml.so.1 not found" in note["message"]
    assert note["fix"]


# --------------------------------------------------------------------------- nvidia-smi fallback


@detect_run(smi="a100x8")
def test_nvidia_smi_fallback_reports_the_a100_box(result):
    machine = MACHINES["a100x8"]
    doc = ok(result)
    assert doc["source"] == "nvidia-smi"
    assert doc["driver"] == "535.104.05"
    assert doc["driver_cuda"] == "12.2"  # from the banner
    assert doc["gpus"] == [gpu_json(machine, i, smi=True) for i in range(8)]
    assert [n["source"] for n in doc["notes"]] == ["nvml"]  # only "libnvidia-ml.so.1 not found"


@detect_run(smi="a100x8", env={"CUDA_VISIBLE_DEVICES": "5"})
def test_nvidia_smi_fallback_honours_cuda_visible_devices(result):
    machine = MACHINES["a100x8"]
    doc = ok(result)
    assert doc["gpus"] == [gpu_json(machine, 5, smi=True)]
    (note,) = notes_from(doc, "nvidia-smi")
    assert "hides 7 of 8" in note["message"]


@detect_run(smi="t4")
def test_nvidia_smi_on_470_without_compute_cap(result, matrices_dir):
    """R470's nvidia-smi refuses compute_cap; the probe asks again without it, silently."""
    doc = ok(result)
    assert doc["source"] == "nvidia-smi"
    assert doc["driver"] == "470.82.01" and doc["driver_cuda"] == "11.4"
    (gpu,) = doc["gpus"]
    assert {k: gpu[k] for k in ("name", "memory_mib", "index", "uuid")} == {
        "name": "Tesla T4", "memory_mib": 15109, "index": 0, "uuid": MACHINES["t4"].gpus[0].uuid,
    }
    assert "mig" not in gpu
    assert notes_from(doc, "nvidia-smi") == []  # the refusal is expected, not a failure
    row = gpus_toml_row(matrices_dir, "Tesla T4")
    if row is None:
        pytest.skip("matrices/gpus.toml has no 'Tesla T4' row (yet): cannot check the arch filled in by name")
    assert gpu["arch"] == row["arch"] == "7.5"


# --------------------------------------------------------------------------- overrides


# A fake GPU and nvidia-smi are present: --no-detect must not look at them.
@detect_run("--no-detect", "--driver", "535.104.05", "--gpu", A100, machine="t4", smi="t4")
def test_no_detect_with_driver_and_gpu(result, matrix):
    doc = ok(result)
    assert doc["source"] == "override"
    assert doc["driver"] == "535.104.05"
    assert doc["driver_cuda"] == matrix.branch_cuda("535.104.05")
    assert doc["gpus"] == [{"name": A100, "arch": "8.0", "memory_mib": matrix.gpu(A100).memory_mib, "index": 0}]
    assert "notes" not in doc


@detect_run("--no-detect", machine="a100x8", smi="a100x8")
def test_no_detect_alone_describes_no_host(result):
    doc = ok(result)
    assert doc["source"] == "none"
    assert doc["driver"] is None and doc["gpus"] == []
    assert "notes" not in doc


@detect_run("--no-detect", env={"ENVFORGE_DRIVER": "550.54.15", "ENVFORGE_GPUS": "NVIDIA H100 80GB HBM3",
                                "ENVFORGE_ARCH": "8.9"})
def test_overrides_from_environment(result, matrix):
    doc = ok(result)
    assert doc["source"] == "override"
    assert doc["driver"] == "550.54.15"
    assert doc["driver_cuda"] == matrix.branch_cuda("550.54.15")
    assert [(g["name"], g["arch"], g["index"]) for g in doc["gpus"]] == [
        ("NVIDIA H100 80GB HBM3", "9.0", 0),
        ("GPU with compute capability 8.9", "8.9", 1),
    ]


@detect_run("--no-detect", "--driver", "535.104.05", "--gpu", A100, "--arch", "9.0",
            env={"ENVFORGE_DRIVER": "470.82.01", "ENVFORGE_GPUS": "Tesla T4", "ENVFORGE_ARCH": "7.5"})
def test_flags_win_over_environment(result):
    doc = ok(result)
    assert doc["driver"] == "535.104.05"
    assert [(g["name"], g["arch"]) for g in doc["gpus"]] == [(A100, "8.0"), ("GPU with compute capability 9.0", "9.0")]


@detect_run("--no-detect", "--driver", "560.35.03",
            env={"ENVFORGE_DRIVER": "470.82.01", "ENVFORGE_GPUS": "Tesla T4, Tesla K80"})
def test_each_flag_replaces_only_its_own_variable(result):
    doc = ok(result)
    assert doc["driver"] == "560.35.03"
    assert [(g["name"], g["arch"]) for g in doc["gpus"]] == [("Tesla T4", "7.5"), ("Tesla K80", "3.7")]


@detect_run("--driver", "550.54.15", machine="a100x8")
def test_driver_override_on_a_detected_machine_keeps_its_gpus(result, matrix):
    machine = MACHINES["a100x8"]
    doc = ok(result)
    assert doc["source"] == "override"
    assert doc["driver"] == "550.54.15"
    # The probed 12.2 belonged to the probed driver; the override's comes from its branch.
    assert doc["driver_cuda"] == matrix.branch_cuda("550.54.15")
    assert doc["gpus"] == [gpu_json(machine, i) for i in range(8)]


@detect_run("--no-detect", "--gpu", "NVIDIA GeForce RTX 9999 Imaginary")
def test_unknown_gpu_override_is_bad_input(result):
    assert result.code == 2, result.stderr
    assert result.doc["ok"] is False and result.doc["error"]["code"] == "bad_input"
    assert "RTX 9999" in result.stderr


def test_detect_can_also_be_called_directly(detect):
    code, doc, stderr = detect("--no-detect", "--arch", "12.0")
    assert code == 0, stderr
    assert doc["source"] == "override"
    assert doc["gpus"] == [{"name": "GPU with compute capability 12.0", "arch": "12.0", "memory_mib": None,
                            "index": 0}]


# --------------------------------------------------------------------------- the fakes themselves


def test_replay_refuses_compute_cap_like_r470(smi_bin, clean_env):
    env = {**clean_env, "FAKE_SMI_MACHINE": "t4"}
    proc = subprocess.run(
        [str(smi_bin / "nvidia-smi"), "--query-gpu=index,compute_cap", "--format=csv,noheader,nounits"],
        env=env, capture_output=True, text=True, timeout=30,
    )
    assert proc.returncode == 2
    assert proc.stdout == 'Field "compute_cap" is not a valid field to query.\n\n'


def test_fake_library_speaks_nvidias_words_through_real_pynvml(fake_nvml_lib, tmp_path, clean_env):
    """nvmlErrorString(18) is the driver's "Driver/library version mismatch" (what the probe must report)."""
    code = (
        "import pynvml\n"
        "try:\n    pynvml.nvmlInit()\n"
        "except pynvml.NVMLError as e:\n    print(e.value, pynvml.nvmlErrorString(e.value))\n"
    )
    env = {**clean_env, **machine_env(tmp_path, fake_nvml_lib, "mismatch")}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "18 Driver/library version mismatch\n"
