"""Maintainer tool: regenerate from PyPI what PyPI metadata can tell, and show the difference.

What PyPI can tell (and so what this rewrites):
- every framework: each release's Python range, from its Linux x86_64 wheel tags;
- torch: which variant plain `pip install torch` gives on Linux x86_64, its CUDA and
  cuDNN, and the CUDA-library pins it declares (`requires`);
- tensorflow: whether `tensorflow[and-cuda]` exists and what it pins;
- jax: the CUDA plugin's `with-cuda` pins, per release.
`requires` lists are written without environment markers.
Everything else (arch lists, non-default variants, ROCm) is read from upstream
build scripts by people, and only reported here when PyPI has a release the
matrices lack. Nothing is written without --write; the write is atomic.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

from . import matrix as matrix_mod
from .models import BuildRow, ReleaseRow
from .pypi import DistFile, PyPI, parse_metadata, wheel_tags

LINUX_X86 = re.compile(r"^manylinux.*_x86_64$|^linux_x86_64$")


@dataclass
class RefreshResult:
    texts: dict[str, tuple[str, str]] = field(default_factory=dict)  # subject -> (old, new)
    notes: list[str] = field(default_factory=list)

    @property
    def changed(self) -> list[str]:
        return [s for s, (old, new) in self.texts.items() if old != new]

    def diff(self) -> str:
        out = []
        for subject, (old, new) in self.texts.items():
            out.extend(difflib.unified_diff(
                old.splitlines(keepends=True), new.splitlines(keepends=True),
                fromfile=f"a/matrices/{subject}.toml", tofile=f"b/matrices/{subject}.toml",
            ))
        return "".join(out)


def python_range(tags: Iterable[str]) -> str | None:
    """cp38..cp311 wheel tags -> '>=3.8,<3.12'. Free-threaded (cp313t) builds don't widen the range."""
    minors = sorted({int(m.group(1)) for t in tags if (m := re.fullmatch(r"cp3(\d+)", t))})
    if not minors:
        return None
    return f">=3.{minors[0]},<3.{minors[-1] + 1}"


def _linux_wheels(files: Iterable[DistFile], version: str) -> list[tuple[DistFile, str, str]]:
    out = []
    for f in files:
        tags = wheel_tags(f.filename)
        if not tags or f.yanked:
            continue
        wheel_version, py, abi, plat = tags
        try:
            if Version(wheel_version) != Version(version) or Version(wheel_version).local:
                continue
        except InvalidVersion:
            continue
        if any(LINUX_X86.match(p) for p in plat.split(".")):
            out.append((f, py, abi))
    return out


def _cp_tags(wheels: list[tuple[DistFile, str, str]]) -> list[str]:
    # abi cp313t is the free-threaded build: not a separate CPython minor
    return [py for _, py, abi in wheels if not abi.endswith("t")]


def _req(text: str) -> Requirement | None:
    try:
        return Requirement(text)
    except InvalidRequirement:
        return None


def plain(req: Requirement) -> str:
    """A requirement without its environment marker, in packaging's canonical spelling."""
    extras = f"[{','.join(sorted(req.extras))}]" if req.extras else ""
    return f"{req.name}{extras}{req.specifier}"


def cuda_pins(requires_dist: Iterable[str]) -> tuple[str, ...]:
    """The CUDA-library requirements of a wheel (nvidia-* and cuda-toolkit), markers removed."""
    out = []
    for text in requires_dist:
        req = _req(text)
        if req is None or (req.marker and "extra" in str(req.marker)):
            continue
        name = canonicalize_name(req.name)
        if name.startswith("nvidia-") or name == "cuda-toolkit":
            out.append(plain(req))
    return tuple(out)


def pinned_version(requires: Iterable[str], pattern: str) -> str | None:
    for text in requires:
        req = _req(text)
        if req is None or not re.fullmatch(pattern, canonicalize_name(req.name)):
            continue
        for spec in req.specifier:
            if spec.operator in ("==", ">="):
                return spec.version
    return None


def cuda_of_pins(requires: Iterable[str]) -> str | None:
    version = pinned_version(requires, r"nvidia-cuda-runtime-cu\d+") or pinned_version(requires, r"cuda-toolkit")
    if version is None:
        return None
    major, minor = Version(version).release[:2]
    return f"{major}.{minor}"


def _extra_requires(requires_dist: Iterable[str], extra: str, prefix: str = "nvidia-") -> tuple[str, ...]:
    """What an extra adds (only names starting with `prefix`), markers removed."""
    out = []
    for text in requires_dist:
        req = _req(text)
        if req is None or req.marker is None or not canonicalize_name(req.name).startswith(prefix):
            continue
        env = {"extra": extra, "platform_system": "Linux", "sys_platform": "linux", "platform_machine": "x86_64"}
        if req.marker.evaluate(env) and not req.marker.evaluate({**env, "extra": "__none__"}):
            out.append(plain(req))
    return tuple(out)


# --------------------------------------------------------------------------- per framework


def _refresh_releases(
    subject: str, rows: list[ReleaseRow], wheels_of: Any, notes: list[str], only: Any,
) -> list[ReleaseRow]:
    new_rows = []
    for row in rows:
        if only is not None and not only.contains(row.version, prereleases=True):
            new_rows.append(row)
            continue
        tags = _cp_tags(wheels_of(row.version))
        rng = python_range(tags)
        if rng is None:
            notes.append(f"{subject} {row.version}: no Linux x86_64 CPython wheels on PyPI; Python range left as is")
            new_rows.append(row)
        elif rng != row.python:
            new_rows.append(dataclasses.replace(row, python=rng))
        else:
            new_rows.append(row)
    return new_rows


def _missing_releases(subject: str, rows: list[ReleaseRow], files: list[DistFile], notes: list[str]) -> None:
    known = {Version(r.version) for r in rows}
    oldest = min(known) if known else None
    on_pypi = set()
    for f in files:
        tags = wheel_tags(f.filename)
        if tags and not f.yanked:
            try:
                v = Version(tags[0])
            except InvalidVersion:
                continue
            if not v.is_prerelease and not v.local and (oldest is None or v >= oldest):
                on_pypi.add(v)
    missing = sorted(on_pypi - known)
    if missing:
        notes.append(
            f"{subject}: on PyPI but not in matrices/{subject}.toml: {', '.join(map(str, missing))} "
            "(add them from upstream: variants and arch lists are not on PyPI)"
        )


def refresh(directory: Path | None = None, pypi: PyPI | None = None, frameworks: Iterable[str] = ("torch", "tensorflow", "jax"),
            only: Any = None) -> RefreshResult:
    directory = directory or matrix_mod.data_dir()
    pypi = pypi or PyPI()
    result = RefreshResult()
    for subject in frameworks:
        path = directory / f"{subject}.toml"
        old = path.read_text(encoding="utf-8")
        mf, problems = matrix_mod.parse_file(path, old)
        if problems:
            from .errors import MatrixError

            raise MatrixError(f"{path} is invalid; run `envforge matrix validate` first:\n  " + "\n  ".join(problems[:10]))
        releases = list(mf.rows("release"))
        builds = list(mf.rows("build"))
        dist = {"torch": "torch", "tensorflow": "tensorflow", "jax": "jaxlib"}[subject]
        files = pypi.files(dist)
        by_version: dict[str, list[tuple[DistFile, str, str]]] = {}

        def wheels_of(version: str) -> list[tuple[DistFile, str, str]]:
            if version not in by_version:
                by_version[version] = _linux_wheels(files, version)
            return by_version[version]

        if subject == "jax":
            jaxlib_of = {r.version: (r.jaxlib or r.version) for r in releases}
            releases = _refresh_releases(subject, releases, lambda v: wheels_of(jaxlib_of[v]), result.notes, only)
        else:
            releases = _refresh_releases(subject, releases, wheels_of, result.notes, only)
            _missing_releases(subject, releases, files, result.notes)
        if subject == "torch":
            builds = _refresh_torch(builds, releases, wheels_of, pypi, result.notes, only)
        elif subject == "tensorflow":
            builds = _refresh_tensorflow(builds, releases, wheels_of, pypi, result.notes, only)
        else:
            builds = _refresh_jax(builds, jaxlib_of, pypi, result.notes, only)
        tables = dict(mf.tables)
        tables["release"] = tuple(releases)
        tables["build"] = tuple(builds)
        new = matrix_mod.dump(dataclasses.replace(mf, tables=tables))
        result.texts[subject] = (old, new)
    return result


def _metadata_of(pypi: PyPI, wheels: list[tuple[DistFile, str, str]]) -> Any:
    if not wheels:
        return None
    # any Linux x86_64 wheel of the release: their dependency metadata is the same
    newest = sorted(wheels, key=lambda w: w[0].filename)[-1][0]
    return parse_metadata(pypi.wheel_metadata(newest.url))


def _per_release(builds: list[BuildRow], releases: list[ReleaseRow], wheels_of: Any, pypi: PyPI, only: Any,
                 update: Any) -> list[BuildRow]:
    """Each release's builds, rewritten by `update(release, variants, metadata)` where PyPI has a Linux
    x86_64 wheel's METADATA for it (and --version admits it); kept as they are otherwise."""
    by_version: dict[str, list[BuildRow]] = defaultdict(list)
    for b in builds:
        by_version[b.version].append(b)
    out: list[BuildRow] = []
    for release in releases:
        variants = by_version.get(release.version, [])
        meta = None
        if only is None or only.contains(release.version, prereleases=True):
            meta = _metadata_of(pypi, wheels_of(release.version))
        out.extend(update(release, variants, meta) if meta is not None else variants)
    return out


def _refresh_torch(builds: list[BuildRow], releases: list[ReleaseRow], wheels_of: Any, pypi: PyPI, notes: list[str],
                   only: Any) -> list[BuildRow]:
    def update(release: ReleaseRow, variants: list[BuildRow], meta: Any) -> list[BuildRow]:
        pins = cuda_pins(meta.requires_dist)
        cuda = cuda_of_pins(pins)
        if cuda is None:
            # Before 1.13 the PyPI wheel bundled its CUDA libraries: nothing to read from METADATA.
            return variants
        cudnn = pinned_version(pins, r"nvidia-cudnn-cu\d+")
        tag = "cu" + cuda.replace(".", "")
        if not any(b.variant == tag for b in variants):
            notes.append(f"torch {release.version}: PyPI's default wheel is CUDA {cuda}, but matrices list no {tag} variant")
        return [
            dataclasses.replace(b, pypi_default=True, requires=pins, cudnn=cudnn or b.cudnn) if b.variant == tag
            else dataclasses.replace(b, pypi_default=False, requires=() if b.pypi_default else b.requires)
            for b in variants
        ]

    return _per_release(builds, releases, wheels_of, pypi, only, update)


def _refresh_tensorflow(builds: list[BuildRow], releases: list[ReleaseRow], wheels_of: Any, pypi: PyPI,
                        notes: list[str], only: Any) -> list[BuildRow]:
    def update(release: ReleaseRow, variants: list[BuildRow], meta: Any) -> list[BuildRow]:
        has_extra = "and-cuda" in meta.provides_extra
        and_cuda = [b for b in variants if b.variant == "and-cuda"]
        if has_extra and not and_cuda:
            notes.append(f"tensorflow {release.version}: PyPI has tensorflow[and-cuda], matrices have no and-cuda build")
        if and_cuda and not has_extra:
            notes.append(f"tensorflow {release.version}: matrices list an and-cuda build, but PyPI's METADATA has no such extra")
        pins = _extra_requires(meta.requires_dist, "and-cuda")
        return [dataclasses.replace(b, requires=pins) if b.variant == "and-cuda" and has_extra else b
                for b in variants]

    return _per_release(builds, releases, wheels_of, pypi, only, update)


def _refresh_jax(builds: list[BuildRow], jaxlib_of: dict[str, str], pypi: PyPI, notes: list[str],
                 only: Any) -> list[BuildRow]:
    plugin_files: dict[str, list[DistFile]] = {}
    out: list[BuildRow] = []
    for b in builds:
        match = re.fullmatch(r"cuda(\d+)", b.variant)
        if match is None or (only is not None and not only.contains(b.version, prereleases=True)):
            out.append(b)
            continue
        name = f"jax-cuda{match.group(1)}-plugin"
        if name not in plugin_files:
            try:
                plugin_files[name] = pypi.files(name)
            except Exception as exc:  # a missing project is a note, not a crash
                notes.append(f"{name}: {exc}")
                plugin_files[name] = []
        wheels = _linux_wheels(plugin_files[name], jaxlib_of.get(b.version, b.version))
        meta = _metadata_of(pypi, wheels)
        if meta is None:
            notes.append(f"jax {b.version} {b.variant}: no {name} {jaxlib_of.get(b.version)} Linux x86_64 wheel on PyPI")
            out.append(b)
            continue
        pins = _extra_requires(meta.requires_dist, "with-cuda") or _extra_requires(meta.requires_dist, "with_cuda")
        # cudnn is not rewritten: where JAX documents a stricter floor than its pin, the matrix keeps the doc's.
        out.append(dataclasses.replace(b, requires=pins or b.requires))
    return out
