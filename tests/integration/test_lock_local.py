"""`envforge lock` with the real uv and pip-tools against local stand-ins of PyPI and download.pytorch.org.

The PyTorch-index stand-in mirrors filelock and numpy at version 99.0.0, as
download.pytorch.org mirrors third-party packages: a correct lock takes only
torch, torchvision and torchaudio from it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from envforge.lock.interface import pins
from tests.conftest import clean_environ

ROOT = Path(__file__).resolve().parents[2]


def envforge(wheel_index, out: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = clean_environ()
    cmd = [sys.executable, "-m", "envforge", "lock", "--no-detect", "--python", "3.11",
           "--index-url", wheel_index.pypi_simple, "--torch-index", wheel_index.torch_index("cpu").rsplit("/", 1)[0],
           "-o", str(out), *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)


def sources(text: str) -> dict[str, str]:
    """package -> the index uv says it came from (its `# from` annotation)."""
    out, current = {}, None
    for line in text.splitlines():
        if "==" in line and not line.startswith((" ", "#", "-")):
            current = line.split("==")[0].lower()
        elif line.strip().startswith("# from ") and current:
            out[current] = line.strip()[len("# from "):]
    return out


def test_cu118_lock_takes_only_torch_packages_from_the_torch_index(wheel_index, tmp_path: Path) -> None:
    proc = envforge(wheel_index, tmp_path, "-f", "torch", "--version", "2.1.2", "--cuda", "11.8")
    assert proc.returncode == 0, proc.stderr
    text = (tmp_path / "requirements.lock").read_text()
    got = pins(text)
    assert got["torch"] == "2.1.2+cu118"
    assert got["torchvision"] == "0.16.2+cu118" and got["torchaudio"] == "2.1.2+cu118"
    assert got["filelock"] == "3.16.1" and got["numpy"] == "1.26.4"  # not the 99.0.0 bait
    origin = sources(text)
    torch_index = wheel_index.torch_index("cu118")
    assert {p for p, url in origin.items() if url.rstrip("/") == torch_index} == {"torch", "torchvision", "torchaudio"}
    lines = text.splitlines()
    index_lines = [line for line in lines if line.startswith("--")]
    assert index_lines == [f"--index-url {wheel_index.pypi_simple}", f"--extra-index-url {torch_index}"]
    assert lines[0] == "#" and "envforge 0.1.0" in lines[1]
    # the Dockerfile beside it: an nvidia/cuda 11.8 base that exists (images.toml), the smallest flavour
    dockerfile = (tmp_path / "Dockerfile").read_text()
    assert "ARG BASE_IMAGE=nvidia/cuda:11.8.0-base-ubuntu22.04" in dockerfile
    assert "COPY requirements.lock /tmp/envforge/requirements.lock" in dockerfile
    assert (tmp_path / "envforge-guard.py").is_file()


def test_the_lock_installs_alone_with_require_hashes(wheel_index, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert envforge(wheel_index, out, "-f", "torch", "--version", "2.1.2", "--cuda", "11.8").returncode == 0
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env.update({"PIP_CONFIG_FILE": os.devnull, "PIP_DISABLE_PIP_VERSION_CHECK": "1"})
    install = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "--no-cache-dir",
         "--require-hashes", "-r", str(out / "requirements.lock")],
        capture_output=True, text=True, env=env)
    assert install.returncode == 0, install.stderr[-3000:]
    probe = subprocess.run([str(venv / "bin" / "python"), "-c",
                            "import torch, filelock; print(torch.__version__, filelock.__version__)"],
                           capture_output=True, text=True)
    assert probe.stdout.split() == ["2.1.2+cu118", "3.16.1"], probe.stderr


def test_uv_and_pip_tools_give_the_same_pins(wheel_index, tmp_path: Path) -> None:
    # torch 2.1.2's PyPI default build (cu121): everything from the PyPI stand-in.
    args = ("-f", "torch", "--version", "2.1.2", "--cuda", "12.1", "--with", "filelock<3.14")
    uv = envforge(wheel_index, tmp_path / "uv", *args)
    pt = envforge(wheel_index, tmp_path / "pt", *args, "--resolver", "pip-tools")
    assert uv.returncode == 0, uv.stderr
    assert pt.returncode == 0, pt.stderr
    uv_pins = pins((tmp_path / "uv" / "requirements.lock").read_text())
    pt_pins = pins((tmp_path / "pt" / "requirements.lock").read_text())
    assert uv_pins == pt_pins
    assert uv_pins["torch"] == "2.1.2" and uv_pins["nvidia-cudnn-cu12"] == "8.9.2.26"
    assert uv_pins["filelock"] == "3.13.1"


def test_pip_tools_lock_that_took_the_bait_is_refused(wheel_index, tmp_path: Path) -> None:
    (tmp_path / "keep.txt").write_text("previous lock\n")
    proc = envforge(wheel_index, tmp_path, "-f", "torch", "--version", "2.1.2", "--cuda", "11.8",
                    "--resolver", "pip-tools")
    assert proc.returncode == 1, proc.stderr
    assert "dependency confusion" in proc.stderr and "filelock==99.0.0" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]


def test_several_targets_at_once_with_a_manifest(wheel_index, tmp_path: Path) -> None:
    proc = envforge(wheel_index, tmp_path, "-f", "torch", "--version", "2.1.2",
                    "--cuda", "11.8", "--cuda", "12.1", "--cuda", "cpu")
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads((tmp_path / "envforge.lock.json").read_text())
    by_variant = {t["variant"]: t for t in manifest["targets"]}
    assert set(by_variant) == {"cu118", "cu121", "cpu"}
    assert by_variant["cu118"]["file"] == "requirements-cu118.lock"
    assert by_variant["cu118"]["min_driver"] == "450.80.02" and "3.7" in by_variant["cu118"]["arch"]
    assert by_variant["cu121"]["index_url"] is None  # the PyPI default build
    for variant, target in by_variant.items():
        text = (tmp_path / target["file"]).read_text()
        assert pins(text)["torch"] == {"cu118": "2.1.2+cu118", "cu121": "2.1.2", "cpu": "2.1.2+cpu"}[variant]


def test_pylock_format(wheel_index, tmp_path: Path) -> None:
    proc = envforge(wheel_index, tmp_path, "-f", "torch", "--version", "2.1.2", "--cuda", "11.8",
                    "--format", "pylock")
    assert proc.returncode == 0, proc.stderr
    doc = tomllib.loads((tmp_path / "pylock.toml").read_text())
    assert doc["lock-version"] == "1.0"
    packages = {p["name"]: p for p in doc["packages"]}
    assert packages["torch"]["version"] == "2.1.2+cu118"
    (wheel,) = packages["torch"]["wheels"]  # only the file for the target (cp311, x86_64)
    assert wheel["url"].startswith(wheel_index.torch_index("cu118") + "/") and wheel["hashes"]["sha256"]
    assert "cp311" in wheel["url"] and "x86_64" in wheel["url"]
    assert packages["filelock"]["version"] == "3.16.1"
    assert packages["filelock"]["wheels"][0]["url"].startswith(wheel_index.pypi_simple.rsplit("/", 1)[0])


def test_a_lock_for_another_python_and_platform(wheel_index, tmp_path: Path) -> None:
    env = clean_environ()
    cmd = [sys.executable, "-m", "envforge", "lock", "--no-detect", "--python", "3.10", "--platform",
           "linux-aarch64", "--index-url", wheel_index.pypi_simple,
           "--torch-index", wheel_index.torch_index("cpu").rsplit("/", 1)[0], "-f", "torch", "--version", "2.1.2",
           "--cuda", "cpu", "-o", str(tmp_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    target = json.loads((tmp_path / "envforge.lock.json").read_text())["targets"][0]
    assert (target["python"], target["platform"]) == ("3.10", "linux-aarch64")
    assert pins((tmp_path / "requirements.lock").read_text())["torch"] == "2.1.2+cpu"
    refused = subprocess.run(cmd[:-2] + ["-o", str(tmp_path / "pt"), "--resolver", "pip-tools"],
                             capture_output=True, text=True, env=env, cwd=ROOT)
    assert refused.returncode == 2 and "--resolver uv" in refused.stderr


def test_user_requirements_from_with_r_and_pyproject(wheel_index, tmp_path: Path) -> None:
    (tmp_path / "requirements.in").write_text("filelock<3.14\n")
    (tmp_path / "pyproject.toml").write_text(
        '[project]\nname = "my-model"\nversion = "1.0"\ndependencies = ["pillow==10.2.0"]\n')
    out = tmp_path / "out"
    proc = envforge(wheel_index, out, "-f", "torch", "--version", "2.1.2", "--cuda", "11.8",
                    "-r", str(tmp_path / "requirements.in"), "--pyproject", str(tmp_path / "pyproject.toml"),
                    "--with", "typing-extensions<4.10", "--no-companions")
    assert proc.returncode == 0, proc.stderr
    text = (out / "requirements.lock").read_text()
    got = pins(text)
    assert got["filelock"] == "3.13.1" and got["pillow"] == "10.2.0" and got["typing-extensions"] == "4.9.0"
    assert "torchvision" not in got and got["torch"] == "2.1.2+cu118"
    assert str(tmp_path) in text  # annotations name the user's own files
    manifest = json.loads((out / "envforge.lock.json").read_text())
    assert list(manifest["inputs"]["requirements"].values())[0] == __import__("hashlib").sha256(
        b"filelock<3.14\n").hexdigest()
    missing = envforge(wheel_index, out, "-f", "torch", "--version", "2.1.2", "--cuda", "11.8", "-r", "nope.in")
    assert missing.returncode == 2 and "nope.in" in missing.stderr
