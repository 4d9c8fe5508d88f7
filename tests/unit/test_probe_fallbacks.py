"""The probe's last fallbacks, on a fake filesystem root: /proc/driver/nvidia/version and /sys/class/kfd."""

from __future__ import annotations

import ctypes.util
from pathlib import Path

import pytest

from envforge import hardware
from envforge.models import Request
from envforge.resolve import resolve

pytestmark = pytest.mark.skipif(
    ctypes.util.find_library("nvidia-ml") is not None, reason="a real NVIDIA driver answers before the fallbacks")


def no_smi(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")  # no nvidia-smi: the probe goes on to /proc and /sys


def test_proc_driver_version_gives_the_driver_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, matrix) -> None:
    no_smi(monkeypatch)
    version = tmp_path / "proc/driver/nvidia/version"
    version.parent.mkdir(parents=True)
    # the format of the real file (NVIDIA driver 535.104.05)
    version.write_text("NVRM version: NVIDIA UNIX x86_64 Kernel Module  535.104.05  Sat Aug 19 01:15:15 UTC 2023\n"
                       "GCC version:  gcc version 12.2.0 (Debian 12.2.0-14)\n")
    host = hardware.probe(root=tmp_path, branch_cuda=matrix.branch_cuda)
    assert (host.source, host.driver, host.driver_cuda, host.gpus) == ("proc", "535.104.05", "12.2", ())
    assert any(n.source == "nvml" for n in host.notes)


def test_amd_gpus_from_kfd_topology_get_a_rocm_build(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, matrix) -> None:
    no_smi(monkeypatch)
    nodes = tmp_path / "sys/class/kfd/kfd/topology/nodes"
    for node, target in (("0", "0"), ("1", "90010"), ("2", "90010")):  # node 0: the CPU
        (nodes / node).mkdir(parents=True)
        (nodes / node / "properties").write_text(f"cpu_cores_count 0\nsimd_count 440\ngfx_target_version {target}\n")
    (tmp_path / "opt/rocm/.info").mkdir(parents=True)
    (tmp_path / "opt/rocm/.info/version").write_text("6.0.2-115\n")
    host = hardware.probe(root=tmp_path)
    assert host.source == "rocm" and host.rocm == "6.0.2"
    assert [(g.arch, g.vendor) for g in host.gpus] == [("gfx90a", "amd"), ("gfx90a", "amd")]
    res = resolve(matrix, host, Request("torch", "2.3.1", python="3.11"))
    assert res.ok and res.selected.variant.startswith("rocm")
    assert {r.variant for r in res.rejected if r.variant.startswith("cu")} == {"cu118", "cu121"}
