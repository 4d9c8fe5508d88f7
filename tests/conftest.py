"""Shared fixtures: the machine's own configuration never leaks into a result."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
STRIP_PREFIXES = ("PIP_", "UV_", "CONDA_", "ENVFORGE_", "FAKE_NVML", "FAKE_SMI")
STRIP_NAMES = ("CUDA_VISIBLE_DEVICES",)


def clean_environ(extra: dict[str, str] | None = None) -> dict[str, str]:
    """os.environ without PIP_*, UV_*, CONDA_*, ENVFORGE_*, CUDA_VISIBLE_DEVICES; plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(STRIP_PREFIXES) and k not in STRIP_NAMES}
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
