"""The pip-tools adapter: `pip-compile --generate-hashes`, for teams standardised on it (--resolver pip-tools).

pip-compile resolves for the interpreter it runs in: it cannot lock for another
Python or platform, so such targets are refused with a pointer to uv.
"""

from __future__ import annotations

import sys
from pathlib import Path

from ..errors import BadInput, EnvironmentFailure, LockError, ToolNotFound
from ..hardware import platform_tag
from ..proc import isolated_env, run

from .interface import CompileSpec, write_requirements_in


class PipToolsLocker:
    name = "pip-tools"

    def command(self, spec: CompileSpec, inputs: list[Path]) -> list[str]:
        cmd = [
            sys.executable, "-m", "piptools", "compile",
            "--quiet",
            "--generate-hashes",
            "--allow-unsafe",  # pin setuptools & co. too, as uv does: same pins from both
            "--strip-extras",
            "--no-header",
            "--no-emit-index-url",
            "--no-emit-trusted-host",
            "--index-url", spec.indexes.default_index,
        ]
        if spec.indexes.framework_index:
            cmd += ["--extra-index-url", spec.indexes.framework_index]
        if spec.indexes.find_links:
            cmd += ["--find-links", spec.indexes.find_links]
        cmd += ["--output-file", "-", "--cache-dir", str(spec.workdir / ".pip-tools-cache")]
        cmd += [str(p) for p in inputs]
        return cmd

    def compile(self, spec: CompileSpec) -> str:
        running = f"{sys.version_info[0]}.{sys.version_info[1]}"
        here = platform_tag()
        if spec.output != "requirements":
            raise BadInput("pip-tools writes requirements files only; use --resolver uv for --format pylock")
        if spec.python != running or spec.platform != here:
            raise BadInput(
                f"pip-compile resolves for the interpreter it runs in (Python {running} on {here}), "
                f"not for Python {spec.python} on {spec.platform}.",
                fix="use --resolver uv (the default), which locks for any target",
            )
        inputs = [write_requirements_in(spec), *spec.inputs]
        proc = run(self.command(spec, inputs), tool="pip-compile", install_hint="pip install pip-tools",
                   cwd=spec.workdir, env=isolated_env(), verbose=spec.verbose)
        if proc.returncode != 0:
            err = proc.stderr.strip()
            lower = err.lower()
            if "no module named piptools" in lower:
                raise ToolNotFound("pip-tools is not installed", fix="pip install pip-tools")
            if any(s in lower for s in ("connection", "max retries", "name resolution", "timed out")) and \
                    "no matching distribution" not in lower and "resolutionimpossible" not in lower:
                raise EnvironmentFailure(f"pip-compile could not reach the index:\n{err[-2000:]}")
            raise LockError(f"pip-compile found no solution:\n{err[-2000:]}",
                            fix="relax or correct the conflicting pins named above")
        text = proc.stdout
        if spec.indexes.framework_index:
            # pip merges its indexes and takes the best version from any: it cannot keep the
            # framework index to the framework's packages. Refuse a lock that took anything else from it.
            from .verify import check_default_index

            check_default_index(text, spec.indexes)
        return text
