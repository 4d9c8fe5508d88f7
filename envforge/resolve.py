"""resolve(matrix, host, request) -> Resolution: pure, no I/O.

Every (release, variant) of the framework that matches --version is a
candidate; each is accepted or rejected with reasons from the closed set in
models.REASON_CODES, each reason carrying a fix a person can act on. Ranking
(for --cuda auto): the newest release that satisfies everything; among its
variants, the highest CUDA the driver supports natively, then the highest
reachable under minor-version compatibility (with a warning), then CPU only
with --allow-cpu. There is never a silent CPU fallback on a machine with a GPU.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Iterable, Sequence

from packaging.specifiers import SpecifierSet
from packaging.version import Version

from .errors import BadInput
from .matrix import Matrix
from .models import (
    BuildRow,
    Gpu,
    HostFacts,
    Reason,
    Rejection,
    ReleaseRow,
    Request,
    Resolution,
    Selected,
)
from .specs import CudaRequest, parse_cuda, parse_version_spec

PYPI_NAMES = {"torch": "torch", "tensorflow": "tensorflow", "jax": "jax"}


# --------------------------------------------------------------------------- architecture rules


def _cc(text: str) -> tuple[int, int]:
    major, minor = text.split(".")
    return int(major), int(minor)


def arch_support(build: BuildRow, arch: str) -> str | None:
    """How a build runs on a GPU of compute capability `arch`: 'sass', 'ptx', 'min' or None.

    A cubin for sm_X.Y runs on X.Z with Z >= Y (same major); PTX for X.Y is
    JIT-compiled by the driver for any newer compute capability. Builds that
    document only a minimum (JAX) run on anything at or above it.
    """
    gpu = _cc(arch)
    for compiled in build.arch:
        cc = _cc(compiled)
        if cc[0] == gpu[0] and cc[1] <= gpu[1]:
            return "sass"
    if any(_cc(p) <= gpu for p in build.ptx):
        return "ptx"
    if build.min_arch and _cc(build.min_arch) <= gpu:
        return "min"
    return None


def arch_known(build: BuildRow) -> bool:
    return bool(build.arch or build.ptx or build.min_arch)


# --------------------------------------------------------------------------- driver rules


@functools.lru_cache(maxsize=4096)
def _dv(text: str) -> Version:
    return Version(text)


@dataclass(frozen=True)
class DriverFloor:
    floor: str | None  # what the policy requires
    native: str | None  # the toolkit's own floor (no minor-version compatibility needed above it)
    origin: str  # human description of where the floor comes from


@functools.lru_cache(maxsize=4096)  # pure; the fix texts ask it for every build of a framework per rejection
def driver_floor(matrix: Matrix, build: BuildRow, policy: str, platform: str) -> DriverFloor:
    if not build.cuda:
        return DriverFloor(None, None, "")
    windows = platform == "win-64"
    minor = ".".join(build.cuda.split(".")[:2])
    toolkits = matrix.toolkits(minor)
    native = None
    if toolkits:
        ga = toolkits[0]
        native = ga.windows_driver if windows else ga.linux_driver
    series = matrix.series(build.cuda.split(".")[0])
    series_floor = None
    if series is not None:
        series_floor = series.min_driver_windows if windows else series.min_driver_linux
    if policy == "strict" or series_floor is None:
        floor, origin = native, f"CUDA {minor}'s own driver floor"
    else:
        floor, origin = series_floor, f"CUDA {build.cuda.split('.')[0]}.x minor-version compatibility"
    if build.min_driver and (floor is None or _dv(build.min_driver) > _dv(floor)):
        floor, origin = build.min_driver, "the framework's documented driver floor"
        if native is None or _dv(build.min_driver) > _dv(native):
            native = build.min_driver
    return DriverFloor(floor, native, origin)


# --------------------------------------------------------------------------- requirement strings


def requirements(framework: str, build: BuildRow) -> tuple[str, ...]:
    package = build.package or PYPI_NAMES[framework]
    extra = f"[{build.extra}]" if build.extra else ""
    local = f"+{build.local}" if build.local and not build.pypi_default else ""
    return (f"{package}{extra}=={build.version}{local}",)


def base_image(matrix: Matrix, build: BuildRow, python: str) -> tuple[str | None, str | None]:
    """The nvidia/cuda tag that fits a build, and why (or None with the reason)."""
    if build.rocm:
        return None, "envforge has no ROCm base-image data; pass --base-image"
    if not build.cuda:
        return f"python:{python}-slim", "a CPU build needs no CUDA userspace: the official slim Python image"
    flavour = "cudnn-runtime" if build.system_cuda else "base"
    cudnn = build.cudnn if build.system_cuda else None
    image, cuda = cuda_image(matrix, build.cuda, flavour, cudnn)
    if image is None:
        return None, cuda
    why = (
        f"{'wheels bundle their CUDA libraries: the smallest flavour (base)' if not build.system_cuda else 'this build needs CUDA and cuDNN from the system: cudnn-runtime'}"
        f", CUDA {cuda} (not newer than the build's {build.cuda}), newest Ubuntu for it"
    )
    return image, why


def cuda_image(matrix: Matrix, cuda: str, flavour: str, cudnn: str | None = None) -> tuple[str | None, str]:
    """(the nvidia/cuda tag of `flavour` for a build of CUDA `cuda`, the image's full CUDA version),
    or (None, the reason). `cudnn`: the cuDNN (major) the image must carry, for cudnn flavours."""
    wanted = Version(cuda).release[:2]
    best = None
    for image in matrix.images():
        release = Version(image.cuda).release
        # The image must not be newer than the build's CUDA: nvidia/cuda images set
        # NVIDIA_REQUIRE_CUDA=cuda>=X.Y, which the container runtime checks against the driver.
        if release[0] != wanted[0] or release[:2] > wanted or flavour not in image.flavours:
            continue
        if cudnn and image.cudnn and image.cudnn != cudnn.split(".")[0]:
            continue
        if best is None or release > Version(best.cuda).release:
            best = image
    if best is None:
        return None, f"no nvidia/cuda {flavour} image for CUDA {cuda} in images.toml; pass --base-image"
    ubuntu = sorted(best.ubuntu, key=Version)[-1] if best.ubuntu else None
    if ubuntu is None:
        return None, f"images.toml lists no Ubuntu for nvidia/cuda {best.cuda}"
    tag_flavour = flavour.replace("cudnn", best.cudnn_token or "cudnn") if flavour.startswith("cudnn") else flavour
    return f"nvidia/cuda:{best.cuda}-{tag_flavour}-ubuntu{ubuntu}", best.cuda


# --------------------------------------------------------------------------- the resolver


@dataclass(frozen=True)
class _Judged:
    release: ReleaseRow
    build: BuildRow
    reasons: tuple[Reason, ...]
    native: bool  # driver meets the toolkit's own floor (or nothing to check)
    warnings: tuple[str, ...]


def supports_python(release: ReleaseRow, python: str) -> bool:
    """Whether a release has wheels for Python X.Y (its `python` range from the matrices)."""
    return _python_in(release.python, python)


@functools.lru_cache(maxsize=4096)
def _python_in(spec: str, python: str) -> bool:
    return SpecifierSet(spec).contains(f"{python}.0", prereleases=True)


def _accelerator(build: BuildRow) -> str:
    if build.cuda:
        return f"CUDA {build.cuda}"
    if build.rocm:
        return f"ROCm {build.rocm}"
    return "CPU"


def resolve(matrix: Matrix, host: HostFacts, request: Request) -> Resolution:
    """Pick the best build for the request on the host; explain every rejected candidate."""
    framework = request.framework
    spec = parse_version_spec(request.version)
    cuda_req = parse_cuda(request.cuda, matrix.known_cuda())
    python = request.python or "3.11"
    releases = [r for r in matrix.releases(framework) if spec.contains(r.version, prereleases=True)]
    if not releases:
        known = matrix.releases(framework)
        raise BadInput(
            f"no {framework} release matches {request.version!r}. envforge knows {framework} "
            f"{known[0].version} … {known[-1].version}; `envforge matrix {framework}` lists them.",
            fix="if the release is newer than envforge's matrices, run `envforge matrix refresh`",
        )
    wanted = {r.version for r in releases}
    builds = [b for b in matrix.builds(framework) if b.version in wanted]
    release_of = {r.version: r for r in releases}

    nvidia_gpus = [g for g in host.gpus if g.vendor == "nvidia"]
    amd_gpus = [g for g in host.gpus if g.vendor == "amd"]
    judged = [
        _judge(matrix, framework, release_of[b.version], b, host, request, cuda_req, python, nvidia_gpus, amd_gpus)
        for b in builds
    ]
    rejected: list[Rejection] = [Rejection(j.build.version, j.build.variant, j.reasons) for j in judged if j.reasons]
    if cuda_req.kind in ("cuda", "rocm"):
        rejected.extend(_not_published(matrix, framework, releases, builds, cuda_req))
    accepted = [j for j in judged if not j.reasons]

    warnings: list[str] = []
    chosen = _rank(framework, accepted, host, cuda_req)
    if chosen is None:
        return Resolution(
            request=_echo(request, python), host=host, selected=None,
            rejected=tuple(_sorted_rejections(rejected)), warnings=tuple(warnings), candidates=len(builds),
        )
    warnings.extend(chosen.warnings)
    if not host.constrained:
        warnings.append("no host constraints (--no-detect): no driver or GPU architecture check was made")
    elif host.source == "none" and not host.gpus and chosen.build.variant == "cpu" and cuda_req.kind == "auto":
        warnings.append("no GPU found on this host: chose the CPU build")
    elif host.source == "none" and not host.gpus and chosen.build.cuda:
        warnings.append(
            f"no NVIDIA driver found on this host: the {chosen.build.variant} build will need a driver "
            f">= {driver_floor(matrix, chosen.build, request.driver_policy, request.platform).floor} where it runs"
        )
    elif host.gpus and chosen.build.variant == "cpu":
        warnings.append("chose a CPU build on a machine with GPUs because --allow-cpu was given")
    if chosen.build.cuda and host.driver is None and host.gpus:
        warnings.append("the driver version is unknown: no driver check was made (pass --driver)")
    if host.gpus and chosen.build.cuda and not arch_known(chosen.build):
        warnings.append(
            f"envforge does not know which GPU architectures {framework} {chosen.build.version} "
            f"({chosen.build.variant}) was compiled for: the GPU check was skipped"
        )
    selected = _selected(matrix, framework, chosen, request, python, warnings)
    # Report only rejections that compete with the choice: same or newer releases.
    chosen_version = Version(chosen.build.version)
    shown = [r for r in rejected if Version(r.version) >= chosen_version]
    return Resolution(
        request=_echo(request, python), host=host, selected=selected,
        rejected=tuple(_sorted_rejections(shown)), warnings=tuple(warnings), candidates=len(builds),
    )


def _echo(request: Request, python: str) -> Request:
    from dataclasses import replace

    return replace(request, python=python, cuda=request.cuda or "auto")


def _sorted_rejections(rejected: Iterable[Rejection]) -> list[Rejection]:
    return sorted(rejected, key=lambda r: (Version(r.version), r.variant), reverse=True)


def _judge(
    matrix: Matrix, framework: str, release: ReleaseRow, build: BuildRow, host: HostFacts, request: Request,
    cuda_req: CudaRequest, python: str, nvidia_gpus: Sequence[Gpu], amd_gpus: Sequence[Gpu],
) -> _Judged:
    reasons: list[Reason] = []
    warnings: list[str] = []
    native = True
    name = f"{framework} {build.version} ({build.variant})"

    # Which accelerator was asked for, against what this build is.
    if cuda_req.kind == "cuda" and not (build.cuda and cuda_req.matches_cuda(build.cuda)):
        reasons.append(Reason(
            "cuda_mismatch",
            f"{name} is a {_accelerator(build)} build; CUDA {cuda_req.version} was requested",
            f"use --cuda {build.cuda}" if build.cuda else f"use --cuda {build.variant}",
        ))
    elif cuda_req.kind == "rocm" and not (build.rocm and cuda_req.matches_rocm(build.rocm)):
        reasons.append(Reason(
            "cuda_mismatch",
            f"{name} is a {_accelerator(build)} build; ROCm {cuda_req.version} was requested",
            f"use --cuda rocm{build.rocm}" if build.rocm else "choose a ROCm variant with --cuda rocmX.Y",
        ))
    elif cuda_req.kind == "cpu" and build.variant != "cpu":
        reasons.append(Reason("cuda_mismatch", f"{name} is a {_accelerator(build)} build; cpu was requested",
                              "use --cuda auto to consider GPU builds"))
    elif cuda_req.kind != "cpu":
        if build.variant == "cpu" and (nvidia_gpus or amd_gpus or not host.constrained or cuda_req.kind != "auto"):
            if not request.allow_cpu:
                reasons.append(Reason(
                    "cuda_mismatch",
                    f"{name} runs on the CPU only, and this host has a GPU" if host.gpus
                    else f"{name} runs on the CPU only",
                    "pass --allow-cpu to accept a CPU build, or --cuda cpu to ask for one",
                ))
        elif build.rocm and host.constrained and not amd_gpus:
            reasons.append(Reason(
                "cuda_mismatch",
                f"{name} needs an AMD GPU with ROCm; {'this host has NVIDIA GPUs' if nvidia_gpus else 'none was found'}",
                "use a CUDA variant, or describe the target with --arch/--gpu",
            ))
        elif build.cuda and amd_gpus and not nvidia_gpus:
            reasons.append(Reason("cuda_mismatch", f"{name} needs an NVIDIA GPU; this host has AMD GPUs",
                                  "use a ROCm variant: --cuda rocmX.Y"))
        elif build.cuda and host.constrained and not nvidia_gpus and host.source == "none" \
                and cuda_req.kind == "auto" and host.driver is None:
            reasons.append(Reason(
                "cuda_mismatch",
                f"{name} needs an NVIDIA GPU, and none was found on this host",
                "ask for one explicitly with --cuda X.Y, describe the target with --driver/--gpu, "
                "or use --no-detect",
            ))

    if any(r.code == "cuda_mismatch" for r in reasons):
        # Not the accelerator asked for (or the host has): its driver and GPU checks are moot.
        return _Judged(release, build, tuple(reasons), native, tuple(warnings))

    if not supports_python(release, python):
        reasons.append(Reason(
            "python_unsupported",
            f"{framework} {build.version} supports Python {release.python}, not {python}",
            _python_fix(matrix, framework, release, python),
        ))
    if request.platform not in build.platforms:
        reasons.append(Reason(
            "platform_unsupported",
            f"{name} is published for {', '.join(build.platforms)}, not {request.platform}",
            _platform_fix(matrix, framework, build, request.platform),
        ))


    # Driver floor.
    if build.cuda and host.driver:
        floor = driver_floor(matrix, build, request.driver_policy, request.platform)
        driver = _dv(host.driver)
        if floor.floor and driver < _dv(floor.floor):
            reasons.append(Reason(
                "driver_too_old",
                f"{name} needs driver >= {floor.floor} ({floor.origin}); this host has {host.driver}",
                _driver_fix(matrix, framework, build, host.driver, floor.floor, request),
            ))
        elif floor.native and driver < _dv(floor.native):
            native = False
            warnings.append(
                f"driver {host.driver} is below CUDA {build.cuda}'s own floor {floor.native}: {name} runs through "
                f"CUDA minor-version compatibility, which costs PTX JIT (kernels must exist as SASS for the GPU) "
                f"and features needing a newer driver; upgrading to >= {floor.native} removes the limits"
            )

    # GPU architectures: every GPU on the host must be served.
    if build.cuda and nvidia_gpus and not arch_known(build):
        # The build's arch list is not recorded; the toolkit still bounds it. A GPU older than
        # anything CUDA X.Y can target cannot run it at all (PTX only runs forward); a GPU newer
        # than its newest target could only run it through PTX JIT, which envforge does not count on
        # without a record that the build carries PTX.
        targets = matrix.targets(build.cuda)
        if targets is not None and targets.sass:
            oldest, newest = min(targets.sass, key=_cc), max(targets.sass, key=_cc)
            for gpu in _unique_by_arch([g for g in nvidia_gpus if g.arch]):
                assert gpu.arch is not None
                cc = _cc(gpu.arch)
                sass_fits = any(_cc(t)[0] == cc[0] and _cc(t)[1] <= cc[1] for t in targets.sass)
                if cc < _cc(oldest) or (cc > _cc(newest) and not sass_fits):
                    where = "older than" if cc < _cc(oldest) else "newer than"
                    reasons.append(Reason(
                        "arch_unsupported",
                        f"{name}: CUDA {build.cuda} can compile for compute capability {oldest} to {newest} only; "
                        f"{gpu.name} ({gpu.arch}) is {where} that (the build's own arch list is not recorded)",
                        _arch_fix(matrix, framework, build, gpu, request),
                    ))
    if build.cuda and nvidia_gpus and arch_known(build):
        missing = [g for g in nvidia_gpus if g.arch and arch_support(build, g.arch) is None]
        for gpu in _unique_by_arch(missing):
            reasons.append(Reason(
                "arch_unsupported",
                f"{name} has no kernels for {gpu.name} (compute capability {gpu.arch}); it carries "
                f"{_arch_list_text(build)}",
                _arch_fix(matrix, framework, build, gpu, request),
            ))
        if not missing and not native:
            jit = [g for g in nvidia_gpus if g.arch and arch_support(build, g.arch) == "ptx"]
            if jit:
                reasons.append(Reason(
                    "arch_unsupported",
                    f"{name} runs on {jit[0].name} (compute capability {jit[0].arch}) only by PTX JIT, "
                    f"which minor-version compatibility does not allow on driver {host.driver}",
                    f"upgrade the driver to >= {driver_floor(matrix, build, 'strict', request.platform).native}",
                ))
    return _Judged(release, build, tuple(reasons), native, tuple(warnings))


def _unique_by_arch(gpus: Sequence[Gpu]) -> list[Gpu]:
    seen: dict[str | None, Gpu] = {}
    for gpu in gpus:
        seen.setdefault(gpu.arch, gpu)
    return list(seen.values())


def _arch_list_text(build: BuildRow) -> str:
    parts = [f"sm_{a.replace('.', '')}" for a in build.arch]
    parts += [f"PTX {p}" for p in build.ptx]
    if build.min_arch:
        parts.append(f"compute capability >= {build.min_arch}")
    return ", ".join(parts) or "no recorded architectures"


def _rank(framework: str, accepted: Sequence[_Judged], host: HostFacts, cuda_req: CudaRequest) -> _Judged | None:
    if not accepted:
        return None
    gpu_builds = [j for j in accepted if j.build.variant != "cpu"]
    if not gpu_builds:
        newest = max(Version(j.build.version) for j in accepted)
        return next(j for j in accepted if Version(j.build.version) == newest)
    newest = max(Version(j.build.version) for j in gpu_builds)
    pool = [j for j in gpu_builds if Version(j.build.version) == newest]
    if not host.constrained and cuda_req.kind == "auto":
        default = _default_variant(framework, pool)
        if default is not None:
            return default

    def cuda_key(j: _Judged) -> tuple[int, Version]:
        return (1 if j.native else 0, Version(j.build.cuda or j.build.rocm or "0"))

    # Prefer builds that need no system CUDA (bundled wheels), then native driver support, then newest CUDA.
    bundled = [j for j in pool if not j.build.system_cuda] or pool
    plain = [j for j in bundled if not j.build.variant.endswith("-local")] or bundled
    return max(plain, key=cuda_key)


def _default_variant(framework: str, pool: Sequence[_Judged]) -> _Judged | None:
    """The framework's default GPU build: torch's PyPI default; tensorflow[and-cuda]; jax's newest cudaXX extra."""
    if framework == "torch":
        return next((j for j in pool if j.build.pypi_default), None)
    if framework == "tensorflow":
        return next((j for j in pool if j.build.variant == "and-cuda"), None) or next(
            (j for j in pool if j.build.variant == "cuda"), None)
    gpu = [j for j in pool if j.build.cuda and not j.build.variant.endswith("-local")]
    return max(gpu, key=lambda j: Version(j.build.cuda or "0")) if gpu else None


def _selected(
    matrix: Matrix, framework: str, chosen: _Judged, request: Request, python: str, warnings: list[str],
) -> Selected:
    build, release = chosen.build, chosen.release
    companions: list[tuple[str, str]] = []
    if framework == "torch":
        for package in ("torchvision", "torchaudio"):
            version = getattr(release, package)
            if version:
                companions.append((package, version))
    image, why = base_image(matrix, build, python)
    if image is None and why:
        warnings.append(why)
    floor = driver_floor(matrix, build, request.driver_policy, request.platform)
    return Selected(
        framework=framework,
        version=build.version,
        variant=build.variant,
        cuda=build.cuda,
        cudnn=build.cudnn,
        python=release.python,
        arch=build.arch,
        min_driver=floor.floor,
        index_url=None if build.pypi_default else build.index_url,
        requirements=requirements(framework, build),
        companions=tuple(companions),
        base_image=image,
        rocm=build.rocm,
        ptx=build.ptx,
        min_arch=build.min_arch,
        system_cuda=build.system_cuda,
        find_links=build.find_links,
    )


# --------------------------------------------------------------------------- fixes: the nearest working alternative


def _python_fix(matrix: Matrix, framework: str, release: ReleaseRow, python: str) -> str:
    supporting = [r.version for r in matrix.releases(framework) if supports_python(r, python)]
    parts = [f"use a Python in {release.python} (--python)"]
    if supporting:
        if Version(supporting[0]) > Version(release.version):
            parts.append(f"or {framework} >= {supporting[0]}, the first release for Python {python}")
        else:
            parts.append(f"or {framework} <= {supporting[-1]}, the last release for Python {python}")
    return ", ".join(parts)


def _platform_fix(matrix: Matrix, framework: str, build: BuildRow, platform: str) -> str:
    same_release = [b.variant for b in matrix.builds(framework) if b.version == build.version and platform in b.platforms]
    if same_release:
        return f"{framework} {build.version} on {platform}: use variant {', '.join(same_release)}"
    return f"choose a --platform among {', '.join(build.platforms)}"


def _driver_fix(matrix: Matrix, framework: str, build: BuildRow, driver: str, floor: str, request: Request) -> str:
    fix = f"upgrade the driver to >= {floor}"
    dv = _dv(driver)

    def runs(b: BuildRow) -> bool:
        f = driver_floor(matrix, b, request.driver_policy, request.platform).floor
        return b.cuda is not None and (f is None or dv >= _dv(f)) and request.platform in b.platforms

    same = [b for b in matrix.builds(framework) if b.version == build.version and runs(b)]
    if same:
        best = max(same, key=lambda b: Version(b.cuda or "0"))
        return f"{fix}, or use --cuda {best.cuda} ({framework} {build.version} {best.variant} runs on {driver})"
    older = [b for b in matrix.builds(framework) if runs(b)]
    if older:
        best = max(older, key=lambda b: (Version(b.version), Version(b.cuda or "0")))
        return f"{fix}, or pin {framework}<={best.version} with --cuda {best.cuda} (the newest release that runs on {driver})"
    return fix


def _arch_fix(matrix: Matrix, framework: str, build: BuildRow, gpu: Gpu, request: Request) -> str:
    assert gpu.arch is not None
    sm = f"sm_{gpu.arch.replace('.', '')}"
    ok = [
        b for b in matrix.builds(framework)
        if b.cuda and request.platform in b.platforms and arch_known(b) and arch_support(b, gpu.arch)
    ]
    same = [b for b in ok if b.version == build.version]
    if same:
        best = max(same, key=lambda b: Version(b.cuda or "0"))
        return f"use --cuda {best.cuda}: {framework} {build.version} {best.variant} carries {sm} kernels"
    newer = sorted((b for b in ok if Version(b.version) > Version(build.version)),
                   key=lambda b: (Version(b.version), Version(b.cuda or "0")))
    if newer:
        first = newer[0]
        return (f"{framework} {first.version} ({first.variant}) is the first release with kernels for {gpu.name} "
                f"({sm}): use --version {first.version} --cuda {first.cuda}")
    older = sorted((b for b in ok if Version(b.version) < Version(build.version)),
                   key=lambda b: (Version(b.version), Version(b.cuda or "0")))
    if older:
        last = older[-1]
        return (f"{framework} {last.version} ({last.variant}) is the last release with kernels for {gpu.name} "
                f"({sm}): use --version {last.version} --cuda {last.cuda}")
    return f"no {framework} build in envforge's matrices carries kernels for {sm}"


def _not_published(
    matrix: Matrix, framework: str, releases: Sequence[ReleaseRow], builds: Sequence[BuildRow], cuda_req: CudaRequest,
) -> list[Rejection]:
    out = []
    having: list[str] | None = None  # releases that have the asked-for accelerator: the same for every release
    for release in releases:
        variants = [b for b in builds if b.version == release.version]
        if cuda_req.kind == "cuda":
            hit = any(b.cuda and cuda_req.matches_cuda(b.cuda) for b in variants)
            label = f"CUDA {cuda_req.version}"
        else:
            hit = any(b.rocm and cuda_req.matches_rocm(b.rocm) for b in variants)
            label = f"ROCm {cuda_req.version}"
        if hit:
            continue
        if having is None:
            with_it = {b.version for b in matrix.builds(framework)
                       if (b.cuda and cuda_req.matches_cuda(b.cuda)) or (b.rocm and cuda_req.matches_rocm(b.rocm))}
            having = [r.version for r in matrix.releases(framework) if r.version in with_it]
        fix = f"{framework} {release.version} builds: {', '.join(b.variant for b in variants)}"
        if having:
            fix += f"; {label} builds exist for {framework} {having[0]} … {having[-1]}"
        out.append(Rejection(release.version, cuda_req.text, (Reason(
            "not_published", f"{framework} {release.version} has no {label} build", fix),)))
    return out
