"""`matrix refresh` against recorded PyPI metadata (offline), and once against the real PyPI (network).

The recorded METADATA (tests/data/pypi, re-recorded by its record.py) is served
inside real zip files through HTTP-range semantics, so the same code that reads
a remote 900 MB wheel's METADATA runs here.
"""

from __future__ import annotations

import io
import json
import re
import shutil
import zipfile
from pathlib import Path

import pytest

from envforge import matrix as matrix_mod
from envforge import refresh as refresh_mod
from envforge.pypi import PyPI

ROOT = Path(__file__).resolve().parents[2]
RECORDED = ROOT / "tests" / "data" / "pypi"


class RecordedTransport:
    """Serves the recorded simple index and wheels rebuilt around the recorded METADATA."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str | None]] = []
        self.wheels: dict[str, bytes] = {}
        for meta in RECORDED.glob("*.whl.METADATA"):
            filename = meta.name[: -len(".METADATA")]
            dist = "-".join(filename.split("-")[:2])
            buffer = io.BytesIO()
            with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
                zf.writestr(f"{dist.split('-')[0]}/__init__.py", "# padding\n" * 5000)
                zf.writestr(f"{dist}.dist-info/METADATA", meta.read_text())
                zf.writestr(f"{dist}.dist-info/RECORD", "")
            self.wheels[filename] = buffer.getvalue()

    def get(self, url: str, headers: dict[str, str]) -> bytes:
        self.requests.append((url, headers.get("Range")))
        match = re.match(r"https://pypi\.org/simple/([^/]+)/$", url)
        if match:
            return (RECORDED / f"{match.group(1)}.simple.json").read_bytes()
        filename = url.rsplit("/", 1)[-1]
        blob = self.wheels[filename]
        rng = headers.get("Range", "")
        if m := re.fullmatch(r"bytes=-(\d+)", rng):
            return blob[-int(m.group(1)):]
        if m := re.fullmatch(r"bytes=(\d+)-(\d+)", rng):
            return blob[int(m.group(1)): int(m.group(2)) + 1]
        raise AssertionError(f"unexpected request {url} {headers}")


@pytest.fixture()
def copy(tmp_path: Path) -> Path:
    target = tmp_path / "matrices"
    shutil.copytree(ROOT / "matrices", target)
    return target


def run(directory: Path, framework: str, versions: str) -> refresh_mod.RefreshResult:
    return refresh_mod.refresh(directory, PyPI(RecordedTransport()), frameworks=[framework], only=_only(versions))


def _only(versions: str):
    class Only:
        def __init__(self, wanted: set[str]) -> None:
            self.wanted = wanted

        def contains(self, version: str, prereleases: bool = True) -> bool:
            return version in self.wanted

    return Only(set(versions.split()))


@pytest.mark.parametrize("framework,versions", [
    ("torch", "2.3.1 2.7.1 2.15.0"),
    ("tensorflow", "2.14.1 2.15.0"),
    ("jax", "0.4.30 0.7.2"),
])
def test_shipped_matrices_agree_with_recorded_pypi_metadata(copy: Path, framework: str, versions: str) -> None:
    result = run(copy, framework, versions)
    assert result.diff() == "", result.diff()


def test_refresh_repairs_what_pypi_can_tell_and_reads_by_range(copy: Path) -> None:
    path = copy / "torch.toml"
    mf, _ = matrix_mod.parse_file(path)
    import dataclasses

    releases = tuple(dataclasses.replace(r, python=">=3.8,<3.10") if r.version == "2.3.1" else r
                     for r in mf.rows("release"))
    builds = tuple(
        dataclasses.replace(b, pypi_default=(b.variant == "cu118"), requires=())
        if b.version == "2.3.1" else b
        for b in mf.rows("build")
    )
    broken = matrix_mod.dump(dataclasses.replace(mf, tables={**mf.tables, "release": releases, "build": builds}))
    path.write_text(broken)
    transport = RecordedTransport()
    result = refresh_mod.refresh(copy, PyPI(transport), frameworks=["torch"], only=_only("2.3.1"))
    assert result.changed == ["torch"]
    assert '-python = ">=3.8,<3.10"' in result.diff()
    assert '+python = ">=3.8,<3.13"' in result.diff()
    old, new = result.texts["torch"]
    assert new == (ROOT / "matrices" / "torch.toml").read_text()
    # METADATA came from ranges, never the whole wheel
    wheel_requests = [r for r in transport.requests if r[0].endswith(".whl")]
    assert wheel_requests and all(r[1] for r in wheel_requests)


@pytest.mark.network
def test_refresh_cli_prints_a_diff_and_writes_only_with_write(copy: Path) -> None:
    import subprocess
    import sys

    path = copy / "torch.toml"
    shipped = path.read_text()
    path.write_text(shipped.replace('version = "2.7.1"\npython = ">=3.9,<3.14"', 'version = "2.7.1"\npython = ">=3.9,<3.11"', 1))
    broken = path.read_text()
    assert broken != shipped
    cmd = [sys.executable, "-m", "envforge", "matrix", "refresh", "torch", "--version", "2.7.1", "--dir", str(copy)]
    shown = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    assert shown.returncode == 1, shown.stderr
    assert '-python = ">=3.9,<3.11"' in shown.stdout and '+python = ">=3.9,<3.14"' in shown.stdout
    assert path.read_text() == broken  # nothing written without --write
    written = subprocess.run(cmd + ["--write"], capture_output=True, text=True, cwd=ROOT)
    assert written.returncode == 0, written.stderr
    assert path.read_text() == shipped


@pytest.mark.network
def test_refresh_against_the_real_pypi(copy: Path) -> None:
    result = refresh_mod.refresh(copy, PyPI(), frameworks=["torch"], only=_only("2.7.1"))
    assert result.diff() == "", result.diff()


def test_python_range_from_wheel_tags() -> None:
    assert refresh_mod.python_range(["cp38", "cp39", "cp310", "cp311"]) == ">=3.8,<3.12"
    assert refresh_mod.python_range(["py3"]) is None


def test_cuda_of_pins() -> None:
    assert refresh_mod.cuda_of_pins(['nvidia-cuda-runtime-cu12==12.1.105; platform_system == "Linux"']) == "12.1"
    assert refresh_mod.cuda_of_pins(['cuda-toolkit[cudart]==13.0.3; platform_system == "Linux"']) == "13.0"


def test_recorded_index_is_valid_json() -> None:
    for path in RECORDED.glob("*.simple.json"):
        assert json.loads(path.read_text())["files"]


@pytest.mark.parametrize("framework,version,variant", [
    ("torch", "2.3.1", "cu121"), ("tensorflow", "2.15.0", "and-cuda"), ("jax", "0.4.30", "cuda12")])
def test_refresh_repairs_each_framework(copy: Path, framework: str, version: str, variant: str) -> None:
    """A broken Python range and a build's emptied `requires` come back as shipped, for every framework."""
    import dataclasses

    path = copy / f"{framework}.toml"
    mf, _ = matrix_mod.parse_file(path)
    assert any((b.version, b.variant) == (version, variant) and b.requires for b in mf.rows("build"))
    releases = tuple(dataclasses.replace(r, python=">=3.8,<3.9") if r.version == version else r
                     for r in mf.rows("release"))
    builds = tuple(dataclasses.replace(b, requires=()) if (b.version, b.variant) == (version, variant) else b
                   for b in mf.rows("build"))
    path.write_text(matrix_mod.dump(dataclasses.replace(mf, tables={**mf.tables, "release": releases,
                                                                     "build": builds})))
    result = refresh_mod.refresh(copy, PyPI(RecordedTransport()), frameworks=[framework], only=_only(version))
    assert result.texts[framework][1] == (ROOT / "matrices" / f"{framework}.toml").read_text()
