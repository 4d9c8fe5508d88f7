"""`envforge lock` against the real PyPI (reachable here): real uv, real hashes, a real install from the lock."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from envforge.lock.interface import pins
from tests.conftest import clean_environ

pytestmark = pytest.mark.network
ROOT = Path(__file__).resolve().parents[2]


def envforge(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = clean_environ()
    return subprocess.run([sys.executable, "-m", "envforge", *args], capture_output=True, text=True, env=env,
                          cwd=cwd or ROOT)


def lock(out: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return envforge("lock", *args, "-o", str(out))


def body(path: Path) -> str:
    return path.read_text()


def test_torch_pypi_default_pins_the_nvidia_wheels(tmp_path: Path) -> None:
    proc = lock(tmp_path, "-f", "torch", "--version", "2.7.1", "--cuda", "12.6")
    assert proc.returncode == 0, proc.stderr
    text = body(tmp_path / "requirements.lock")
    got = pins(text)
    assert got["torch"] == "2.7.1" and got["torchvision"] == "0.22.1" and got["torchaudio"] == "2.7.1"
    # the cuDNN and CUDA runtime torch 2.7.1's METADATA pins (matrices/torch.toml `requires`)
    assert got["nvidia-cudnn-cu12"] == "9.5.1.17" and got["nvidia-cuda-runtime-cu12"] == "12.6.77"
    assert "--index-url https://pypi.org/simple" in text and "--extra-index-url" not in text
    for line in text.splitlines():
        if "==" in line and not line.startswith(("#", " ")):
            assert line.rstrip().endswith("\\"), f"no hash after {line}"
    manifest = json.loads((tmp_path / "envforge.lock.json").read_text())
    assert manifest["targets"][0]["variant"] == "cu126" and manifest["targets"][0]["min_driver"] == "525.60.13"


def test_jax_cuda12_and_tensorflow_and_cuda(tmp_path: Path) -> None:
    jax = lock(tmp_path / "jax", "-f", "jax", "--version", "0.4.30", "--cuda", "12")
    assert jax.returncode == 0, jax.stderr
    got = pins(body(tmp_path / "jax" / "requirements.lock"))
    assert got["jax"] == "0.4.30" and got["jax-cuda12-plugin"] == "0.4.30" and "nvidia-cudnn-cu12" in got
    tf = lock(tmp_path / "tf", "-f", "tensorflow", "--version", "2.15.1", "--cuda", "12")
    assert tf.returncode == 0, tf.stderr
    got = pins(body(tmp_path / "tf" / "requirements.lock"))
    assert got["tensorflow"] == "2.15.1" and got["nvidia-cudnn-cu12"] == "8.9.4.25"


def test_several_targets_deterministic_and_checked(tmp_path: Path) -> None:
    args = ("-f", "jax", "--version", "0.10.2", "--cuda", "cpu", "--cuda", "12", "--cuda", "13")
    first = lock(tmp_path, *args)
    assert first.returncode == 0, first.stderr
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["Dockerfile.cpu", "Dockerfile.cuda12", "Dockerfile.cuda13", "envforge-guard.py",
                     "envforge.lock.json", "requirements-cpu.lock", "requirements-cuda12.lock",
                     "requirements-cuda13.lock"]
    before = {n: (tmp_path / n).read_bytes() for n in names}
    assert lock(tmp_path, *args).returncode == 0
    assert {n: (tmp_path / n).read_bytes() for n in names} == before  # byte-identical
    manifest = json.loads(before["envforge.lock.json"])
    assert [(t["variant"], t["file"], t["min_driver"]) for t in manifest["targets"]] == [
        ("cpu", "requirements-cpu.lock", None),
        ("cuda12", "requirements-cuda12.lock", "525.60.13"),
        ("cuda13", "requirements-cuda13.lock", "580"),
    ]
    ok = envforge("lock", *args, "-o", str(tmp_path), "--check")
    assert ok.returncode == 0, ok.stderr
    stale = envforge("lock", *args, "--with", "optax", "-o", str(tmp_path), "--check")
    assert stale.returncode == 1 and "optax" in stale.stdout
    assert {n: (tmp_path / n).read_bytes() for n in names} == before  # --check writes nothing


@pytest.mark.parametrize("extra,code,needle", [
    (("--with", "numpy<1", "--with", "numpy>2"), 1, "numpy"),
    (("--with", "envforge-no-such-package-xyz"), 1, "envforge-no-such-package-xyz"),
    (("--index-url", "http://127.0.0.1:9/simple"), 3, "127.0.0.1:9"),
])
def test_failures_leave_the_previous_lock_intact(tmp_path: Path, extra, code, needle) -> None:
    args = ("-f", "jax", "--version", "0.10.2", "--cuda", "cpu")
    assert lock(tmp_path, *args).returncode == 0
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    proc = lock(tmp_path, *args, *extra)
    assert proc.returncode == code, proc.stderr
    assert needle in proc.stderr and "Traceback" not in proc.stderr
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


@pytest.mark.slow
def test_install_jax_cpu_from_the_lock_with_require_hashes(tmp_path: Path) -> None:
    out = tmp_path / "lock"
    assert lock(out, "-f", "jax", "--version", "0.10.2", "--cuda", "cpu").returncode == 0
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env.update({"PIP_CONFIG_FILE": os.devnull, "PIP_DISABLE_PIP_VERSION_CHECK": "1"})
    if os.environ.get("PIP_CERT"):
        env["PIP_CERT"] = os.environ["PIP_CERT"]
    install = subprocess.run([str(venv / "bin" / "pip"), "install", "--require-hashes", "-r",
                              str(out / "requirements.lock")], capture_output=True, text=True, env=env)
    assert install.returncode == 0, install.stderr[-3000:]
    run = subprocess.run([str(venv / "bin" / "python"), "-c",
                          "import jax, jax.numpy as jnp; print(jax.__version__, float(jnp.arange(4).sum()))"],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["0.10.2", "6.0"]
