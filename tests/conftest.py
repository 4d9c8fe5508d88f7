"""Shared fixtures: the machine's own configuration never leaks into a result."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# .ci/run sets it: CI installs every real component (dockerd, the base image, py-rattler, hadolint...), so a
# skipped test there hides a failure. Read at import: the autouse fixture below strips ENVFORGE_* per test.
STRICT = os.environ.get("ENVFORGE_TEST_STRICT") == "1"
STRIP_PREFIXES = ("PIP_", "UV_", "CONDA_", "ENVFORGE_", "FAKE_NVML", "FAKE_SMI")
STRIP_NAMES = ("CUDA_VISIBLE_DEVICES",)


def clean_environ(extra: dict[str, str] | None = None, keep: tuple[str, ...] = ()) -> dict[str, str]:
    """An environment for a subprocess: os.environ without PIP_*, UV_*, CONDA_*, ENVFORGE_*,
    CUDA_VISIBLE_DEVICES, but with the tests' own ENVFORGE_CACHE_DIR (so a subprocess does not write
    matrices caches into the user's) and the names in `keep` (e.g. PIP_CERT behind a TLS proxy); plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(STRIP_PREFIXES) and k not in STRIP_NAMES}
    env.update({k: os.environ[k] for k in ("ENVFORGE_CACHE_DIR", *keep) if os.environ.get(k)})
    env.update(extra or {})
    return env


@pytest.fixture(scope="session")
def _cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("envforge-cache")


@pytest.fixture(autouse=True)
def _isolated_environment(monkeypatch: pytest.MonkeyPatch, _cache_dir: Path) -> None:
    for key in list(os.environ):
        if key.startswith(STRIP_PREFIXES) or key in STRIP_NAMES:
            monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("ENVFORGE_CACHE_DIR", str(_cache_dir))


@pytest.fixture(scope="session")
def matrix():
    from envforge import matrix as matrix_mod

    return matrix_mod.load(ROOT / "matrices")


@pytest.fixture(scope="session")
def python_exe() -> str:
    return sys.executable


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:  # noqa: ARG001
    skipped = terminalreporter.stats.get("skipped", [])
    if STRICT and skipped:
        terminalreporter.write_line(f"ENVFORGE_TEST_STRICT=1: {len(skipped)} skipped test(s) fail the run: "
                                    "every component they need is installed in CI", red=True)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if STRICT and reporter is not None and reporter.stats.get("skipped") and exitstatus == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
