"""Fixtures for running `envforge detect` against fake hardware, each run in its own process.

The fake libnvidia-ml.so.1 (tests/fakes/fake_nvml.c) is compiled once per
session and loaded by the real pynvml through LD_LIBRARY_PATH. The dynamic
loader reads LD_LIBRARY_PATH at process start and pynvml keeps the library it
loaded, so every machine is probed by a fresh `python -m envforge detect --json`.
The nvidia-smi replay (tests/fakes/nvidia-smi) is put on PATH only where a test
asks for it. Nothing of envforge is monkeypatched.

Two ways to run detect:

    def test_x(detect):                      # call it: detect(*args, machine=, smi=, env=)
        code, doc, stderr = detect("--no-detect", machine="a100x8")

    @pytest.mark.detect_run("--no-detect", machine="a100x8")
    def test_y(result):                      # or declare the run and take its result
        code, doc, stderr = result

Declared runs of every selected test execute once, concurrently, before the
first of them needs its result: the file stays fast although each run is a
separate Python process.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, NamedTuple

import pytest

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # `tests` is not a package; make tests.fakes importable under any runner
    sys.path.insert(0, str(REPO))

from tests.fakes.nvml import Machine, build_fake_nvml, machine_env  # noqa: E402

SMI_REPLAY = REPO / "tests" / "fakes" / "nvidia-smi" / "nvidia-smi"
DETECT_TIMEOUT_S = 60

# Inherited settings that would change what envforge (or pip/uv/conda under it)
# sees; a test sets what it needs explicitly.
STRIPPED_PREFIXES = ("PIP_", "UV_", "CONDA_", "ENVFORGE_", "FAKE_NVML_", "FAKE_SMI_")
STRIPPED_NAMES = ("CUDA_VISIBLE_DEVICES", "LD_LIBRARY_PATH", "LD_PRELOAD", "PYTHONPATH")


class DetectResult(NamedTuple):
    code: int
    doc: Any  # parsed JSON from stdout (None if stdout was not JSON)
    stderr: str


@dataclass(frozen=True)
class Run:
    """One `envforge detect` invocation: the fake machine, the nvidia-smi recording, extra env and args."""

    args: tuple[str, ...] = ()
    machine: str | Machine | None = None  # fake NVML machine; None = no libnvidia-ml at all
    smi: str | None = None  # FAKE_SMI_MACHINE for the replay on PATH; None = no nvidia-smi
    env: tuple[tuple[str, str], ...] = ()  # extra environment (sorted pairs, so a Run is hashable)

    @classmethod
    def of(
        cls, *args: str, machine: str | Machine | None = None, smi: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> Run:
        return cls(tuple(args), machine, smi, tuple(sorted((env or {}).items())))


def _clean_path(path: str) -> str:
    """PATH without any directory that holds a real nvidia-smi."""
    keep = [d for d in path.split(os.pathsep) if d and not (Path(d) / "nvidia-smi").exists()]
    return os.pathsep.join(keep)


def base_env() -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items()
        if not k.startswith(STRIPPED_PREFIXES) and k not in STRIPPED_NAMES
    }
    env["PATH"] = _clean_path(env.get("PATH", os.defpath))
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


# --------------------------------------------------------------------------- session fixtures


@pytest.fixture(scope="session")
def fake_nvml_lib(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The directory holding the compiled fake libnvidia-ml.so.1 (built once per session)."""
    lib_dir = tmp_path_factory.mktemp("fake-nvml")
    build_fake_nvml(lib_dir)
    return lib_dir


@pytest.fixture(scope="session")
def smi_bin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory with only `nvidia-smi`: a wrapper running the replay with this interpreter.

    The wrapper does not depend on the replay's executable bit surviving a checkout.
    """
    bin_dir = tmp_path_factory.mktemp("smi-bin")
    wrapper = bin_dir / "nvidia-smi"
    wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{SMI_REPLAY}" "$@"\n', encoding="utf-8")
    wrapper.chmod(0o755)
    return bin_dir


@pytest.fixture(scope="session")
def matrices_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The matrices envforge reads: the repository's, when every file is there.

    `envforge detect` loads every matrices file but reads only gpus.toml (arch of
    a GPU by name) and cuda.toml (CUDA of a driver branch). While some files are
    still being written, each *missing* one is replaced by an empty stub in a
    copy, so detection is still tested; a file that is present but broken is
    left as it is, and the tests fail on it.
    """
    from envforge import matrix

    real = REPO / "matrices"
    missing = [s for s in matrix.SUBJECTS if not (real / f"{s}.toml").exists()]
    if not missing:
        return real
    warnings.warn(
        f"matrices/{{{','.join(missing)}}}.toml missing: envforge detect runs with empty stubs for them",
        stacklevel=1,
    )
    copy = tmp_path_factory.mktemp("matrices")
    for path in real.glob("*.toml"):
        shutil.copy(path, copy / path.name)
    for subject in missing:
        (copy / f"{subject}.toml").write_text(
            f'[meta]\nsubject = "{subject}"\nread = "2026-11-21"\n\n'
            f'[meta.sources]\nstub = "https://example.invalid/{subject}-not-written-yet"\n',
            encoding="utf-8",
        )
    return copy


@pytest.fixture(scope="session")
def bare_host() -> str | None:
    """None when this host has no NVIDIA/AMD driver of its own; else why "no GPU" cannot be asserted."""
    if Path("/proc/driver/nvidia/version").exists():
        return "this host has an NVIDIA kernel driver (/proc/driver/nvidia/version)"
    if Path("/sys/class/kfd/kfd/topology/nodes").is_dir():
        return "this host has an AMD GPU driver (/sys/class/kfd)"
    probe = subprocess.run(
        [sys.executable, "-c", "import ctypes; ctypes.CDLL('libnvidia-ml.so.1')"],
        env=base_env(), capture_output=True, timeout=DETECT_TIMEOUT_S,
    )
    if probe.returncode == 0:
        return "a real libnvidia-ml.so.1 is on this host's default library path"
    return None


# --------------------------------------------------------------------------- running detect


@dataclass
class Detector:
    lib_dir: Path
    smi_dir: Path
    matrices: Path
    config_dir: Path

    def env_for(self, run: Run) -> dict[str, str]:
        env = base_env()
        env["ENVFORGE_MATRICES"] = str(self.matrices)
        if run.machine is not None:
            env.update(machine_env(self.config_dir, self.lib_dir, run.machine))
        if run.smi is not None:
            env["PATH"] = os.pathsep.join([str(self.smi_dir), env["PATH"]])
            env["FAKE_SMI_MACHINE"] = run.smi
        env.update(dict(run.env))
        return env

    def run(self, run: Run) -> DetectResult:
        cmd = [sys.executable, "-m", "envforge", "detect", "--json", *run.args]
        proc = subprocess.run(
            cmd, cwd=REPO, env=self.env_for(run), capture_output=True, text=True, timeout=DETECT_TIMEOUT_S,
        )
        try:
            doc = json.loads(proc.stdout)
        except json.JSONDecodeError:
            doc = None
        return DetectResult(proc.returncode, doc, proc.stderr)

    def __call__(
        self, *args: str, machine: str | Machine | None = None, smi: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> DetectResult:
        """`envforge detect --json ARGS` in a subprocess: (exit code, parsed JSON, stderr)."""
        return self.run(Run.of(*args, machine=machine, smi=smi, env=env))

    def many(self, runs: Iterable[Run]) -> list[DetectResult]:
        """Several independent runs, concurrently (each is its own process anyway)."""
        runs = list(runs)
        if not runs:
            return []
        with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as pool:
            return list(pool.map(self.run, runs))


@pytest.fixture(scope="session")
def clean_env() -> dict[str, str]:
    """The inherited environment without PIP_*, UV_*, CONDA_*, CUDA_VISIBLE_DEVICES, ... (see base_env)."""
    return base_env()


@pytest.fixture(scope="session")
def detect(
    fake_nvml_lib: Path, smi_bin: Path, matrices_dir: Path, tmp_path_factory: pytest.TempPathFactory,
) -> Detector:
    """Call as detect(*args, machine=..., smi=..., env=...) -> DetectResult(code, doc, stderr)."""
    return Detector(fake_nvml_lib, smi_bin, matrices_dir, tmp_path_factory.mktemp("nvml-configs"))


# --------------------------------------------------------------------------- declared runs


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "detect_run(*args, machine=None, smi=None, env=None): the test's `result` fixture is "
        "`envforge detect --json *args` on that fake host (see tests/integration/conftest.py)",
    )


def _declared(marker: pytest.Mark) -> Run:
    return Run.of(*marker.args, **marker.kwargs)


@pytest.fixture(scope="session")
def declared_results(request: pytest.FixtureRequest, detect: Detector) -> dict[Run, DetectResult]:
    """Every run declared by a selected test's detect_run marker, executed once, concurrently."""
    runs: list[Run] = []
    for item in request.session.items:
        for marker in item.iter_markers("detect_run"):
            run = _declared(marker)
            if run not in runs:
                runs.append(run)
    return dict(zip(runs, detect.many(runs)))


@pytest.fixture
def result(request: pytest.FixtureRequest, declared_results: dict[Run, DetectResult], detect: Detector) -> DetectResult:
    """The DetectResult(code, doc, stderr) of the run this test declares with @pytest.mark.detect_run."""
    marker = request.node.get_closest_marker("detect_run")
    if marker is None:
        pytest.fail("the `result` fixture needs @pytest.mark.detect_run(...) on the test", pytrace=False)
    run = _declared(marker)
    return declared_results[run] if run in declared_results else detect.run(run)


# --------------------------------------------------------------------------- local wheel indexes (lock tests)


@pytest.fixture(scope="session")
def wheel_index(tmp_path_factory: pytest.TempPathFactory):
    """The PyPI and download.pytorch.org stand-ins of tests/fakes/wheelindex.py, served on 127.0.0.1.

    Built once per session; yields the Layout with its URLs filled in:
    `wheel_index.pypi_simple` (http://127.0.0.1:PORT/pypi/simple) and
    `wheel_index.torch_index("cu118")` (http://127.0.0.1:PORT/whl/cu118).
    """
    from tests.fakes.wheelindex import build_indexes, serve

    layout = build_indexes(tmp_path_factory.mktemp("wheel-index"))
    with serve(layout.root) as base_url:
        yield layout.at(base_url)
