"""The conda Dockerfile, built for real by Docker: `envforge lock --format conda` against a local channel
served over HTTP, `envforge build`, then the container started.

What is real: the Dockerfile envforge writes, dockerd building it (both stages, the ARG-named image
micromamba is copied from, the shell in the RUN, the final stage's COPY/USER/ENTRYPOINT), the guard, the
lock solved by rattler. What stands in, because Docker Hub, GitHub and conda channels are unreachable here:
the micromamba executable (tests/fakes/micromamba_standin.py, modelled on micromamba 2.x's lock-file
install: main category, this platform + noarch, sha256 checked, empty environment with exit 0 when the lock
lacks the platform), the base image (.ci/base-image, debootstrap bookworm with python3), and the packages
(tests/fakes/condachannel.py: "python" is a virtual environment over the image's python3; "pytorch" is a
module that knows its version). So this checks envforge's recipe, not micromamba's command line: that was
read from micromamba's source (see envforge/dockerfile.py and the stand-in's docstring).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import clean_environ
from tests.fakes.condachannel import build_channel, payload_packages
from tests.fakes.wheelindex import serve
from tests.integration.test_docker_build import BASE, ROOT, docker_ready

pytestmark = [pytest.mark.docker, pytest.mark.slow]
STANDIN = "envforge-test/micromamba-standin:1"
TAG = "envforge/torch:2.1.2-cpu-conda"  # the default tag `envforge build` gives a conda lock


def envforge(*args: str, cache: Path) -> subprocess.CompletedProcess[str]:
    env = clean_environ({"RATTLER_CACHE_DIR": str(cache)})
    return subprocess.run([sys.executable, "-m", "envforge", *args], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=1200)


@pytest.fixture(scope="module")
def served_channel(tmp_path_factory: pytest.TempPathFactory):
    """The payload channel on http://<docker bridge gateway>:<port>, reachable from build containers."""
    reason = docker_ready()
    if reason:
        pytest.skip(reason)
    pytest.importorskip("rattler", reason="py-rattler is not installed (the test extra has it)")
    import docker

    gateway = next((c.get("Gateway") for c in
                    docker.from_env().networks.get("bridge").attrs.get("IPAM", {}).get("Config") or []
                    if c.get("Gateway")), None)
    if not gateway:
        pytest.skip("the Docker bridge network has no gateway address to serve the channel on")
    channel = build_channel(tmp_path_factory.mktemp("payload-channel"), payload_packages())
    with serve(channel, host=gateway) as url:
        yield url


@pytest.fixture(scope="module")
def standin_image(tmp_path_factory: pytest.TempPathFactory) -> str:
    context = tmp_path_factory.mktemp("standin")
    shutil.copy(ROOT / "tests" / "fakes" / "micromamba_standin.py", context / "micromamba")
    (context / "micromamba").chmod(0o755)
    # The real image has /bin/micromamba and /etc/ssl/certs/ca-certificates.crt (the base brings the latter).
    (context / "Dockerfile").write_text(f"FROM {BASE}\nCOPY micromamba /bin/micromamba\n")
    proc = subprocess.run(["docker", "build", "-q", "-t", STANDIN, str(context)], capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr
    return STANDIN


def lock(out: Path, channel: str, *platforms: str) -> subprocess.CompletedProcess[str]:
    args = ["lock", "--format", "conda", "--no-detect", "--python", "3.11", "-f", "torch", "--version", "2.1.2",
            "--cuda", "cpu", "--conda-channel", f"conda-forge={channel}", "--base-image", BASE,
            "--micromamba-image", STANDIN, "-o", str(out)]
    for platform in platforms:
        args += ["--platform", platform]
    return envforge(*args, cache=out.parent / "rattler-cache")


@pytest.fixture(scope="module")
def built(served_channel: str, standin_image: str, tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("conda-image") / "out"
    locked = lock(out, served_channel)
    assert locked.returncode == 0, locked.stderr
    build = envforge("build", str(out), cache=out.parent / "rattler-cache")  # default tag
    yield out, build
    # Its "torch" is a stand-in: no later test (test_smoke picks any envforge-labelled image) may find it.
    subprocess.run(["docker", "rmi", "-f", TAG], capture_output=True)


def test_the_conda_image_builds(built) -> None:
    out, build = built
    assert build.returncode == 0, build.stderr[-4000:]
    assert f"built {TAG}" in build.stderr
    # the stand-in's output, streamed by `envforge build`: the lock's three linux-64 packages
    assert "+ pytorch 2.1.2 cpu_generic_py311" in build.stderr and "+ filelock 3.13.1" in build.stderr
    text = (out / "Dockerfile").read_text()
    assert f"ARG BASE_IMAGE={BASE}" in text and f"ARG MICROMAMBA_IMAGE={STANDIN}" in text


def test_the_container_runs_the_environment_through_the_guard_as_a_user(built) -> None:
    _, build = built
    assert build.returncode == 0
    run = subprocess.run(["docker", "run", "--rm", TAG, "python", "-c",
                          "import os, sys, torch; print(torch.__version__, sys.prefix, os.getuid(), "
                          "os.environ['CONDA_PREFIX'])"], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["2.1.2", "/opt/conda-env", "10001", "/opt/conda-env"]
    assert "runs on the CPU: no driver needed" in run.stderr


def test_the_entrypoint_activates_the_environment(built) -> None:
    """The guard applies env_vars.d and sources activate.d/*.sh, as `micromamba activate` would."""
    _, build = built
    assert build.returncode == 0
    run = subprocess.run(["docker", "run", "--rm", TAG, "sh", "-c",
                          'echo "$ENVFORGE_TEST_ACTIVATED $ENVFORGE_TEST_VAR $CONDA_SHLVL"'],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["sourced:/opt/conda-env", "from-env-vars-d", "1"]


def test_only_the_environment_reaches_the_final_image(built) -> None:
    _, build = built
    assert build.returncode == 0
    run = subprocess.run(["docker", "run", "--rm", "--entrypoint", "/bin/sh", TAG, "-c",
                          "command -v micromamba || echo no-micromamba; ls /opt; ls /opt/conda-env/conda-meta"],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    lines = run.stdout.split()
    assert "no-micromamba" in lines and "micromamba" not in lines  # neither the executable nor its cache
    assert sorted(name.split("-")[0] for name in lines if name.endswith(".json")) == ["filelock", "python",
                                                                                         "pytorch"]
    labels = json.loads(subprocess.run(["docker", "image", "inspect", "-f", "{{json .Config.Labels}}", TAG],
                                       capture_output=True, text=True, check=True).stdout)
    assert labels["dev.envforge.format"] == "conda" and labels["dev.envforge.variant"] == "cpu"


def test_a_lock_without_the_build_platform_fails_the_build_plainly(served_channel: str, standin_image: str,
                                                                   tmp_path: Path) -> None:
    """micromamba installs nothing, exit 0, when the lock lacks the platform: the Dockerfile's check says so."""
    out = tmp_path / "out"
    locked = lock(out, served_channel, "linux-aarch64")
    assert locked.returncode == 0, locked.stderr
    build = envforge("build", str(out), "-t", "envforge-test/conda-wrong-platform:ci", cache=tmp_path / "cache")
    assert build.returncode == 1, build.stderr[-3000:]
    assert "Selected packages for category 'main' are empty" in build.stderr
    assert "no working Python 3.11 in the environment: is the build platform in the lock (linux-aarch64)?" \
        in build.stderr
    assert "Traceback" not in build.stderr
