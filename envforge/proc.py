"""Every subprocess goes through run(): it logs the command, isolates the machine's resolver
configuration, and turns failures into EnvforgeErrors that carry the tool's stderr."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Mapping, Sequence

from .errors import EnvironmentFailure, ToolNotFound

# Settings that change what a resolver answers are stripped; transport settings (certificates,
# proxies, timeouts) are kept so a machine behind a TLS-inspecting proxy still reaches its index.
KEEP = {
    "PIP_CERT", "PIP_CLIENT_CERT", "PIP_DEFAULT_TIMEOUT", "PIP_TRUSTED_HOST",
    "UV_CACHE_DIR", "UV_NATIVE_TLS", "UV_HTTP_TIMEOUT", "UV_OFFLINE",
}
STRIP_PREFIXES = ("PIP_", "UV_", "CONDA_", "PYTHONPATH")


def isolated_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k in KEEP or not k.startswith(STRIP_PREFIXES)}
    env["PIP_CONFIG_FILE"] = os.devnull  # no pip.conf (user, global, /etc/xdg) leaks into a lock
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env.update(extra or {})
    return env


def run(
    cmd: Sequence[str | os.PathLike[str]],
    *,
    tool: str,
    install_hint: str,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float | None = 900,
    verbose: bool = False,
) -> subprocess.CompletedProcess[str]:
    """Run a tool. Missing executable -> ToolNotFound; a hang -> EnvironmentFailure.

    A non-zero exit is returned to the caller, which knows what the tool's errors mean.
    """
    args = [os.fspath(c) for c in cmd]
    if verbose:
        print("+ " + " ".join(shlex.quote(a) for a in args), file=sys.stderr)
    try:
        return subprocess.run(args, cwd=cwd, env=dict(env) if env is not None else None, capture_output=True,
                              text=True, timeout=timeout)
    except FileNotFoundError:
        raise ToolNotFound(f"{tool} is not installed ({args[0]} not found)", fix=install_hint) from None
    except subprocess.TimeoutExpired:
        raise EnvironmentFailure(f"{tool} did not finish within {timeout:.0f} s: {' '.join(args)}",
                                 fix="check the network and the index, then retry") from None
