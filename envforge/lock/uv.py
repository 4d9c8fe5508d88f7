"""The uv adapter: `uv pip compile --generate-hashes`, the default resolver (uv is a declared dependency)."""

from __future__ import annotations

import functools
import re
import shutil
from pathlib import Path

from ..errors import EnvironmentFailure, LockError, ToolNotFound
from ..proc import isolated_env, run
from .interface import UV_PLATFORMS, CompileSpec


@functools.lru_cache(maxsize=1)
def uv_binary() -> str:
    """The uv executable (looked up once: uv's own finder reads sysconfig, which is not thread-safe)."""
    try:
        from uv import find_uv_bin  # the uv wheel ships its binary

        return find_uv_bin()
    except (ImportError, FileNotFoundError):
        found = shutil.which("uv")
        if found:
            return found
    raise ToolNotFound("uv is not installed", fix="pip install uv (envforge declares it; reinstall envforge)")


class UvLocker:
    name = "uv"

    def command(self, spec: CompileSpec) -> list[str]:
        cmd = [
            uv_binary(), "pip", "compile",
            "--no-config",  # no uv.toml / UV_* settings from this machine
            "--quiet",
            "--generate-hashes",
            "--no-header",
            "--emit-index-annotation",
            "--python-version", spec.python,
            "--python-platform", UV_PLATFORMS[spec.platform],
            "--default-index", spec.indexes.default_index,
        ]
        if spec.indexes.framework_index:
            cmd += ["--index", spec.indexes.framework_index]
        if spec.indexes.find_links:
            cmd += ["--find-links", spec.indexes.find_links]
        if spec.output == "pylock":
            cmd += ["--format", "pylock.toml"]
        cmd += [str(p) for p in spec.inputs]
        return cmd

    def compile(self, spec: CompileSpec) -> str:
        proc = run(self.command(spec), tool="uv", install_hint="pip install uv", cwd=spec.workdir,
                   env=isolated_env(), verbose=spec.verbose)
        if proc.returncode != 0:
            raise _uv_error(proc.stderr, spec)
        text = proc.stdout
        for path, label in spec.labels.items():
            text = text.replace(path, label)
        check_sources(text, spec)
        return text


def _uv_error(stderr: str, spec: CompileSpec) -> Exception:
    text = stderr.strip()
    lower = text.lower()
    indexes = ", ".join(filter(None, [spec.indexes.default_index, spec.indexes.framework_index]))
    network = ("failed to fetch", "error sending request", "connection refused", "dns error", "timed out",
               "could not connect", "tcp connect error", "operation timed out")
    if any(n in lower for n in network) and "no solution" not in lower:
        return EnvironmentFailure(f"uv could not reach the package index ({indexes}):\n{_indent(text)}",
                                  fix="check the network/proxy, or the index URL")
    if "no solution found" in lower or "because" in lower or "not found in the package registry" in lower:
        return LockError(f"no set of packages satisfies the inputs (indexes: {indexes}):\n{_indent(text)}",
                         fix="relax or correct the conflicting pins named above")
    return LockError(f"uv pip compile failed:\n{_indent(text)}")


def _indent(text: str) -> str:
    return "\n".join("  " + line for line in text.splitlines()[-25:])


def check_sources(text: str, spec: CompileSpec) -> None:
    """Defence against dependency confusion: only the framework's own packages may come from its index."""
    index = spec.indexes.framework_index
    if not index:
        return
    allowed = {_norm(p) for p in spec.indexes.framework_packages}
    current = None
    offenders = []
    for line in text.splitlines():
        match = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?==", line)
        if match:
            current = _norm(match.group(1))
            continue
        origin = re.match(r"^\s+# from (\S+)", line)
        if origin and current and origin.group(1).rstrip("/") == index.rstrip("/") and current not in allowed:
            offenders.append(current)
    if offenders:
        raise LockError(
            f"{', '.join(sorted(set(offenders)))} would come from {index}, which may only serve "
            f"{', '.join(sorted(allowed))} (dependency confusion)",
            fix="pin these packages to versions that exist on the default index",
        )


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()
