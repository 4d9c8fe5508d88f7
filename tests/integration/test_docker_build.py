"""A real image: lock jax (CPU) from PyPI, fill a wheelhouse, render the Dockerfile on a debootstrap base,
`envforge build` it through the docker SDK, and start it: the guard runs, jax imports.

Needs a Docker daemon (.ci/run starts Debian's dockerd with vfs storage) and the local base image
made by .ci/base-image (Docker Hub is unreachable here). Skipped, with the reason, without them.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import clean_environ

pytestmark = [pytest.mark.docker, pytest.mark.network, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]
BASE = os.environ.get("ENVFORGE_TEST_BASE_IMAGE", "envforge-test/bookworm-python:latest")
TAG = "envforge-test/jax-cpu:ci"


def docker_ready() -> str | None:
    try:
        import docker

        client = docker.from_env(timeout=10)
        client.ping()
    except Exception as exc:  # noqa: BLE001
        return f"no reachable Docker daemon ({type(exc).__name__}); .ci/run starts one"
    try:
        client.images.get(BASE)
    except Exception:  # noqa: BLE001
        return f"base image {BASE} is missing: run .ci/base-image"
    return None


def envforge(*args: str) -> subprocess.CompletedProcess[str]:
    env = clean_environ(keep=("PIP_CERT",))
    return subprocess.run([sys.executable, "-m", "envforge", *args], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=1500)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess[str]]:
    reason = docker_ready()
    if reason:
        pytest.skip(reason)
    out = tmp_path_factory.mktemp("image")
    lock = envforge("lock", "-f", "jax", "--version", "0.10.2", "--cuda", "cpu", "--no-detect", "--python", "3.11",
                    "-o", str(out), "--base-image", BASE)
    assert lock.returncode == 0, lock.stderr
    dockerfile = envforge("dockerfile", "--lock", str(out), "--base-image", BASE, "--wheelhouse", "wheelhouse",
                          "--fill-wheelhouse")
    assert dockerfile.returncode == 0, dockerfile.stderr
    build = envforge("build", str(out), "-t", TAG)
    return out, build


def test_the_image_builds_offline_from_the_wheelhouse(built) -> None:
    out, build = built
    assert build.returncode == 0, build.stderr[-4000:]
    assert f"built {TAG}" in build.stderr
    text = (out / "Dockerfile").read_text()
    assert "--no-index" in text and f"ARG BASE_IMAGE={BASE}" in text
    assert any(p.name.startswith("jaxlib-0.10.2") for p in (out / "wheelhouse").iterdir())


def test_the_container_starts_through_the_guard(built) -> None:
    out, build = built
    assert build.returncode == 0
    run = subprocess.run(["docker", "run", "--rm", TAG, "python", "-c",
                          "import jax, jax.numpy as jnp; print(jax.__version__, float(jnp.ones(3).sum()))"],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["0.10.2", "3.0"]
    assert "runs on the CPU: no driver needed" in run.stderr
    user = subprocess.run(["docker", "run", "--rm", TAG, "id", "-u"], capture_output=True, text=True)
    assert user.stdout.strip() == "10001"


def test_the_guard_stops_a_gpu_image_without_a_driver(built) -> None:
    _, build = built
    assert build.returncode == 0
    run = subprocess.run(["docker", "run", "--rm", "-e", "ENVFORGE_MIN_DRIVER=525.60.13", TAG, "true"],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 1
    assert "no NVIDIA driver is visible" in run.stderr and "--gpus all" in run.stderr
    skipped = subprocess.run(["docker", "run", "--rm", "-e", "ENVFORGE_MIN_DRIVER=525.60.13", "-e",
                              "ENVFORGE_SKIP_GUARD=1", TAG, "true"], capture_output=True, text=True, timeout=120)
    assert skipped.returncode == 0 and "skipped" in skipped.stderr


def test_docker_unreachable_is_exit_3(tmp_path: Path) -> None:
    (tmp_path / "Dockerfile").write_text("FROM scratch\n")
    env = clean_environ({"DOCKER_HOST": "tcp://127.0.0.1:9"})
    proc = subprocess.run([sys.executable, "-m", "envforge", "build", str(tmp_path), "-t", "x"],
                          capture_output=True, text=True, env=env, cwd=ROOT)
    assert proc.returncode == 3, proc.stderr
    assert "DOCKER_HOST" in proc.stderr and "Traceback" not in proc.stderr


def test_build_smoke_trains_in_the_image_on_cpu(built) -> None:
    out, build = built
    assert build.returncode == 0
    proc = envforge("build", str(out), "-t", TAG, "--smoke", "--json")  # cached layers: the build is quick
    assert proc.returncode == 0, proc.stderr[-3000:]
    import json

    doc = json.loads(proc.stdout)
    assert doc["ok"] and doc["smoke"]["ok"]
    (jax_run,) = doc["smoke"]["frameworks"]
    assert jax_run["framework"] == "jax" and jax_run["version"] == "0.10.2"
    checks = {c["name"]: c["status"] for c in jax_run["checks"]}
    assert checks["training"] == "pass" and checks["kernels"] == "pass"
    assert "no NVIDIA container runtime" in proc.stderr
