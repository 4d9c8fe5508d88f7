"""The one error tree: every foreseeable failure is an EnvforgeError carrying its exit code.

Exit codes follow the command-line contract (shared DESIGN.md):
0 success, 1 a real negative answer, 2 bad input, 3 the environment stopped us.
`cli.main()` is the one place that turns these into process exit codes.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_NEGATIVE = 1
EXIT_BAD_INPUT = 2
EXIT_ENVIRONMENT = 3


class EnvforgeError(Exception):
    """Base of every error envforge reports to a person instead of a traceback."""

    exit_code = EXIT_BAD_INPUT
    code = "error"

    def __init__(self, message: str, *, fix: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.fix = fix

    def to_json(self) -> dict[str, object]:
        doc: dict[str, object] = {"code": self.code, "message": self.message}
        if self.fix:
            doc["fix"] = self.fix
        return doc


class BadInput(EnvforgeError):
    """A value given on the command line or in a file that envforge cannot use."""

    code = "bad_input"


class MatrixError(EnvforgeError):
    """matrices/*.toml is malformed or inconsistent; names the file and row."""

    code = "matrix_invalid"


class NoCompatibleBuild(EnvforgeError):
    """Resolution found no build that satisfies the request on the host."""

    exit_code = EXIT_NEGATIVE
    code = "no_compatible_build"


class ProbeError(EnvforgeError):
    """Hardware probing failed in a way that is not a plain 'no GPU'."""

    exit_code = EXIT_ENVIRONMENT
    code = "probe_failed"


class ToolNotFound(EnvforgeError):
    """An external executable (uv, pip-compile, docker, gcc ...) is missing."""

    exit_code = EXIT_ENVIRONMENT
    code = "tool_not_found"


class EnvironmentFailure(EnvforgeError):
    """The environment stopped us: network unreachable, a tool crashed, a daemon is down."""

    exit_code = EXIT_ENVIRONMENT
    code = "environment"


class CheckFailed(EnvforgeError):
    """A check ran and found problems (matrix validate, check, lock --check)."""

    exit_code = EXIT_NEGATIVE
    code = "check_failed"


class LockError(EnvforgeError):
    """The resolver found no solution: conflicting pins, an unknown package, no build for the target."""

    exit_code = EXIT_NEGATIVE
    code = "lock_failed"


class SmokeFailed(CheckFailed):
    """The smoke test could not pass before it started (e.g. --device cuda on a host without a GPU)."""

    code = "smoke_failed"
