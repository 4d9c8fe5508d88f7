"""Conda format: environment.yml for conda-forge, and a conda-lock.yml solved by a real solver.

Where a conda, mamba or micromamba executable is on PATH, `conda-lock lock` solves
(it drives that executable); otherwise py-rattler solves in-process and the result
is written through conda-lock's own lockfile models and writer, so both routes give
the same file format, the same content hashes and the same layout.

Either way the target's virtual packages (`__cuda`, `__glibc`, `__linux`, ...) come
from the resolved target, never from this machine: a GPU lock is made on a machine
without a GPU. py-rattler and conda-lock are imported lazily (`envforge --help` must
not pay for them); without them the conda format raises ToolNotFound.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, Literal, Mapping, Sequence
from urllib.parse import urlparse
from urllib.request import url2pathname

from packaging.version import InvalidVersion, Version

from envforge.errors import BadInput, EnvironmentFailure, LockError, ToolNotFound
from envforge.models import PLATFORMS, Selected

if TYPE_CHECKING:
    from conda_lock.lockfile.v2prelim.models import Lockfile

INSTALL_HINT = "pip install py-rattler conda-lock"
ENVIRONMENT_FILE = "environment.yml"
LOCK_FILE = "conda-lock.yml"
VIRTUAL_PACKAGES_FILE = "virtual-packages.yml"
DEFAULT_GLIBC = "2.28"
CONDA_EXECUTABLES = ("micromamba", "mamba", "conda")  # the first one on PATH drives conda-lock
SUBPROCESS_TIMEOUT_S = 900

Solver = Literal["auto", "conda-lock", "rattler"]


# --------------------------------------------------------------------------- conda-forge naming
#
# What conda-forge calls each framework and how its CUDA builds are told apart.
# Every CUDA build string starts with "cuda" and every CPU build string with "cpu",
# so `cuda*` / `cpu*` select the accelerator; the CUDA version is selected by
# pinning the `cuda-version` metapackage, which every conda-forge CUDA build
# depends on (`cuda-version >=X.Y,<X+1`, conda-forge's CUDA recipe guide:
# pin_compatible('cuda-version', min_pin='x.x', max_pin='x')) and which constrains
# `__cuda >=<major>` (conda-forge/cuda-version-feedstock recipe/meta.yaml @ d548d47,
# run_constrained: "__cuda >={{ version.split('.', 1)[0] }}  # Major version is lower bound").


@dataclass(frozen=True)
class CondaForgeNaming:
    """How conda-forge publishes one framework."""

    framework: str
    package: str  # the conda-forge package pinned to the framework's version
    build_package: str  # the package whose build string says CUDA or CPU
    first: str  # the first version whose builds carry the cuda*/cpu* build strings
    source: str


CONDA_FORGE: dict[str, CondaForgeNaming] = {
    # conda-forge/pytorch-cpu-feedstock recipe/meta.yaml. The `pytorch` output with
    # "cuda{{ cuda_compiler_version | replace('.', '') }}py{{ CONDA_PY }}h{{ PKG_HASH }}_{{ PKG_BUILDNUM }}" and
    # "cpu_py{{ CONDA_PY }}h..." build strings first appears for 1.6.0 (43735edb, merge of PR #22, 2020-12-17;
    # before it the feedstock published only `pytorch-cpu` 1.0.1/1.1.0). Later spellings keep the prefixes:
    # "cuda118_py311h..._304" / "cpu_generic_py311h..._4" (ef00600f, 2.1.2, 2024), "cuda126_generic_py311_h..."
    # / "cpu_mkl_py312_h..." (74dd3d46, 2.13.0). `pytorch-gpu` / `pytorch-cpu` are metapackages that depend on
    # `pytorch` with the matching build string, so pinning `pytorch` is enough.
    "torch": CondaForgeNaming(
        "torch", "pytorch", "pytorch", "1.6.0",
        "conda-forge/pytorch-cpu-feedstock recipe/meta.yaml (43735edb, ef00600f, 74dd3d46)",
    ),
    # conda-forge/tensorflow-feedstock recipe/meta.yaml: "Enable CUDA in recipe" (3b50ece, 2021-10-29, version
    # 2.6.0) introduced "cuda{{ cuda_compiler_version | replace('.', '') }}py{{ CONDA_PY }}h{{ PKG_HASH }}_..." and
    # "cpu_py{{ CONDA_PY }}h..." for `tensorflow` (unchanged at 2cc3b129, 2.19.1). Earlier builds were CPU-only
    # with conda-build's default "py39h..." strings, which no cpu*/cuda* pattern selects.
    "tensorflow": CondaForgeNaming(
        "tensorflow", "tensorflow", "tensorflow", "2.6.0",
        "conda-forge/tensorflow-feedstock recipe/meta.yaml (3b50ece, 2cc3b129)",
    ),
    # conda-forge/jax-feedstock: `jax` is noarch: python and depends on "jaxlib >=<min>,<=<version>"
    # (recipe/meta.yaml @ e41540a5), so jax's own pin chooses the jaxlib version. conda-forge/jaxlib-feedstock:
    # "cuda{{ ... }}py{{ CONDA_PY }}h..." / "cpu_py{{ CONDA_PY }}h..." since 0.3.7 (8574963, 2022-05-14),
    # "cuda129_py311h..._2xx" / "cpu_py311h..." in recipe/recipe.yaml @ 9123295e (0.9.2).
    "jax": CondaForgeNaming(
        "jax", "jax", "jaxlib", "0.3.7",
        "conda-forge/jax-feedstock recipe/meta.yaml (e41540a5); conda-forge/jaxlib-feedstock (8574963, 9123295e)",
    ),
}


# --------------------------------------------------------------------------- value types


@dataclass(frozen=True)
class CondaTarget:
    """One platform of a conda lock, with the virtual packages its machines will have."""

    platform: str  # linux-64 | linux-aarch64 | osx-arm64 | win-64
    cuda: str | None  # "11.8" -> __cuda=11.8 ; None for CPU builds
    glibc: str | None = DEFAULT_GLIBC  # Linux only

    def virtual_packages(self) -> dict[str, str]:
        """name -> "version" or "version build": what conda-lock's virtual-package spec says for this target.

        Everything but __cuda and __glibc is conda-lock's default for the platform
        (conda_lock/default-virtual-packages.yaml, conda-lock 4.0.3: __linux 5.10,
        __osx 11.0, __archspec "1 <arch>"), so a lock made here matches one made with
        `conda-lock --virtual-package-spec` for the same target.
        """
        if self.platform.startswith("linux-"):
            arch = "x86_64" if self.platform == "linux-64" else "aarch64"
            packages = {"__unix": "0", "__linux": "5.10", "__glibc": self.glibc or DEFAULT_GLIBC,
                        "__archspec": f"1 {arch}"}
        elif self.platform == "osx-arm64":
            packages = {"__unix": "0", "__osx": "11.0", "__archspec": "1 arm64"}
        elif self.platform == "win-64":
            packages = {"__win": "0", "__archspec": "1 x86_64"}
        else:
            raise BadInput(f"unknown conda platform {self.platform!r}", fix=f"use one of {', '.join(PLATFORMS)}")
        if self.cuda:
            packages["__cuda"] = self.cuda
        return dict(sorted(packages.items()))


@dataclass(frozen=True)
class CondaSpec:
    channels: tuple[str, ...]
    # MatchSpec strings, e.g. "python 3.11.*", "pytorch ==2.1.2 cuda*", "cuda-version 11.8.*"
    dependencies: tuple[str, ...]


# --------------------------------------------------------------------------- the spec


_PYTHON = re.compile(r"^(\d+)\.(\d+)$")
_CUDA = re.compile(r"^(\d+)\.(\d+)(?:\.\d+)*$")
_SPEC_NAME = re.compile(r"^\s*(?:[^:\s]+::)?([A-Za-z0-9_][A-Za-z0-9_.\-]*)")


def _major_minor(cuda: str, what: str) -> str:
    match = _CUDA.match(cuda.strip())
    if not match:
        raise BadInput(f"{what} {cuda!r} is not a CUDA version (expected major.minor, e.g. 11.8)")
    return f"{match.group(1)}.{match.group(2)}"


def spec_name(spec: str) -> str:
    """The package name of a MatchSpec string ("pytorch ==2.1.2 cuda*" -> "pytorch")."""
    match = _SPEC_NAME.match(spec)
    if not match:
        raise BadInput(f"{spec!r} is not a conda package spec", fix='write specs like "numpy >=1.26" or "filelock"')
    return match.group(1).lower()


def conda_spec(
    selected: Selected, python: str, extra: Sequence[str] = (), channels: Sequence[str] = ("conda-forge",),
) -> CondaSpec:
    """The conda-forge specs for a resolved build: the framework with its cuda*/cpu* build string,
    `cuda-version X.Y.*` for a CUDA build, Python X.Y, plus `extra` specs.

    Raises LockError where conda-forge publishes no such build or envforge does not
    know its naming (ROCm, releases before the cuda*/cpu* build strings), BadInput for
    an unknown framework or a malformed Python version.
    """
    naming = CONDA_FORGE.get(selected.framework)
    if naming is None:
        raise BadInput(f"no conda-forge naming known for framework {selected.framework!r}",
                       fix=f"use one of {', '.join(sorted(CONDA_FORGE))}")
    if selected.rocm:
        raise LockError(
            f"conda-forge publishes no ROCm builds of {naming.package} (its feedstock builds CUDA and CPU variants "
            f"only; {naming.source}); {selected.framework} {selected.version} {selected.variant} has no conda form",
            fix="use --format pip for ROCm builds, or --cuda cpu / a CUDA build for --format conda",
        )
    try:
        too_old = Version(selected.version) < Version(naming.first)
    except InvalidVersion:
        raise BadInput(f"{selected.framework} version {selected.version!r} is not a version") from None
    if too_old:
        raise LockError(
            f"envforge does not know how conda-forge names {naming.package} {selected.version}: the cuda*/cpu* build "
            f"strings it selects by start with {naming.package} {naming.first} ({naming.source})",
            fix=f"pick {selected.framework} >= {naming.first} (--version) for --format conda, or use --format pip",
        )
    match = _PYTHON.match(python.strip())
    if not match:
        raise BadInput(f"Python {python!r} is not major.minor (e.g. 3.11)", fix="pass --python 3.11")
    deps = [f"python {match.group(1)}.{match.group(2)}.*"]
    build = "cpu*"
    if selected.cuda:
        deps.append(f"cuda-version {_major_minor(selected.cuda, 'CUDA')}.*")
        build = "cuda*"
    if naming.build_package == naming.package:
        deps.append(f"{naming.package} =={selected.version} {build}")
    else:
        deps.append(f"{naming.package} =={selected.version}")
        deps.append(f"{naming.build_package} * {build}")
    taken = {spec_name(d): d for d in deps}
    for spec in extra:
        spec = " ".join(spec.split())
        name = spec_name(spec)
        if name in taken and taken[name] != spec:
            raise BadInput(
                f"extra conda spec {spec!r} clashes with {taken[name]!r}, which envforge sets for this build",
                fix=f"drop {name} from the extra specs",
            )
        taken[name] = spec
    if not channels:
        raise BadInput("a conda spec needs at least one channel", fix="use conda-forge")
    return CondaSpec(channels=tuple(channels), dependencies=tuple(sorted(set(taken.values()), key=_sort_key)))


def _sort_key(spec: str) -> tuple[str, str]:
    return (spec_name(spec), spec)


# --------------------------------------------------------------------------- environment.yml

_PLAIN_SCALAR = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-*<>=,!|~ /:]*$")


_NOT_A_STRING = re.compile(  # plain scalars YAML 1.1 reads as booleans, null or numbers
    r"^(?:y|n|yes|no|true|false|on|off|null|~|[-+]?(?:\d[\d_]*)?(?:\.\d*)?(?:e[-+]?\d+)?|[-+]?\.inf|\.nan|"
    r"0x[0-9a-f_]+|0o?[0-7_]+|[-+]?\d[\d_]*(?::[0-5]?\d)+(?:\.\d*)?)$",
    re.IGNORECASE,
)


def _yaml_scalar(text: str) -> str:
    """`text` as a YAML scalar: plain where YAML reads it back as the same string, else JSON (double-quoted)."""
    plain = _PLAIN_SCALAR.match(text) and ": " not in text and " #" not in text and not text.endswith(":")
    if plain and not _NOT_A_STRING.match(text):
        return text
    return json.dumps(text)


def _comment_block(header: str) -> list[str]:
    lines = []
    for line in header.splitlines():
        line = line.rstrip()
        lines.append(line if line.startswith("#") else f"# {line}".rstrip())
    return lines


def render_environment_yml(spec: CondaSpec, name: str, header: str) -> str:
    """environment.yml for `conda env create` / conda-lock: `header` as comments, channels, sorted dependencies.

    `nodefaults` follows the channels (conda-forge's advice: never mix in Anaconda's
    defaults channel) unless `defaults` itself is one of them.
    """
    lines = _comment_block(header)
    lines.append(f"name: {_yaml_scalar(name)}")
    lines.append("channels:")
    lines.extend(f"  - {_yaml_scalar(channel)}" for channel in spec.channels)
    if "defaults" not in spec.channels and "nodefaults" not in spec.channels:
        lines.append("  - nodefaults")
    lines.append("dependencies:")
    lines.extend(f"  - {_yaml_scalar(dep)}" for dep in sorted(spec.dependencies, key=_sort_key))
    return "\n".join(lines) + "\n"


def render_virtual_packages_yml(targets: Sequence[CondaTarget]) -> str:
    """conda-lock's --virtual-package-spec file for the targets."""
    lines = ["subdirs:"]
    for target in sorted(targets, key=lambda t: t.platform):
        lines.append(f"  {target.platform}:")
        lines.append("    packages:")
        lines.extend(f"      {name}: {json.dumps(value)}" for name, value in target.virtual_packages().items())
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- lock


def lock(
    spec: CondaSpec,
    targets: Sequence[CondaTarget],
    *,
    channel_urls: Mapping[str, str] | None = None,
    solver: Solver = "auto",
) -> str:
    """Solve `spec` for every target and return the text of one conda-lock.yml holding all of them.

    `channel_urls` maps a channel name of the spec to the URL or directory to solve
    against (a mirror, or a local channel in tests). `solver`: "auto" uses conda-lock
    when conda/mamba/micromamba is on PATH, else rattler in-process.

    The text is deterministic for the same inputs and repodata: no time stamps, content
    hashes computed by conda-lock from the spec and the targets' virtual packages,
    packages and their dependencies sorted. Raises LockError (no solution: names the
    specs and carries the solver's explanation), EnvironmentFailure (a channel cannot
    be read, the solver crashed), ToolNotFound (py-rattler / conda-lock missing),
    BadInput (malformed targets).
    """
    targets = _check_targets(targets)
    channels = [_channel_location(name, (channel_urls or {}).get(name)) for name in spec.channels]
    overrides = channels if channels != list(spec.channels) else None
    executable = None
    if solver in ("auto", "conda-lock"):
        executable = find_conda_executable()
        if executable is None and solver == "conda-lock":
            raise ToolNotFound(
                f"conda-lock needs conda, mamba or micromamba on PATH (looked for {', '.join(CONDA_EXECUTABLES)})",
                fix="install micromamba, or let envforge solve in-process with rattler (solver='rattler')",
            )
    elif solver != "rattler":
        raise BadInput(f"unknown conda solver {solver!r}", fix="use auto, conda-lock or rattler")
    cl = _conda_lock_api()
    with tempfile.TemporaryDirectory(prefix="envforge-conda-") as scratch:
        workdir = Path(scratch)
        env_file = workdir / ENVIRONMENT_FILE
        env_file.write_text(render_environment_yml(spec, "envforge", ""), encoding="utf-8")
        vp_file = workdir / VIRTUAL_PACKAGES_FILE
        vp_file.write_text(render_virtual_packages_yml(targets), encoding="utf-8")
        lock_path = workdir / LOCK_FILE
        if executable is not None:
            lockfile = _lock_with_conda_lock(cl, executable, workdir, targets, overrides, spec)
        else:
            lockfile = _lock_with_rattler(cl, spec, targets, channels, overrides, env_file, vp_file)
        cl.write_conda_lock_file(lockfile, lock_path, metadata_choices=())
        return lock_path.read_text(encoding="utf-8")


def find_conda_executable() -> str | None:
    for name in CONDA_EXECUTABLES:
        found = shutil.which(name)
        if found:
            return found
    return None


def _check_targets(targets: Sequence[CondaTarget]) -> list[CondaTarget]:
    if not targets:
        raise BadInput("a conda lock needs at least one target platform", fix="pass --platform")
    seen: dict[str, CondaTarget] = {}
    checked = []
    for target in targets:
        if target.platform not in PLATFORMS:
            raise BadInput(f"unknown conda platform {target.platform!r}", fix=f"use one of {', '.join(PLATFORMS)}")
        if target.platform in seen:
            raise BadInput(
                f"platform {target.platform} is given twice: one conda-lock.yml holds one solution per platform",
                fix="give each --platform once",
            )
        cuda = _major_minor(target.cuda, "target CUDA") if target.cuda else None
        if cuda and target.platform == "osx-arm64":
            raise BadInput("macOS has no CUDA: an osx-arm64 target cannot have __cuda",
                           fix="lock a CPU build for osx-arm64 (--cuda cpu)")
        glibc = target.glibc if target.platform.startswith("linux-") else None
        if glibc is not None and not re.match(r"^\d+\.\d+$", glibc):
            raise BadInput(f"glibc {glibc!r} is not major.minor (e.g. 2.28)")
        target = CondaTarget(target.platform, cuda, glibc)
        seen[target.platform] = target
        checked.append(target)
    return sorted(checked, key=lambda t: t.platform)


def _channel_location(name: str, mapped: str | None) -> str:
    """The channel to solve against: `name` itself, or its mapping (a URL, or a directory as a file:// URL)."""
    location = mapped or name
    parsed = urlparse(location)
    if parsed.scheme == "file":
        directory = Path(url2pathname(parsed.path))
    elif parsed.scheme in ("http", "https", "s3", "oci", "gcs"):
        return location.rstrip("/")
    elif location.startswith(("/", "./", "../", "~")) or Path(location).expanduser().is_dir():
        directory = Path(location).expanduser()
    else:
        return location  # a channel name: conda-forge, bioconda, ...
    if not (directory / "noarch").is_dir():
        raise EnvironmentFailure(
            f"channel {name!r} -> {location}: {directory / 'noarch'} does not exist, so this is no conda channel",
            fix="point the channel at a directory indexed for conda (conda-index, rattler-index) with a noarch/ subdir",
        )
    return directory.resolve().as_uri()


@dataclass(frozen=True)
class _CondaLockApi:
    """The parts of conda-lock envforge uses: lockfile models and writer, spec parser, content hash."""

    models: Any
    write_conda_lock_file: Any
    parse_conda_lock_file: Any
    apply_categories: Any
    compute_content_hashes: Any
    virtual_package_repo_from_specification: Any
    make_lock_spec: Any
    normalize_url: Any
    mapping_url: str


def _conda_lock_api() -> _CondaLockApi:
    """conda-lock, imported on first use (it takes ~0.4 s: pydantic models)."""
    try:
        from conda_lock.content_hash import compute_content_hashes
        from conda_lock.lockfile import apply_categories, parse_conda_lock_file, write_conda_lock_file
        from conda_lock.lockfile.v2prelim import models
        from conda_lock.lookup import DEFAULT_MAPPING_URL
        from conda_lock.models.channel import normalize_url_with_placeholders
        from conda_lock.src_parser import make_lock_spec
        from conda_lock.virtual_package import virtual_package_repo_from_specification
    except ImportError as exc:
        raise ToolNotFound(
            f"the conda format needs conda-lock (and py-rattler) in envforge's environment: {exc}",
            fix=f"{INSTALL_HINT} (both need Python >= 3.10)",
        ) from None
    return _CondaLockApi(
        models=models,
        write_conda_lock_file=write_conda_lock_file,
        parse_conda_lock_file=parse_conda_lock_file,
        apply_categories=apply_categories,
        compute_content_hashes=compute_content_hashes,
        virtual_package_repo_from_specification=virtual_package_repo_from_specification,
        make_lock_spec=make_lock_spec,
        normalize_url=normalize_url_with_placeholders,
        mapping_url=DEFAULT_MAPPING_URL,
    )


def _rattler() -> ModuleType:
    try:
        import rattler
        import rattler.exceptions  # noqa: F401
    except ImportError as exc:
        raise ToolNotFound(
            f"solving a conda lock without conda/mamba/micromamba needs py-rattler: {exc}",
            fix=f"{INSTALL_HINT} (both need Python >= 3.10), or put micromamba on PATH",
        ) from None
    return rattler


def _lock_spec(
    cl: _CondaLockApi, env_file: Path, targets: Sequence[CondaTarget], overrides: Sequence[str] | None,
) -> Any:
    """conda-lock's LockSpecification for the environment file: what `conda-lock lock -f` would build."""
    return cl.make_lock_spec(
        src_files=[env_file],
        channel_overrides=list(overrides) if overrides else None,
        platform_overrides=[t.platform for t in targets],
        mapping_url=cl.mapping_url,
    )


# --------------------------------------------------------------------------- rattler, in-process


def _lock_with_rattler(
    cl: _CondaLockApi, spec: CondaSpec, targets: Sequence[CondaTarget], channels: Sequence[str],
    overrides: Sequence[str] | None, env_file: Path, vp_file: Path,
) -> Lockfile:
    rattler = _rattler()
    lock_spec = _lock_spec(cl, env_file, targets, overrides)
    solved = asyncio.run(_solve_targets(rattler, spec, targets, channels))

    models = cl.models
    packages: list[Any] = []
    for target in targets:
        requested = {dep.name: dep for dep in lock_spec.dependencies[target.platform] if dep.manager == "conda"}
        planned = {}
        for record in solved[target.platform]:
            name = str(record.name.normalized)
            planned[name] = models.LockedDependency(
                name=name,
                version=str(record.version),
                manager="conda",
                platform=target.platform,
                dependencies=_dependencies(record.depends),
                url=cl.normalize_url(str(record.url), channels=lock_spec.channels),
                hash=models.HashModel(md5=_hex(record.md5) or "", sha256=_hex(record.sha256)),
                build=str(record.build),
            )
        # The same category walk conda-lock's own solve_conda does after its solver answers.
        cl.apply_categories(requested=requested, planned=planned, mapping_url=cl.mapping_url)
        packages.extend(planned.values())

    # The content hash conda-lock itself computes for this environment file and these
    # virtual packages: `conda-lock lock --check-input-hash` accepts the lock as current.
    repo = cl.virtual_package_repo_from_specification(vp_file)
    try:
        content_hash = cl.compute_content_hashes(lock_spec, repo)
    finally:
        shutil.rmtree(repo.base_path, ignore_errors=True)
    return models.Lockfile(
        package=packages,
        metadata=models.LockMeta(
            content_hash=content_hash,
            channels=list(lock_spec.channels),
            platforms=[t.platform for t in targets],
            sources=[ENVIRONMENT_FILE],
        ),
    )


def _hex(digest: bytes | str | None) -> str | None:
    if digest is None:
        return None
    return digest.hex() if isinstance(digest, (bytes, bytearray)) else str(digest)


def _dependencies(depends: Sequence[str]) -> dict[str, str]:
    """name -> version spec of a record's depends, merged per name, as conda-lock's solve_conda records them."""
    from conda_lock.interfaces.vendored_conda import MatchSpec

    by_name: dict[str, list[Any]] = {}
    for dep in depends:
        match_spec = MatchSpec(dep)
        by_name.setdefault(match_spec.name, []).append(match_spec)
    out = {}
    for name, specs in by_name.items():
        merged = specs[0] if len(specs) == 1 else MatchSpec.merge(specs)[0]
        out[name] = merged.version.spec_str if merged.version is not None else ""
    return out


def _virtual_packages(rattler: ModuleType, target: CondaTarget) -> list[Any]:
    build_string = getattr(rattler, "BuildString", None)  # py-rattler >= 0.28 types the build string
    out = []
    for name, value in target.virtual_packages().items():
        version, _, build = value.partition(" ")
        build = build or "0"
        out.append(rattler.GenericVirtualPackage(
            rattler.PackageName(name), rattler.Version(version), build_string(build) if build_string else build,
        ))
    return out


async def _solve_targets(
    rattler: ModuleType, spec: CondaSpec, targets: Sequence[CondaTarget], channels: Sequence[str],
) -> dict[str, list[Any]]:
    errors = rattler.exceptions
    gateway = rattler.Gateway()
    sources = [rattler.Channel(channel) for channel in channels]
    solved: dict[str, list[Any]] = {}
    for target in targets:
        try:
            solved[target.platform] = await rattler.solve(
                sources=sources,
                specs=list(spec.dependencies),
                gateway=gateway,
                platforms=[target.platform, "noarch"],
                virtual_packages=_virtual_packages(rattler, target),
            )
        except errors.SolverError as exc:
            raise _no_solution(spec, target, str(exc)) from None
        except (errors.InvalidMatchSpecError, errors.InvalidPackageNameError, errors.InvalidVersionError,
                errors.InvalidVersionSpecError) as exc:
            raise BadInput(f"not a valid conda spec in {list(spec.dependencies)}: {exc}") from None
        except (errors.GatewayError, errors.FetchRepoDataError, errors.IoError, errors.CacheDirError) as exc:
            raise EnvironmentFailure(
                f"rattler cannot read the conda channel(s) {', '.join(channels)} for {target.platform}: "
                f"{_one_paragraph(exc)}",
                fix="check the network (conda.anaconda.org) or the channel URL/directory, then retry",
            ) from None
    return solved


def _one_paragraph(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def _no_solution(spec: CondaSpec, target: CondaTarget, explanation: str, solver: str = "rattler") -> LockError:
    """A LockError naming the specs the solver could not satisfy on this target, with its explanation."""
    explanation = explanation.strip()
    explanation = re.sub(r"^(Could not solve for environment specs\s*)?Cannot solve the request because of:\s*", "",
                         explanation)
    named = [dep for dep in spec.dependencies if re.search(rf"(?<![\w.\-]){re.escape(spec_name(dep))}(?![\w.\-])",
                                                             explanation)]
    virtual = sorted(set(re.findall(r"(?<![\w])__[a-z]+", explanation)))
    described = ", ".join(f"{k}={v}" for k, v in target.virtual_packages().items() if k in ("__cuda", "__glibc"))
    if not target.cuda:
        described = ", ".join(filter(None, [described, "no __cuda"]))
    what = "; ".join(named) if named else "; ".join(spec.dependencies)
    message = (
        f"no conda solution for {target.platform} ({described or 'no virtual packages'}): "
        f"{solver} cannot satisfy {what}"
        + (f" (virtual packages involved: {', '.join(virtual)})" if virtual else "")
        + f"\n{explanation}"
    )
    if "__cuda" in virtual and not target.cuda:
        fix = ("this is a CUDA build but the target has no CUDA: give the target a GPU/driver, "
               "or lock a CPU build (--cuda cpu)")
    elif "__cuda" in virtual:
        fix = (f"the build needs a newer CUDA driver than the target's __cuda={target.cuda}: describe a newer driver "
               "(--driver), or pick a build for an older CUDA (--cuda)")
    elif "__glibc" in virtual:
        fix = f"the packages need a newer glibc than the target's {target.glibc}; target a newer Linux"
    elif missing := re.search(r"No candidates were found for ([A-Za-z0-9_.\-]+)", explanation):
        fix = (f"the channel has no {missing.group(1)} matching that spec for {target.platform}: check the name and "
               f"version (`conda search -c conda-forge '{missing.group(1)}[subdir={target.platform}]'`), "
               "pick another --version/--cuda, or use --format pip")
    else:
        fix = (f"conda-forge may not publish this build for {target.platform}: check `conda search -c conda-forge` "
               "for the package, pick another --version/--cuda, or use --format pip")
    return LockError(message, fix=fix)


# --------------------------------------------------------------------------- conda-lock, as a subprocess

_NETWORK_WORDS = re.compile(
    r"CondaHTTPError|HTTPError|ConnectionError|Connection refused|Could not resolve host|Name or service not known|"
    r"temporary failure in name resolution|UnavailableInvalidChannel|failed to fetch|Download error|"
    r"could not find subdir|timed out|SSLError|Network is unreachable|error sending request",
    re.IGNORECASE,
)
_UNSAT_WORDS = re.compile(
    r"PackagesNotFoundError|UnsatisfiableError|LibMambaUnsatisfiableError|nothing provides|could not be found|"
    r"Could not solve|conflict|are incompatible|cannot be installed|No candidates|does not exist \(perhaps|"
    r"package .* is missing|is not installable|missing on the system|can't be installed|unsatisfiable",
    re.IGNORECASE,
)


def _lock_with_conda_lock(
    cl: _CondaLockApi, executable: str, workdir: Path, targets: Sequence[CondaTarget], overrides: Sequence[str] | None,
    spec: CondaSpec,
) -> Lockfile:
    from envforge.proc import isolated_env, run

    cmd = [sys.executable, "-m", "conda_lock", "lock", "--conda", executable, "--file", ENVIRONMENT_FILE,
           "--kind", "lock", "--lockfile", LOCK_FILE, "--virtual-package-spec", VIRTUAL_PACKAGES_FILE]
    for target in targets:
        cmd += ["--platform", target.platform]
    for channel in overrides or ():
        cmd += ["--channel", channel]
    proc = run(cmd, tool="conda-lock", install_hint=INSTALL_HINT, cwd=workdir, env=isolated_env(),
               timeout=SUBPROCESS_TIMEOUT_S)
    if proc.returncode != 0:
        raise _conda_lock_failure(proc.returncode, proc.stdout, proc.stderr, cmd, executable, spec, targets)
    try:
        lockfile = cl.parse_conda_lock_file(workdir / LOCK_FILE)
    except (OSError, ValueError) as exc:
        raise EnvironmentFailure(f"conda-lock exited 0 but its {LOCK_FILE} cannot be read: {exc}") from None
    # conda-lock's conda route leaves `build` unset; the rattler route records it. Fill it in from
    # the file name (name-version-build.ext) so both routes write the same file.
    for package in lockfile.package:
        if package.manager == "conda" and not package.build:
            package.build = _build_from_url(package.url, package.name, package.version)
    return lockfile


_FAILED_PLATFORM = re.compile(
    r"^Could not lock the environment for platform (\S+)\n(.*?)(?=^\s+Command: |\Z)", re.MULTILINE | re.DOTALL,
)


def _conda_lock_failure(
    returncode: int, stdout: str, stderr: str, cmd: Sequence[str], executable: str, spec: CondaSpec,
    targets: Sequence[CondaTarget],
) -> LockError | EnvironmentFailure:
    """What a failed `conda-lock lock` means: no solution (LockError) or a channel/tool problem (EnvironmentFailure).

    conda-lock prints "Could not lock the environment for platform P", then the
    solver's own message (the `message` of its JSON answer), then the command; that
    message is what a person needs, without the Python tracebacks that follow it.
    """
    output = "\n".join(part for part in (stderr.strip(), stdout.strip()) if part)
    match = _FAILED_PLATFORM.search(stderr)
    platform = match.group(1) if match else None
    message = match.group(2).strip() if match and match.group(2).strip() else _without_tracebacks(output)
    tool = f"conda-lock ({Path(executable).name})"
    where = f" for {platform}" if platform else ""
    if _UNSAT_WORDS.search(message):
        target = next((t for t in targets if t.platform == platform), None)
        if target is not None:
            return _no_solution(spec, target, message, solver=tool)
        return LockError(f"no conda solution{where}: {tool} cannot satisfy {'; '.join(spec.dependencies)}\n{message}",
                         fix="see the solver's explanation above; pick another --version/--cuda, or use --format pip")
    if _NETWORK_WORDS.search(message):
        return EnvironmentFailure(f"{tool} could not read the conda channel(s){where}: {message}",
                                  fix="check the network (conda.anaconda.org) or the channel URL/directory, then retry")
    return EnvironmentFailure(f"conda-lock failed (exit {returncode}): {' '.join(cmd)}\n{_without_tracebacks(output)}",
                              fix="run the command above by hand in a scratch directory to see the whole error")


def _without_tracebacks(output: str, limit: int = 60) -> str:
    """The tool's messages without Python traceback frames (the exception line itself stays), last `limit` lines."""
    kept: list[str] = []
    in_traceback = False
    for line in output.splitlines():
        if line.startswith("Traceback (most recent call last):"):
            in_traceback = True
            continue
        if in_traceback:
            if not line.strip() or line.startswith((" ", "\t")):
                continue
            in_traceback = False
        if line.startswith("During handling of the above exception"):
            continue
        kept.append(line.rstrip())
    return "\n".join(kept[-limit:])


def _build_from_url(url: str, name: str, version: str) -> str | None:
    filename = url.rsplit("/", 1)[-1].split("#", 1)[0]
    for ext in (".tar.bz2", ".conda"):
        if filename.endswith(ext):
            filename = filename[: -len(ext)]
            break
    prefix = f"{name}-{version}-"
    return filename[len(prefix):] if filename.startswith(prefix) and len(filename) > len(prefix) else None
