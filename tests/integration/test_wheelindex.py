"""The local wheel indexes (tests/fakes/wheelindex.py) behave like PyPI + download.pytorch.org to the real tools.

The `wheel_index` fixture (conftest.py) serves a PyPI stand-in and PyTorch-index
stand-ins on 127.0.0.1. These tests run the real resolvers against them - uv
(`uv pip compile`), pip-tools (`pip-compile`) and pip - and pin down what each
does with the dependency-confusion bait the /whl/ indexes carry (filelock and
numpy 99.0.0, higher than the PyPI stand-in's), which is what `envforge lock`
has to defend against:

* uv, `--default-index PYPI --index TORCH`: its default `first-index` strategy
  asks the --index first for *every* package, so it takes filelock and numpy
  99.0.0 from the torch index. `--index-strategy unsafe-best-match` takes them too.
* uv, a pyproject.toml input with `[tool.uv.sources]` sending torch /
  torchvision / torchaudio to an `explicit = true` `[[tool.uv.index]]`, and
  `--default-index PYPI` on the command line: only those three come from the
  torch index. `uv pip compile pyproject.toml` honours the input's sources and
  named indexes even under --no-config, but --emit-index-url then writes only
  the default index: the torch index line has to be added to the lock (after
  --index-url: pip lets an --index-url line replace the index list). Sources
  reach direct dependencies only: torch left transitive (torchvision+cu118
  pins `torch==2.1.2`, no label) comes from PyPI.
* pip-compile (`--index-url PYPI --extra-index-url TORCH`): pip merges the
  indexes and takes the best version, so it takes filelock and numpy 99.0.0.

No test here is marked `network`: everything is loopback. The machine's own
pip / uv configuration is kept out (PIP_CONFIG_FILE=/dev/null, no PIP_* / UV_*
variables, --no-config).
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import shutil
import subprocess
import sys
import urllib.parse
import urllib.request
import zipfile
from pathlib import Path

import pytest

from tests.fakes.wheelindex import (
    BAIT_VERSION,
    Layout,
    build_indexes,
    make_wheel,
    read_metadata,
)

TIMEOUT_S = 120
PY = "3.11"
UV_PLATFORM = "x86_64-manylinux_2_28"  # what envforge passes for --platform linux-64
GOLDEN_TORCH_SHA256 = "44447cd756f0cbc7a3a7c1a39a939c100cd0f9d8b8febe745a5584935d1ceb5c"
GOLDEN_FILELOCK_SHA256 = "fb1c57f7c8b5858ac7c7ff1107d53852427e660dffec78f4c6aa27d104457390"


# --------------------------------------------------------------------------- helpers


def tool_env(base: dict[str, str], cache: Path) -> dict[str, str]:
    """The environment every tool runs in: no inherited PIP_*/UV_*, no pip config file, loopback unproxied."""
    env = {k: v for k, v in base.items() if not k.startswith(("PIP_", "UV_"))}
    env.update({
        "PIP_CONFIG_FILE": os.devnull,  # pip loads no config file at all (not /etc/xdg/pip, not /etc/pip.conf)
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
        "PIP_NO_INPUT": "1",
        "UV_CACHE_DIR": str(cache / "uv"),
        "UV_PYTHON_DOWNLOADS": "never",
        "UV_NO_PROGRESS": "1",
        "NO_PROXY": "127.0.0.1,localhost",
        "no_proxy": "127.0.0.1,localhost",
    })
    return env


def uv_bin() -> str:
    try:
        import uv  # the uv wheel (an envforge dependency) ships the binary

        return uv.find_uv_bin()
    except (ImportError, FileNotFoundError):
        found = shutil.which("uv")
        if not found:
            pytest.fail("uv is not installed (an envforge dependency): pip install uv", pytrace=False)
        return found


def pip_compile_cmd() -> list[str]:
    try:
        import piptools  # noqa: F401

        return [sys.executable, "-m", "piptools", "compile"]
    except ImportError:
        found = shutil.which("pip-compile")
        if not found:
            pytest.fail("pip-tools is not installed (an envforge dependency): pip install pip-tools", pytrace=False)
        return [found]


def run(cmd: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=TIMEOUT_S)
    assert proc.returncode == 0, f"{' '.join(cmd)}\nexit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc


PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)")
HASH = re.compile(r"--hash=sha256:([0-9a-f]{64})")
FROM = re.compile(r"^\s+# from (\S+)")


def parse_lock(text: str) -> dict[str, dict]:
    """name -> {"version", "hashes", "index"} of a hashed requirements file (uv's `# from URL` annotation)."""
    out: dict[str, dict] = {}
    current = None
    for line in text.splitlines():
        if m := PIN.match(line):
            current = out[m.group(1).lower()] = {"version": m.group(2), "hashes": [], "index": None}
        elif current is not None and (h := HASH.search(line)):
            current["hashes"].append(h.group(1))
        elif current is not None and (f := FROM.match(line)):
            current["index"] = f.group(1)
    return out


def index_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith(("--index-url", "--extra-index-url", "--find-links"))]


@pytest.fixture(scope="module")
def env(clean_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return tool_env(clean_env, tmp_path_factory.mktemp("tool-cache"))


def uv_compile(env: dict[str, str], cwd: Path, layout: Layout, src: str, *extra: str,
               platform: str = UV_PLATFORM) -> str:
    cmd = [uv_bin(), "pip", "compile", "--no-config", "--generate-hashes", "--emit-index-annotation",
           "--python-version", PY, "--python-platform", platform,
           "--default-index", layout.pypi_simple, *extra, src]
    return run(cmd, env, cwd).stdout


SOURCES_PYPROJECT = """\
[project]
name = "envforge-lock-input"
version = "0"
requires-python = ">=3.9"
dependencies = {deps}

[tool.uv.sources]
torch = {{ index = "pytorch" }}
torchvision = {{ index = "pytorch" }}
torchaudio = {{ index = "pytorch" }}

[[tool.uv.index]]
name = "pytorch"
url = "{torch_index}"
explicit = true
"""


@pytest.fixture(scope="module")
def restricted_lock(wheel_index: Layout, env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> str:
    """uv's lock of torch/torchvision 2.1.2+cu118 with the torch index restricted to the torch family."""
    work = tmp_path_factory.mktemp("uv-sources")
    deps = '["torch==2.1.2+cu118", "torchvision==0.16.2+cu118", "torchaudio==2.1.2+cu118"]'
    (work / "pyproject.toml").write_text(
        SOURCES_PYPROJECT.format(deps=deps, torch_index=wheel_index.torch_index("cu118")), encoding="utf-8")
    return uv_compile(env, work, wheel_index, "pyproject.toml", "--emit-index-url")


# --------------------------------------------------------------------------- the fixture itself


def test_wheels_are_byte_identical_across_builds(tmp_path: Path, wheel_index: Layout) -> None:
    again = build_indexes(tmp_path / "again")
    assert {k: sorted((w.filename, w.sha256) for w in ws) for k, ws in again.wheels.items()} == {
        k: sorted((w.filename, w.sha256) for w in ws) for k, ws in wheel_index.wheels.items()
    }
    a = make_wheel(tmp_path / "a", "demo-pkg", "1.0", requires=["x>=1"], extras={"gpu": ["y; sys_platform == 'linux'"]})
    b = make_wheel(tmp_path / "b", "demo-pkg", "1.0", requires=["x>=1"], extras={"gpu": ["y; sys_platform == 'linux'"]})
    assert a.name == "demo_pkg-1.0-py3-none-any.whl" and a.read_bytes() == b.read_bytes()


def test_wheel_bytes_are_pinned(wheel_index: Layout) -> None:
    # Same bytes on every machine and Python (checked on CPython 3.9-3.13): a change here changes every
    # hash in every lock a test records, so it must be deliberate.
    assert wheel_index.sha256("torch-2.1.2+cu118-cp311-cp311-manylinux_2_17_x86_64.whl") == GOLDEN_TORCH_SHA256
    assert wheel_index.sha256("filelock-3.16.1-py3-none-any.whl") == GOLDEN_FILELOCK_SHA256


def test_wheel_record_and_metadata_are_valid(wheel_index: Layout) -> None:
    (jax,) = wheel_index.files("pypi", "jax", "0.4.30")
    meta = read_metadata(jax.path)
    assert meta.startswith("Metadata-Version: 2.1\nName: jax\nVersion: 0.4.30\n")
    assert "Requires-Python: >=3.9\nRequires-Dist: jaxlib==0.4.30\n" in meta
    assert "Provides-Extra: cuda12\n" in meta
    assert 'Requires-Dist: jax-cuda12-plugin[with-cuda]==0.4.30; extra == "cuda12"\n' in meta
    torch = wheel_index.files("cu118", "torch", "2.1.2+cu118")
    assert sorted(w.filename for w in torch) == sorted(
        f"torch-2.1.2+cu118-{cp}-{cp}-manylinux_2_17_{arch}.whl"
        for cp in ("cp310", "cp311", "cp312") for arch in ("x86_64", "aarch64"))
    with zipfile.ZipFile(torch[0].path) as zf:
        record = zf.read("torch-2.1.2+cu118.dist-info/RECORD").decode()
        for line in record.splitlines():
            path, digest, size = line.rsplit(",", 2)
            if path.endswith("RECORD"):
                assert digest == size == ""
                continue
            data = zf.read(path)
            want = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            assert digest == f"sha256={want}" and int(size) == len(data), path
        assert {i.date_time for i in zf.infolist()} == {(1980, 1, 1, 0, 0, 0)}
        wheel = zf.read("torch-2.1.2+cu118.dist-info/WHEEL").decode()
        tag = torch[0].filename[len("torch-2.1.2+cu118-"):-len(".whl")]
        assert "Root-Is-Purelib: false\n" in wheel and wheel.endswith(f"Tag: {tag}\n")
    cu118_meta = read_metadata(torch[0].path)
    assert "nvidia" not in cu118_meta and "Requires-Dist: filelock\n" in cu118_meta
    pypi_meta = read_metadata(wheel_index.files("pypi", "torch", "2.1.2")[0].path)
    assert ('Requires-Dist: nvidia-cudnn-cu12==8.9.2.26; platform_system == "Linux" and platform_machine == "x86_64"'
            in pypi_meta)
    (tv,) = {read_metadata(w.path) for w in wheel_index.files("cu118", "torchvision", "0.16.2+cu118")}
    assert "Requires-Dist: torch==2.1.2\n" in tv  # no local label, as the real +cu118 wheels declare


def test_served_pages_are_pep503(wheel_index: Layout) -> None:
    with urllib.request.urlopen(wheel_index.pypi_simple + "/") as resp:
        assert '<a href="torch/">torch</a>' in resp.read().decode()
    page_url = wheel_index.torch_index("cu118") + "/torch/"
    with urllib.request.urlopen(page_url) as resp:
        assert resp.headers.get_content_type() == "text/html"
        page = resp.read().decode()
    links = re.findall(r'<a href="([^"#]+)#sha256=([0-9a-f]{64})" data-requires-python="([^"]+)"', page)
    assert len(links) == len(wheel_index.files("cu118", "torch"))
    href, sha, rp = next(link for link in links if "cp311-cp311-manylinux_2_17_x86_64" in link[0])
    assert href == "../files/torch-2.1.2%2Bcu118-cp311-cp311-manylinux_2_17_x86_64.whl" and rp == "&gt;=3.8.0"
    file_url = urllib.parse.urljoin(page_url, href)
    with urllib.request.urlopen(file_url) as resp:
        assert hashlib.sha256(resp.read()).hexdigest() == sha
    with urllib.request.urlopen(urllib.request.Request(file_url, method="HEAD")) as resp:
        assert resp.status == 200 and int(resp.headers["Content-Length"]) > 0
    with urllib.request.urlopen(file_url + ".metadata") as resp:
        assert resp.read().decode().startswith("Metadata-Version: 2.1\nName: torch\nVersion: 2.1.2+cu118\n")


# --------------------------------------------------------------------------- uv


def test_uv_first_index_takes_the_bait_from_the_torch_index(wheel_index: Layout, env, tmp_path: Path) -> None:
    (tmp_path / "req.in").write_text("torch==2.1.2+cu118\ntorchvision==0.16.2+cu118\n")
    torch_index = wheel_index.torch_index("cu118")
    got = parse_lock(uv_compile(env, tmp_path, wheel_index, "req.in", "--index", torch_index))
    assert got["torch"]["version"] == "2.1.2+cu118" and got["torchvision"]["version"] == "0.16.2+cu118"
    # uv asks an --index before the --default-index for every package, and stops at the first
    # index that has the project: filelock and numpy come from the torch index.
    assert (got["filelock"]["version"], got["filelock"]["index"]) == (BAIT_VERSION, torch_index)
    assert (got["numpy"]["version"], got["numpy"]["index"]) == (BAIT_VERSION, torch_index)
    assert (got["typing-extensions"]["version"], got["typing-extensions"]["index"]) == ("4.12.2", wheel_index.pypi_simple)
    # Hashes: the cp311 x86_64 wheel is among them, and every hash is one of torch 2.1.2+cu118's files on the
    # torch index (uv 0.13 lists all six cp310-cp312 x86_64/aarch64 wheels despite --python-platform).
    torch_files = {w.filename: w.sha256 for w in wheel_index.files("cu118", "torch", "2.1.2+cu118")}
    assert torch_files["torch-2.1.2+cu118-cp311-cp311-manylinux_2_17_x86_64.whl"] in got["torch"]["hashes"]
    assert set(got["torch"]["hashes"]) <= set(torch_files.values())
    assert got["filelock"]["hashes"] == [wheel_index.sha256(f"filelock-{BAIT_VERSION}-py3-none-any.whl", "cu118")]


def test_uv_best_match_takes_the_bait_too(wheel_index: Layout, env, tmp_path: Path) -> None:
    (tmp_path / "req.in").write_text("torch==2.1.2+cu118\n")
    got = parse_lock(uv_compile(env, tmp_path, wheel_index, "req.in", "--index", wheel_index.torch_index("cu118"),
                                "--index-strategy", "unsafe-best-match"))
    assert got["filelock"]["version"] == BAIT_VERSION


def test_uv_sources_restrict_the_torch_index_to_the_torch_family(wheel_index: Layout, restricted_lock: str) -> None:
    got = parse_lock(restricted_lock)
    torch_index = wheel_index.torch_index("cu118")
    assert {n: (p["version"], p["index"]) for n, p in got.items()} == {
        "torch": ("2.1.2+cu118", torch_index),
        "torchvision": ("0.16.2+cu118", torch_index),
        "torchaudio": ("2.1.2+cu118", torch_index),
        "filelock": ("3.16.1", wheel_index.pypi_simple),
        "numpy": ("1.26.4", wheel_index.pypi_simple),
        "pillow": ("10.2.0", wheel_index.pypi_simple),
        "typing-extensions": ("4.12.2", wheel_index.pypi_simple),
    }
    assert "nvidia" not in restricted_lock  # the +cu118 builds bundle CUDA
    assert got["filelock"]["hashes"] == [wheel_index.sha256("filelock-3.16.1-py3-none-any.whl", "pypi")]
    # --emit-index-url writes the default index only: the explicit torch index is not in the lock.
    assert index_lines(restricted_lock) == [f"--index-url {wheel_index.pypi_simple}"]


def test_uv_sources_cover_direct_dependencies_only(wheel_index: Layout, env, tmp_path: Path) -> None:
    # torchvision+cu118 pins `torch==2.1.2` (no label): left transitive, torch is not routed to the torch
    # index and comes from PyPI - the PyPI (CUDA 12.1) build with its nvidia wheels, beside a cu118 torchvision.
    (tmp_path / "pyproject.toml").write_text(SOURCES_PYPROJECT.format(
        deps='["torchvision==0.16.2+cu118"]', torch_index=wheel_index.torch_index("cu118")), encoding="utf-8")
    got = parse_lock(uv_compile(env, tmp_path, wheel_index, "pyproject.toml"))
    assert (got["torchvision"]["version"], got["torchvision"]["index"]) == ("0.16.2+cu118", wheel_index.torch_index("cu118"))
    assert (got["torch"]["version"], got["torch"]["index"]) == ("2.1.2", wheel_index.pypi_simple)
    assert got["nvidia-cudnn-cu12"]["version"] == "8.9.2.26"


@pytest.mark.parametrize(("platform", "nvidia"), [("x86_64-manylinux_2_28", True), ("aarch64-manylinux_2_28", False)])
def test_uv_pypi_default_torch_pulls_nvidia_wheels_on_linux_x86_64_only(
    wheel_index: Layout, env, tmp_path: Path, platform: str, nvidia: bool,
) -> None:
    (tmp_path / "req.in").write_text("torch==2.1.2\ntorchvision\n")
    got = parse_lock(uv_compile(env, tmp_path, wheel_index, "req.in", platform=platform))
    assert (got["torch"]["version"], got["torchvision"]["version"]) == ("2.1.2", "0.16.2")
    assert {n: p["version"] for n, p in got.items() if n.startswith("nvidia-")} == (
        {"nvidia-cudnn-cu12": "8.9.2.26", "nvidia-cuda-runtime-cu12": "12.1.105"} if nvidia else {})
    assert all(p["index"] == wheel_index.pypi_simple for p in got.values())


def test_uv_jax_cuda12_extra(wheel_index: Layout, env, tmp_path: Path) -> None:
    (tmp_path / "req.in").write_text("jax[cuda12]==0.4.30\n")
    got = parse_lock(uv_compile(env, tmp_path, wheel_index, "req.in"))
    assert {n: p["version"] for n, p in got.items()} == {
        "jax": "0.4.30", "jaxlib": "0.4.30", "jax-cuda12-plugin": "0.4.30", "jax-cuda12-pjrt": "0.4.30",
        "nvidia-cudnn-cu12": "9.5.1.17", "nvidia-cuda-runtime-cu12": "12.6.77", "numpy": "1.26.4",
    }


# --------------------------------------------------------------------------- pip-tools


def test_pip_compile_merges_indexes_and_takes_the_bait(wheel_index: Layout, env, tmp_path: Path) -> None:
    (tmp_path / "req.in").write_text("torch==2.1.2+cu118\ntorchvision==0.16.2+cu118\n")
    torch_index = wheel_index.torch_index("cu118")
    cmd = [*pip_compile_cmd(), "--no-config", "--generate-hashes", "--allow-unsafe", "--quiet",
           "--cache-dir", str(tmp_path / "cache"), "--index-url", wheel_index.pypi_simple,
           "--extra-index-url", torch_index, "-o", "req.txt", "req.in"]
    proc = run(cmd, env, tmp_path)
    text = (tmp_path / "req.txt").read_text()
    got = parse_lock(text)
    assert got["torch"]["version"] == "2.1.2+cu118" and got["torchvision"]["version"] == "0.16.2+cu118"
    # pip sees one merged candidate list per project and takes the highest version: the bait.
    assert got["filelock"]["version"] == BAIT_VERSION and got["numpy"]["version"] == BAIT_VERSION
    assert got["filelock"]["hashes"] == [wheel_index.sha256(f"filelock-{BAIT_VERSION}-py3-none-any.whl", "cu118")]
    # pip-compile hashes every file of the pinned release, whatever the platform: 3 Pythons x 2 arches.
    assert len(got["torch"]["hashes"]) == 6
    # Only the indexes given: this machine's pip config (find-links, extra indexes) did not leak in.
    assert index_lines(text) == [f"--index-url {wheel_index.pypi_simple}", f"--extra-index-url {torch_index}"]
    assert "/opt/" not in text + proc.stderr


# --------------------------------------------------------------------------- installing a lock


def test_pip_installs_the_uv_lock_with_require_hashes(
    wheel_index: Layout, restricted_lock: str, env, tmp_path: Path,
) -> None:
    # pip reads a requirements file's options in order and an --index-url line *replaces* the index list,
    # so the torch index goes after it.
    torch_index = wheel_index.torch_index("cu118")
    lock = restricted_lock.replace(
        f"--index-url {wheel_index.pypi_simple}\n",
        f"--index-url {wheel_index.pypi_simple}\n--extra-index-url {torch_index}\n", 1)
    assert f"--extra-index-url {torch_index}" in lock
    (tmp_path / "requirements.lock").write_text(lock)
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", str(venv)], env, tmp_path)
    python = venv / "bin" / "python"
    run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-cache-dir", "--require-hashes",
         "-r", "requirements.lock"], env, tmp_path)
    out = run([str(python), "-c", "import torch, torch.version, filelock, torchvision; "
               "print(torch.__version__, torch.version.cuda, filelock.__version__, torchvision.__version__)"],
              env, tmp_path).stdout.split()
    assert out == ["2.1.2+cu118", "11.8", "3.16.1", "0.16.2+cu118"]
