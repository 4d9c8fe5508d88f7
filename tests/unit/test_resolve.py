"""The resolver: table-driven tests generated from the matrices, plus real cases with their upstream answer."""

from __future__ import annotations

from typing import Iterable

import pytest
from packaging.version import Version

from envforge.errors import BadInput
from envforge.models import Gpu, HostFacts, Request
from envforge.resolve import resolve


def host(matrix, driver: str | None, *gpus: str, arch: Iterable[str] = ()) -> HostFacts:
    rows = []
    for i, name in enumerate(gpus):
        row = matrix.gpu(name)
        assert row is not None, name
        rows.append(Gpu(name=row.name, arch=row.arch, memory_mib=row.memory_mib, index=i))
    for a in arch:
        rows.append(Gpu(name=f"GPU {a}", arch=a, index=len(rows)))
    return HostFacts(source="override", driver=driver, gpus=tuple(rows))


def codes(resolution, version: str | None = None, variant: str | None = None) -> set[str]:
    out = set()
    for r in resolution.rejected:
        if (version is None or r.version == version) and (variant is None or r.variant == variant):
            out.update(reason.code for reason in r.reasons)
    return out


def newest_driver(matrix) -> str:
    return str(max(Version(t.linux_driver) for t in matrix.files["cuda"].rows("toolkit") if t.linux_driver))


def just_below(driver: str) -> str:
    parts = [int(p) for p in driver.split(".")]
    for i in range(len(parts) - 1, -1, -1):
        if parts[i] > 0:
            parts[i] -= 1
            return ".".join(str(p) for p in parts[: i + 1]) + (".99" * (len(parts) - 1 - i))
    raise AssertionError(driver)


def cuda_builds(matrix):
    for framework in ("torch", "tensorflow", "jax"):
        for build in matrix.builds(framework):
            if build.cuda and "linux-64" in build.platforms:
                yield framework, build


def request_for(matrix, framework, build, **kw) -> Request:
    release = matrix.release(framework, build.version)
    spec = release.python.split(",")[0].lstrip(">=")  # the oldest supported Python
    return Request(framework=framework, version=f"=={build.version}", cuda=kw.pop("cuda", build.cuda),
                   python=spec, platform="linux-64", **kw)


# --------------------------------------------------------------------------- generated from the data


def test_newest_driver_accepts_every_cuda_build(matrix) -> None:
    driver = newest_driver(matrix)
    failures = []
    for framework, build in cuda_builds(matrix):
        res = resolve(matrix, host(matrix, driver), request_for(matrix, framework, build))
        if "driver_too_old" in codes(res, build.version, build.variant):
            failures.append((framework, build.version, build.variant))
    assert failures == []


@pytest.mark.parametrize("policy", ["minor", "strict"])
def test_one_patch_below_each_floor_rejects_and_the_floor_accepts(matrix, policy) -> None:
    from envforge.resolve import driver_floor

    checked = 0
    for framework, build in cuda_builds(matrix):
        floor = driver_floor(matrix, build, policy, "linux-64").floor
        assert floor, f"no driver floor for CUDA {build.cuda} ({framework} {build.version} {build.variant})"
        below = resolve(matrix, host(matrix, just_below(floor)),
                        request_for(matrix, framework, build, driver_policy=policy))
        assert "driver_too_old" in codes(below, build.version, build.variant), (framework, build, floor)
        at = resolve(matrix, host(matrix, floor), request_for(matrix, framework, build, driver_policy=policy))
        assert "driver_too_old" not in codes(at, build.version, build.variant), (framework, build, floor)
        checked += 1
    assert checked > 100


def test_minor_policy_floors_are_nvidias_series_floors(matrix) -> None:
    # CUDA minor-version compatibility (NVIDIA's CUDA compatibility guide): 11.x >= 450.80.02, 12.x >= 525.60.13.
    assert matrix.series("11").min_driver_linux == "450.80.02"
    assert matrix.series("12").min_driver_linux == "525.60.13"


def _serves(build, arch: str) -> bool:
    """The rule, written out independently: SASS X.Y runs on X.Z (Z >= Y); PTX runs on anything newer."""
    major, minor = (int(p) for p in arch.split("."))
    for a in build.arch:
        a_major, a_minor = (int(p) for p in a.split("."))
        if a_major == major and a_minor <= minor:
            return True
    for p in build.ptx:
        if tuple(int(x) for x in p.split(".")) <= (major, minor):
            return True
    if build.min_arch:
        return tuple(int(x) for x in build.min_arch.split(".")) <= (major, minor)
    return False


def test_every_gpu_architecture_against_every_variant_arch_list(matrix) -> None:
    driver = newest_driver(matrix)
    arches = sorted({g.arch for g in matrix.gpus()}, key=Version)
    checked = 0
    for framework, build in cuda_builds(matrix):
        if not (build.arch or build.ptx or build.min_arch):
            continue
        for arch in arches:
            res = resolve(matrix, host(matrix, driver, arch=[arch]), request_for(matrix, framework, build))
            rejected = "arch_unsupported" in codes(res, build.version, build.variant)
            assert rejected == (not _serves(build, arch)), (framework, build.version, build.variant, arch)
            checked += 1
    assert checked > 1000


def test_every_gpu_name_and_alias_describes_a_host_through_the_overrides(matrix) -> None:
    from envforge import hardware

    for gpu in matrix.gpus():
        for name in (gpu.name, *gpu.aliases):
            overrides = hardware.HostOverrides(driver="570.124.06", gpus=(name,), no_detect=True)
            host_facts = hardware.probe(overrides, gpu_lookup=matrix.gpu, branch_cuda=matrix.branch_cuda)
            assert host_facts.source == "override" and host_facts.driver_cuda == "12.8"
            assert [(g.name, g.arch) for g in host_facts.gpus] == [(gpu.name, gpu.arch)], name


# --------------------------------------------------------------------------- real cases


def test_rtx_5090_on_torch_2_7_1_selects_the_cu128_build(matrix) -> None:
    # PyTorch 2.7 release notes: Blackwell (sm_120) support comes with the CUDA 12.8 wheels (cu128).
    res = resolve(matrix, host(matrix, "570.124.06", "NVIDIA GeForce RTX 5090"),
                  Request("torch", "2.7.1", python="3.11"))
    assert res.ok, res.to_json()
    assert res.selected.variant == "cu128"
    assert "12.0" in res.selected.arch
    assert res.selected.requirements == ("torch==2.7.1+cu128",)
    assert res.selected.index_url == "https://download.pytorch.org/whl/cu128"
    others = {r.variant for r in res.rejected if r.version == "2.7.1"}
    assert {"cu118", "cu126"} <= others
    assert all(codes(res, "2.7.1", v) == {"arch_unsupported"} for v in ("cu118", "cu126"))


def test_rtx_5090_on_torch_2_6_is_rejected_naming_the_first_release_that_works(matrix) -> None:
    res = resolve(matrix, host(matrix, "570.124.06", "NVIDIA GeForce RTX 5090"),
                  Request("torch", "2.6", python="3.11"))
    assert not res.ok
    cuda_rejections = [r for r in res.rejected if r.variant.startswith("cu")]
    assert cuda_rejections and all("arch_unsupported" in {x.code for x in r.reasons} for r in cuda_rejections)
    fixes = [x.fix for r in cuda_rejections for x in r.reasons if x.code == "arch_unsupported"]
    assert all("torch 2.7.0 (cu128) is the first release" in f for f in fixes), fixes


def test_k80_keeps_sm_37_only_in_the_cu118_builds_of_torch_2_1(matrix) -> None:
    # pytorch/builder release/2.1 manywheel: cu118 keeps 3.7, cu12x drops it (CUDA 12 cannot target sm_37).
    res = resolve(matrix, host(matrix, "470.82.01", "Tesla K80"), Request("torch", "2.1.2", python="3.10"))
    assert res.ok and res.selected.variant == "cu118"
    assert "arch_unsupported" in codes(res, "2.1.2", "cu121")


def test_t4_on_driver_470_gets_cuda_11_through_minor_version_compatibility(matrix) -> None:
    h = host(matrix, "470.82.01", "Tesla T4")
    res = resolve(matrix, h, Request("torch", "2.1.2", cuda="12.1", python="3.10"))
    assert not res.ok
    reason = next(x for r in res.rejected for x in r.reasons if x.code == "driver_too_old")
    assert "525.60.13" in reason.message and "--cuda 11.8" in reason.fix
    ok = resolve(matrix, h, Request("torch", "2.1.2", cuda="11.8", python="3.10"))
    assert ok.ok and any("minor-version compatibility" in w for w in ok.warnings)
    strict = resolve(matrix, h, Request("torch", "2.1.2", cuda="11.8", python="3.10", driver_policy="strict"))
    assert not strict.ok
    assert any("520.61.05" in x.message for r in strict.rejected for x in r.reasons)


def test_h100_has_no_kernels_in_torch_1_13(matrix) -> None:
    # torch 1.13 was built for 3.7;5.0;6.0;7.0;7.5;8.0;8.6 (pytorch/builder release/1.13): no sm_90.
    res = resolve(matrix, host(matrix, "550.54.15", "NVIDIA H100 80GB HBM3"), Request("torch", "1.13.1", python="3.10"))
    assert not res.ok
    fixes = [x.fix for r in res.rejected for x in r.reasons if x.code == "arch_unsupported"]
    assert fixes and "torch 2.0.0 (cu118) is the first release" in fixes[0]


def test_auto_prefers_native_cuda_over_minor_version_compatibility(matrix) -> None:
    # driver 535 reports CUDA 12.2: cu121 runs natively, cu124 only through minor-version compatibility.
    res = resolve(matrix, host(matrix, "535.104.05", "NVIDIA A100-SXM4-80GB"), Request("torch", "2.5.1", python="3.11"))
    assert res.ok and res.selected.variant == "cu121"
    assert not res.warnings


def test_a_mixed_box_must_serve_every_gpu(matrix) -> None:
    h = host(matrix, "570.124.06", "Tesla V100-SXM2-16GB", "NVIDIA GeForce RTX 5090")
    res = resolve(matrix, h, Request("torch", "2.7.1", python="3.11"))
    assert not res.ok
    messages = " ".join(x.message for r in res.rejected for x in r.reasons)
    assert "RTX 5090" in messages and "V100" in messages


def test_no_gpu_host_gets_the_cpu_build_and_says_so(matrix) -> None:
    res = resolve(matrix, HostFacts(source="none"), Request("torch", "2.3.1", python="3.11"))
    assert res.ok and res.selected.variant == "cpu"
    assert any("no GPU found" in w for w in res.warnings)
    assert res.selected.requirements == ("torch==2.3.1+cpu",)


def test_gpu_host_never_falls_back_to_cpu_silently(matrix) -> None:
    h = host(matrix, "418.40.04", "Tesla T4")  # a CUDA 10.1 driver: too old for every CUDA 11+ build
    res = resolve(matrix, h, Request("torch", "2.3.1", python="3.11"))
    assert not res.ok
    assert "cuda_mismatch" in codes(res, "2.3.1", "cpu")
    allowed = resolve(matrix, h, Request("torch", "2.3.1", python="3.11", allow_cpu=True))
    assert allowed.ok and allowed.selected.variant == "cpu"
    assert any("--allow-cpu" in w for w in allowed.warnings)


def test_no_detect_without_overrides_picks_the_pypi_default(matrix) -> None:
    res = resolve(matrix, HostFacts(source="none", constrained=False), Request("torch", "2.7.1", python="3.11"))
    assert res.ok and res.selected.variant == "cu126"
    assert res.selected.requirements == ("torch==2.7.1",)
    assert res.selected.index_url is None


def test_python_outside_the_range_is_rejected_with_the_nearest_release(matrix) -> None:
    res = resolve(matrix, HostFacts(source="none"), Request("torch", "2.1.2", python="3.12", cuda="cpu"))
    assert not res.ok
    fix = next(x.fix for r in res.rejected for x in r.reasons if x.code == "python_unsupported")
    assert "torch >= 2.2.0" in fix


def test_unpublished_cuda_is_not_published(matrix) -> None:
    res = resolve(matrix, host(matrix, "550.54.15", "NVIDIA H100 80GB HBM3"),
                  Request("torch", "2.1.2", cuda="12.4", python="3.11"))
    assert not res.ok
    assert any(r.variant == "12.4" and r.reasons[0].code == "not_published" for r in res.rejected)


def test_unknown_release_is_bad_input(matrix) -> None:
    with pytest.raises(BadInput):
        resolve(matrix, HostFacts(), Request("torch", "0.4", python="3.11"))


def test_resolve_json_follows_the_contract(matrix) -> None:
    res = resolve(matrix, host(matrix, "535.104.05", "NVIDIA A100-SXM4-80GB"),
                  Request("torch", "2.1.*", cuda="11.8", python="3.10"))
    doc = res.to_json()
    assert set(doc) == {"ok", "request", "host", "selected", "rejected", "warnings"}
    assert doc["request"] == {"framework": "torch", "version": "2.1.*", "cuda": "11.8", "python": "3.10",
                              "platform": "linux-64"}
    sel = doc["selected"]
    for key in ("framework", "version", "variant", "cuda", "cudnn", "python", "arch", "min_driver", "index_url",
                "requirements", "companions", "base_image"):
        assert key in sel
    assert sel["version"] == "2.1.2" and sel["variant"] == "cu118"
    assert sel["requirements"] == ["torch==2.1.2+cu118"]
    assert sel["companions"] == {"torchvision": "0.16.2", "torchaudio": "2.1.2"}
    assert sel["min_driver"] == "450.80.02"
    assert sel["base_image"].startswith("nvidia/cuda:11.8.0-base-ubuntu")
    assert all(isinstance(a, str) for a in sel["arch"])
    rejected = {(r["version"], r["variant"]) for r in doc["rejected"]}
    assert ("2.1.2", "cu121") in rejected
