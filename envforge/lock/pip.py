"""Lock a resolved build with a real resolver: requirements (default) or pylock.toml, one file per target.

Inputs per target: the framework build the resolver chose, its companions
(torchvision/torchaudio of the same release, same variant), and the user's own
requirements (--with, -r files, a pyproject's [project] dependencies). Index
configuration follows the build: the PyTorch index for cuXYZ/rocm/cpu variants
(torch-family packages only), PyPI for everything else.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from .. import __version__
from ..errors import BadInput
from ..fsutil import write_atomic
from ..models import Resolution, Selected
from ..render import header
from .interface import PYPI_SIMPLE, CompileSpec, IndexPlan, Locker

PYTORCH_INDEX = "https://download.pytorch.org/whl"
# The only distributions envforge takes from the PyTorch index; everything else comes from PyPI.
TORCH_INDEX_PACKAGES = ("torch", "torchvision", "torchaudio", "pytorch-triton", "pytorch-triton-rocm")
MANIFEST = "envforge.lock.json"


@dataclass(frozen=True)
class LockOptions:
    format: str = "pip"  # pip | pylock
    resolver: str = "uv"  # uv | pip-tools
    with_packages: tuple[str, ...] = ()
    requirement_files: tuple[Path, ...] = ()
    pyproject: Path | None = None
    companions: bool = True
    index_url: str = PYPI_SIMPLE
    torch_index: str = PYTORCH_INDEX
    command: str = "envforge lock"
    verbose: bool = False


@dataclass(frozen=True)
class LockedTarget:
    resolution: Resolution
    file: str
    text: str
    platforms: tuple[str, ...] = ()  # a conda lock's platforms (all of its group's targets)


@dataclass
class LockSet:
    targets: list[LockedTarget] = field(default_factory=list)
    manifest: str = ""
    extra: dict[str, str] = field(default_factory=dict)  # Dockerfiles and the guard, written with the lock

    def files(self) -> dict[str, str]:
        out = {t.file: t.text for t in self.targets}
        out.update(self.extra)
        out[MANIFEST] = self.manifest
        return out


def locker_for(name: str) -> Locker:
    if name == "uv":
        from .uv import UvLocker

        return UvLocker()
    if name == "pip-tools":
        from .piptools import PipToolsLocker

        return PipToolsLocker()
    raise BadInput(f"unknown resolver {name!r}: use uv or pip-tools")


def _local(selected: Selected) -> str | None:
    requirement = selected.requirements[0]
    return requirement.split("+", 1)[1] if "+" in requirement else None


def framework_requirements(selected: Selected, companions: bool) -> list[str]:
    reqs = list(selected.requirements)
    if companions:
        local = _local(selected)
        for name, version in selected.companions:
            reqs.append(f"{name}=={version}+{local}" if local else f"{name}=={version}")
    return reqs


def index_plan(selected: Selected, options: LockOptions) -> IndexPlan:
    framework_index = selected.index_url
    packages: tuple[str, ...] = ()
    if framework_index and framework_index.startswith(PYTORCH_INDEX + "/"):
        framework_index = options.torch_index.rstrip("/") + "/" + framework_index[len(PYTORCH_INDEX) + 1:]
        packages = TORCH_INDEX_PACKAGES
    return IndexPlan(
        default_index=options.index_url,
        framework_index=framework_index,
        framework_packages=packages,
        find_links=selected.find_links,
    )


def target_file(selected: Selected, platform: str, fmt: str, multi_variant: bool, multi_platform: bool) -> str:
    parts = []
    if multi_variant:
        parts.append(selected.variant)
    if multi_platform:
        parts.append(platform)
    if fmt == "pylock":
        return "pylock." + ".".join(parts) + ".toml" if parts else "pylock.toml"
    return "requirements" + "".join(f"-{p}" for p in parts) + ".lock"


def _details(res: Resolution) -> list[str]:
    sel = res.selected
    assert sel is not None
    accel = f"CUDA {sel.cuda}" if sel.cuda else (f"ROCm {sel.rocm}" if sel.rocm else "CPU")
    line = f"target: {sel.framework} {sel.version} ({sel.variant}), {accel}"
    if sel.cudnn:
        line += f", cuDNN {sel.cudnn}"
    line += f"; Python {res.request.python}, {res.request.platform}"
    out = [line]
    if sel.min_driver:
        out.append(f"needs NVIDIA driver >= {sel.min_driver}"
                   + (f"; GPU architectures {', '.join(sel.arch)}" if sel.arch else ""))
    return out


def lock_one(res: Resolution, options: LockOptions, file: str, matrices_read: str) -> LockedTarget:
    sel = res.selected
    assert sel is not None
    locker = locker_for(options.resolver)
    plan = index_plan(sel, options)
    with tempfile.TemporaryDirectory(prefix="envforge-lock-") as tmp:
        work = Path(tmp)
        inputs = [p.resolve() for p in options.requirement_files]
        if options.pyproject:
            inputs.append(options.pyproject.resolve())
        spec = CompileSpec(
            requirements=(*framework_requirements(sel, options.companions), *options.with_packages),
            inputs=tuple(inputs),
            python=res.request.python or "3.11",
            platform=res.request.platform,
            indexes=plan,
            workdir=work,
            output="pylock" if options.format == "pylock" else "requirements",
            verbose=options.verbose,
        )
        # The scratch directory shows in resolvers' `# via -r` annotations: drop it from the lock.
        body = locker.compile(spec).replace(tmp + "/", "").replace(tmp, ".")
    head = header(options.command, matrices_read, _details(res))
    if options.format == "pylock":
        text = head + body
    else:
        text = head + "\n".join(plan.pip_lines()) + "\n\n" + body
    return LockedTarget(res, file, text)


def _input_digest(paths: Sequence[Path]) -> dict[str, str]:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in paths}


def manifest(locked: Sequence[LockedTarget], options: LockOptions, matrices_read: str) -> str:
    targets = []
    for t in locked:
        sel, req = t.resolution.selected, t.resolution.request
        assert sel is not None
        targets.append({
            "file": t.file,
            "sha256": hashlib.sha256(t.text.encode()).hexdigest(),
            "framework": sel.framework,
            "version": sel.version,
            "variant": sel.variant,
            "cuda": sel.cuda,
            "rocm": sel.rocm,
            "cudnn": sel.cudnn,
            "min_driver": sel.min_driver,
            "arch": list(sel.arch),
            "ptx": list(sel.ptx),
            "python": req.python,
            "platform": req.platform,
            "requirements": framework_requirements(sel, options.companions),
            "index_url": index_plan(sel, options).framework_index,
            "base_image": sel.base_image,
        })
    doc = {
        "envforge": __version__,
        "matrices_read": matrices_read,
        "command": options.command,
        "format": options.format,
        "resolver": options.resolver,
        "inputs": {
            "with": list(options.with_packages),
            "requirements": _input_digest(options.requirement_files),
            "pyproject": _input_digest([options.pyproject]) if options.pyproject else {},
        },
        "targets": targets,
    }
    return json.dumps(doc, indent=2) + "\n"


def lock_all(resolutions: Sequence[Resolution], options: LockOptions, matrices_read: str,
             meanwhile: Callable[[list[tuple[Resolution, str]]], dict[str, str]] | None = None) -> LockSet:
    """Lock every target, in parallel (each is one resolver subprocess). All or nothing.

    `meanwhile(targets)` runs in this thread while the resolvers work (e.g. rendering the
    Dockerfiles, which need only each target's resolution and file name); what it returns
    is written with the lock.
    """
    variants = {r.selected.variant for r in resolutions if r.selected}
    platforms = {r.request.platform for r in resolutions}
    jobs = []
    seen: set[str] = set()
    for res in resolutions:
        assert res.selected is not None
        name = target_file(res.selected, res.request.platform, options.format, len(variants) > 1, len(platforms) > 1)
        if name in seen:
            raise BadInput(f"two targets resolve to the same build and file ({name}); drop the duplicate --cuda")
        seen.add(name)
        jobs.append((res, name))
    if options.resolver == "uv":
        from .uv import uv_binary

        uv_binary()  # find it once, before the threads
    workers = max(1, min(len(jobs), (os.cpu_count() or 2) * 2))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(lock_one, res, options, name, matrices_read) for res, name in jobs]
        extra = meanwhile(jobs) if meanwhile else {}
        locked = [f.result() for f in futures]  # the first failure propagates; nothing is written
    return LockSet(locked, manifest(locked, options, matrices_read), extra)


def write(out_dir: Path, lockset: LockSet) -> list[Path]:
    """Write every file atomically (temp + rename); the manifest last."""
    written = []
    files = lockset.files()
    for name in sorted(files, key=lambda n: n == MANIFEST):
        path = out_dir / name
        write_atomic(path, files[name])
        written.append(path)
    return written


def compare(out_dir: Path, lockset: LockSet) -> str:
    """The unified diff between the files on disk and what the inputs produce now ('' if none)."""
    chunks = []
    for name, text in lockset.files().items():
        path = out_dir / name
        old = path.read_text(encoding="utf-8") if path.exists() else ""
        if old != text:
            chunks.extend(difflib.unified_diff(old.splitlines(keepends=True), text.splitlines(keepends=True),
                                               fromfile=f"{path} (on disk)", tofile=f"{path} (inputs now)"))
    return "".join(chunks)
