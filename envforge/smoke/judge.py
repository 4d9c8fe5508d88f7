"""Judge a smoke script's report against what envforge knows: the host probe, gpus.toml, the expected versions.

Pure functions, no I/O: the script reports what the framework sees; this module decides
whether that is what it *should* see, and turns a passing check into a failing one (or
adds a warning) with the reason and a fix.
"""

from __future__ import annotations

import shlex
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Sequence

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

from ..errors import BadInput
from ..models import Gpu, GpuRow, HostFacts

# A measured matmul rate below this fraction of the datasheet peak is reported as a warning.
THROUGHPUT_WARN_FRACTION = 0.2
SLOW_CAUSES = ("clocks held low (power cap, thermal throttling: nvidia-smi -q -d CLOCK,PERFORMANCE)",
               "a narrow or slow PCIe link (nvidia-smi -q -d PCIE)", "another process on the GPU",
               "a dtype path without tensor cores")

Check = dict  # one entry of the report's "checks": {name, status, detail, duration_s, data, warnings}


@dataclass(frozen=True)
class Expectations:
    """Version requirements for check 1. Satisfied when every requirement of any one group holds.

    `--expect` gives one group; a lock gives one group per locked target (its requirements), so an
    environment installed from any of the lock's targets passes.
    """

    groups: tuple[tuple[Requirement, ...], ...] = ()
    source: str = "--expect"

    def names(self) -> list[str]:
        return sorted({r.name for group in self.groups for r in group})


def parse_expect(items: Sequence[str]) -> Expectations:
    requirements = []
    for item in items:
        try:
            requirement = Requirement(item)
        except InvalidRequirement as exc:
            raise BadInput(f"--expect {item!r} is not a requirement: {exc}",
                           fix="write it as NAME==VERSION or NAME with a PEP 440 specifier, e.g. --expect torch==2.13.0"
                           ) from None
        if not requirement.specifier:
            raise BadInput(f"--expect {item!r} names no version", fix=f"e.g. --expect '{item}==1.2.3'")
        requirements.append(requirement)
    return Expectations((tuple(requirements),) if requirements else ())


def expectations_from_lock(manifest: Mapping[str, Any], framework: str, source: str) -> Expectations:
    """One group per locked target of `framework`: its requirements (torch==2.1.2+cu118, torchvision==...)."""
    groups = []
    for target in manifest.get("targets", []):
        if target.get("framework") != framework:
            continue
        group = []
        for line in target.get("requirements") or [f"{framework}=={target.get('version')}"]:
            try:
                group.append(Requirement(line))
            except InvalidRequirement:
                continue
        if group:
            groups.append(tuple(group))
    return Expectations(tuple(groups), source)


def merge(first: Expectations, second: Expectations) -> Expectations:
    if not first.groups:
        return second
    if not second.groups:
        return first
    # --expect narrows the lock: each lock target must also meet the explicit requirements.
    groups = tuple(a + b for a in first.groups for b in second.groups)
    return Expectations(groups, f"{first.source} and {second.source}")


# --------------------------------------------------------------------------- the checks


def judge_import(check: Check, framework: str, expectations: Expectations) -> None:
    if check["status"] != "pass" or not expectations.groups:
        return
    versions = {canonicalize_name(k): v for k, v in (check["data"].get("versions") or {}).items()}
    problems_per_group = []
    for group in expectations.groups:
        problems = []
        for requirement in group:
            have = versions.get(canonicalize_name(requirement.name))
            if have is None:
                problems.append(f"{requirement.name} is not installed (expected {requirement.specifier})")
                continue
            try:
                ok = requirement.specifier.contains(Version(have), prereleases=True)
            except InvalidVersion:
                ok = False
            if not ok:
                problems.append(f"{requirement.name} {have} does not match {requirement.specifier}")
        if not problems:
            check["data"]["expected"] = [str(r) for r in group]
            check["detail"] += f"; matches {', '.join(str(r) for r in group)} ({expectations.source})"
            return
        problems_per_group.append(problems)
    best = min(problems_per_group, key=len)
    alternatives = f" (closest of {len(problems_per_group)} locked targets)" if len(problems_per_group) > 1 else ""
    check["status"] = "fail"
    check["detail"] = "; ".join(best) + f" ({expectations.source}{alternatives})"
    check["data"]["expected"] = [[str(r) for r in group] for group in expectations.groups]
    wanted = " ".join(shlex.quote(str(r)) for r in expectations.groups[0])
    check["fix"] = f"reinstall the expected versions into this environment, e.g. pip install {wanted}"


def judge_devices(check: Check, framework: str, host: HostFacts, device: str) -> list[str]:
    """Compare the GPUs the framework sees with the host probe's; returns notes for the summary.

    Compared as collections, not index by index: CUDA numbers devices fastest first unless
    CUDA_DEVICE_ORDER=PCI_BUS_ID, NVML in PCI bus order, so on a mixed host the indices differ.
    AMD GPUs (ROCm) are compared by count only: the probe names them by their kfd node.
    """
    if check["status"] != "pass":
        return []
    seen = check["data"].get("gpus") or []
    rocm = check["data"].get("accelerator") == "rocm"
    host_gpus = [g for g in host.gpus if (g.vendor == "amd") == rocm]
    notes: list[str] = []
    if device == "cpu":
        if host.gpus:
            notes.append(f"--device cpu: the host's {len(host.gpus)} GPU(s) were not used")
        return notes
    if not seen:
        if not host.gpus:
            return ["no GPU found: ran on CPU"]
        notes.append(f"{framework} ran on CPU although the host has GPUs")
        return _fail_no_gpu(check, framework, host_gpus or list(host.gpus), notes)
    if not host_gpus:
        check["warnings"].append(
            f"{framework} sees {len(seen)} GPU(s) that the host probe did not find ({probe_story(host)})")
        return notes
    problems = []
    if len(seen) != len(host_gpus):
        problems.append(f"the host has {len(host_gpus)} GPU(s) ({_names(host_gpus)}), {framework} sees {len(seen)}")
    if not rocm:
        host_names = Counter(_norm(g.name) for g in host_gpus)
        seen_names = Counter(_norm(str(g.get("name"))) for g in seen if g.get("name"))
        if seen_names - host_names:
            problems.append(f"{framework} sees {', '.join(sorted(seen_names - host_names))}, which the host probe "
                            f"does not ({_names(host_gpus)})")
        host_arch = Counter(g.arch for g in host_gpus if g.arch)
        seen_arch = Counter(str(g["arch"]) for g in seen if g.get("arch"))
        if seen_arch - host_arch:
            problems.append(f"compute capability {', '.join(sorted(seen_arch - host_arch))} in {framework}, "
                            f"{', '.join(sorted(host_arch))} on the host")
    if problems:
        check["status"] = "fail"
        check["detail"] = "; ".join(problems)
        check["fix"] = ("check CUDA_VISIBLE_DEVICES and the container's GPU request (docker run --gpus all); "
                        "`envforge detect` shows what the host has")
    return notes


def _fail_no_gpu(check: Check, framework: str, host_gpus: list[Gpu], notes: list[str]) -> list[str]:
    reason = check["data"].get("no_gpu_reason") or f"{framework} found none"
    check["status"] = "fail"
    check["detail"] = (f"the host has {len(host_gpus)} GPU(s) ({_names(host_gpus)}) but {framework} sees none: "
                       f"{reason}")
    check["fix"] = (f"install a {framework} build for this host's GPUs and driver: envforge resolve -f {framework} "
                    "shows which one")
    return notes


def _names(gpus: Sequence[Gpu]) -> str:
    return ", ".join(f"{g.name} ({g.arch or '?'})" for g in gpus)


def judge_throughput(check: Check, gpu_lookup: Callable[[str], GpuRow | None]) -> None:
    rows = check["data"].get("devices") or []
    if check["status"] != "pass" or not any(row.get("name") for row in rows):
        return  # a CPU: no datasheet peak to compare with, the script's own detail stands
    parts = []
    for row in rows:
        name = row.get("name")
        spec = gpu_lookup(name) if name else None
        described = []
        for key, value in list(row.items()):
            if not key.endswith("_tflops"):
                continue
            dtype = key[: -len("_tflops")]
            peak = getattr(spec, key, None) if spec else None
            if peak:
                fraction = value / peak
                row[f"{dtype}_peak_tflops"] = peak
                row[f"{dtype}_fraction"] = round(fraction, 3)
                described.append(f"{dtype} {value:.3g} TFLOP/s ({fraction:.0%} of {peak:g})")
                if fraction < THROUGHPUT_WARN_FRACTION:
                    check["warnings"].append(
                        f"{row['device']} ({name}): {dtype} matmul reached {value:.3g} TFLOP/s, {fraction:.0%} of the "
                        f"datasheet's {peak:g}; likely causes: {'; '.join(SLOW_CAUSES)}")
            else:
                described.append(f"{dtype} {value:.3g} TFLOP/s")
        where = f"{row['device']}" + (f" ({name})" if name else "")
        if name and not any(key.endswith("_peak_tflops") for key in row):
            described.append(f"no datasheet peak on record for {name}")
        parts.append(f"{', '.join(described)} on {where}")
    if parts:
        check["detail"] = "matmul " + "; ".join(parts)


def judge_check(check: Check, framework: str, *, host: HostFacts, device: str, expectations: Expectations,
                gpu_lookup: Callable[[str], GpuRow | None]) -> list[str]:
    """Judge one check's result in place (as it arrives); returns notes for the summary."""
    check.setdefault("warnings", [])
    if check["name"] == "import":
        judge_import(check, framework, expectations)
    elif check["name"] == "devices":
        return judge_devices(check, framework, host, device)
    elif check["name"] == "throughput":
        judge_throughput(check, gpu_lookup)
    return []


def failed(checks: Iterable[Check]) -> list[Check]:
    return [c for c in checks if c["status"] == "fail"]


def _norm(name: str) -> str:
    return " ".join(name.lower().split())


def probe_story(host: HostFacts) -> str:
    if host.notes:
        return "; ".join(note.message for note in host.notes)
    return f"probe source: {host.source}"
