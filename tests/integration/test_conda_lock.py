"""`--format conda`: conda-forge specs, environment.yml, and conda-lock.yml solved for real against a local channel.

The channel (tests/fakes/condachannel.py) is a set of tiny packages modelled on
conda-forge's metadata (pytorch 2.1.2 cuda118/cuda120/cpu builds, cuda-version with
its `__cuda >=<major>` constraint, python, numpy, filelock), built and indexed with
rattler once per session. Locks are solved by py-rattler in-process, and, through
conda-lock's own CLI, by a micromamba stand-in (no real conda/mamba/micromamba can
be installed here: conda channels are unreachable).
"""

from __future__ import annotations

import hashlib
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from envforge.errors import BadInput, EnvironmentFailure, LockError, ToolNotFound
from envforge.lock.conda import (
    CondaSpec,
    CondaTarget,
    conda_spec,
    lock,
    render_environment_yml,
    render_virtual_packages_yml,
)
from envforge.models import HostFacts, Request, Selected
from envforge.resolve import resolve
from tests.conftest import clean_environ
from tests.fakes.condachannel import build_channel, repodata, write_fake_micromamba

REPO = Path(__file__).resolve().parents[2]


def selected(framework: str = "torch", version: str = "2.1.2", cuda: str | None = "11.8", **kw) -> Selected:
    variant = kw.pop("variant", f"cu{cuda.replace('.', '')}" if cuda else "cpu")
    return Selected(framework=framework, version=version, variant=variant, cuda=cuda, cudnn=None,
                    python=">=3.8,<3.13", arch=(), min_driver=None, index_url=None, requirements=(),
                    companions=(), base_image=None, **kw)


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def channel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("rattler", reason="py-rattler is not installed (pip install py-rattler conda-lock)")
    pytest.importorskip("conda_lock", reason="conda-lock is not installed (pip install py-rattler conda-lock)")
    return build_channel(tmp_path_factory.mktemp("conda-channel"))


@pytest.fixture(autouse=True)
def _rattler_cache(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    monkeypatch.setenv("RATTLER_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "rattler-cache"))


@pytest.fixture
def urls(channel: Path) -> dict[str, str]:
    return {"conda-forge": str(channel)}


@pytest.fixture(scope="session")
def fake_micromamba_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    bin_dir = tmp_path_factory.mktemp("fake-micromamba")
    write_fake_micromamba(bin_dir)
    return bin_dir


def parse(text: str, tmp_path: Path):
    """The lock text read back by conda-lock's own parser (a Lockfile, v2 model)."""
    from conda_lock.lockfile import parse_conda_lock_file

    path = tmp_path / "conda-lock.yml"
    path.write_text(text, encoding="utf-8")
    return parse_conda_lock_file(path)


def by_name(lockfile, platform: str) -> dict:
    return {p.name: p for p in lockfile.package if p.platform == platform}


TORCH_GPU = CondaSpec(("conda-forge",), ("cuda-version 11.8.*", "numpy", "python 3.11.*", "pytorch ==2.1.2 cuda*"))
TORCH_CPU = CondaSpec(("conda-forge",), ("numpy", "python 3.11.*", "pytorch ==2.1.2 cpu*"))
TORCH_126 = CondaSpec(("conda-forge",), ("cuda-version 12.6.*", "python 3.11.*", "pytorch ==2.1.2 cuda*"))


# --------------------------------------------------------------------------- specs: conda-forge naming


def test_torch_cuda_build_pins_build_string_cuda_version_and_python():
    spec = conda_spec(selected(cuda="11.8"), "3.11")
    assert spec == CondaSpec(("conda-forge",), ("cuda-version 11.8.*", "python 3.11.*", "pytorch ==2.1.2 cuda*"))


def test_torch_cpu_build_selects_cpu_builds_and_no_cuda_version():
    spec = conda_spec(selected(cuda=None), "3.12", extra=["filelock", "numpy >=1.26"])
    assert spec.dependencies == ("filelock", "numpy >=1.26", "python 3.12.*", "pytorch ==2.1.2 cpu*")


def test_tensorflow_and_jax_names():
    tf = conda_spec(selected("tensorflow", "2.15.0", "12.2", variant="and-cuda"), "3.11")
    assert tf.dependencies == ("cuda-version 12.2.*", "python 3.11.*", "tensorflow ==2.15.0 cuda*")
    jax = conda_spec(selected("jax", "0.4.30", "12.1", variant="cuda12"), "3.11")
    # jax is noarch on conda-forge and pins its jaxlib; the build string sits on jaxlib.
    assert jax.dependencies == ("cuda-version 12.1.*", "jax ==0.4.30", "jaxlib * cuda*", "python 3.11.*")


def test_spec_from_the_real_resolver(matrix):
    resolution = resolve(matrix, HostFacts(source="none", constrained=False),
                         Request(framework="torch", version="2.1.2", cuda="11.8", python="3.11", platform="linux-64"))
    assert resolution.selected is not None
    spec = conda_spec(resolution.selected, "3.11")
    assert "pytorch ==2.1.2 cuda*" in spec.dependencies and "cuda-version 11.8.*" in spec.dependencies


@pytest.mark.parametrize("sel,needle", [
    (selected(cuda=None, rocm="6.0", variant="rocm6.0"), "no ROCm builds"),
    (selected(version="1.5.1"), "pytorch 1.6.0"),
    (selected("tensorflow", "2.5.0", "11.2", variant="cuda"), "tensorflow 2.6.0"),
])
def test_builds_conda_forge_does_not_name_are_refused_not_guessed(sel, needle):
    with pytest.raises(LockError, match=needle) as info:
        conda_spec(sel, "3.11")
    assert info.value.fix and "--format pip" in info.value.fix


@pytest.mark.parametrize("kwargs,needle", [
    (dict(sel=selected("mxnet")), "no conda-forge naming"),
    (dict(sel=selected(), python="3"), "major.minor"),
    (dict(sel=selected(), extra=["python 3.10.*"]), "clashes"),
    (dict(sel=selected(), channels=()), "at least one channel"),
])
def test_bad_input(kwargs, needle):
    sel = kwargs.pop("sel")
    with pytest.raises(BadInput, match=needle):
        conda_spec(sel, kwargs.pop("python", "3.11"), **kwargs)


# --------------------------------------------------------------------------- environment.yml


def test_environment_yml_is_deterministic_sorted_and_readable_by_conda_lock(tmp_path):
    pytest.importorskip("conda_lock")
    from conda_lock.lookup import DEFAULT_MAPPING_URL
    from conda_lock.src_parser.environment_yaml import parse_environment_file

    shuffled = CondaSpec(("conda-forge",), ("pytorch ==2.1.2 cuda*", "python 3.11.*", "cuda-version 11.8.*"))
    header = "# generated by envforge 0.1.0\n# envforge lock -f torch --format conda"
    text = render_environment_yml(shuffled, "torch-cu118", header)
    assert text == render_environment_yml(shuffled, "torch-cu118", header)
    assert text == (
        "# generated by envforge 0.1.0\n"
        "# envforge lock -f torch --format conda\n"
        "name: torch-cu118\n"
        "channels:\n"
        "  - conda-forge\n"
        "  - nodefaults\n"
        "dependencies:\n"
        "  - cuda-version 11.8.*\n"
        "  - python 3.11.*\n"
        "  - pytorch ==2.1.2 cuda*\n"
    )
    path = tmp_path / "environment.yml"
    path.write_text(text, encoding="utf-8")
    spec = parse_environment_file(path, ["linux-64"], mapping_url=DEFAULT_MAPPING_URL)
    deps = {d.name: (d.version, d.build) for d in spec.dependencies["linux-64"]}
    assert deps == {"cuda-version": ("11.8.*", None), "python": ("3.11.*", None), "pytorch": ("==2.1.2", "cuda*")}
    assert [c.url for c in spec.channels] == ["conda-forge"]


def test_virtual_package_spec_comes_from_the_target():
    text = render_virtual_packages_yml([CondaTarget("osx-arm64", None), CondaTarget("linux-64", "11.8", "2.17")])
    assert text == (
        "subdirs:\n"
        "  linux-64:\n"
        "    packages:\n"
        '      __archspec: "1 x86_64"\n'
        '      __cuda: "11.8"\n'
        '      __glibc: "2.17"\n'
        '      __linux: "5.10"\n'
        '      __unix: "0"\n'
        "  osx-arm64:\n"
        "    packages:\n"
        '      __archspec: "1 arm64"\n'
        '      __osx: "11.0"\n'
        '      __unix: "0"\n'
    )


# --------------------------------------------------------------------------- locks solved by rattler


def test_gpu_lock_for_cuda_11_8_picks_the_cuda118_build(urls, channel, tmp_path):
    text = lock(TORCH_GPU, [CondaTarget("linux-64", "11.8")], channel_urls=urls, solver="rattler")
    packages = by_name(parse(text, tmp_path), "linux-64")
    assert packages["pytorch"].build.startswith("cuda118_py311h")
    assert packages["cuda-version"].version == "11.8"
    assert set(packages) == {"pytorch", "cuda-version", "python", "numpy", "filelock"}
    # Hashes and URLs are the channel's, as its index recorded them from the archives.
    records = repodata(channel, "linux-64")
    torch = packages["pytorch"]
    filename = torch.url.rsplit("/", 1)[-1]
    assert torch.url == (channel / "linux-64" / filename).resolve().as_uri()
    assert torch.hash.md5 == records[filename]["md5"]
    assert torch.hash.sha256 == hashlib.sha256((channel / "linux-64" / filename).read_bytes()).hexdigest()
    assert torch.dependencies["cuda-version"] == ">=11.8,<12"
    assert all(p.categories == {"main"} for p in packages.values())


def test_cpu_lock_picks_the_cpu_build(urls, tmp_path):
    text = lock(TORCH_CPU, [CondaTarget("linux-64", None)], channel_urls=urls, solver="rattler")
    packages = by_name(parse(text, tmp_path), "linux-64")
    assert packages["pytorch"].build.startswith("cpu_generic_py311h")
    assert "cuda-version" not in packages


def test_cuda_version_pin_chooses_between_cuda_builds(urls, tmp_path):
    text = lock(TORCH_126, [CondaTarget("linux-64", "12.6")], channel_urls=urls, solver="rattler")
    packages = by_name(parse(text, tmp_path), "linux-64")
    assert packages["pytorch"].build.startswith("cuda120_py311h")
    assert packages["cuda-version"].version == "12.6"


def test_several_platforms_in_one_lock(urls, tmp_path):
    targets = [CondaTarget("linux-aarch64", "12.6"), CondaTarget("linux-64", "12.6")]
    lockfile = parse(lock(TORCH_126, targets, channel_urls=urls, solver="rattler"), tmp_path)
    assert lockfile.metadata.platforms == ["linux-64", "linux-aarch64"]
    assert set(lockfile.metadata.content_hash) == {"linux-64", "linux-aarch64"}
    for platform in ("linux-64", "linux-aarch64"):
        torch = by_name(lockfile, platform)["pytorch"]
        assert torch.build.startswith("cuda120_py311h") and f"/{platform}/" in torch.url


def test_macos_cpu_lock(urls, tmp_path):
    text = lock(TORCH_CPU, [CondaTarget("osx-arm64", None)], channel_urls=urls, solver="rattler")
    assert by_name(parse(text, tmp_path), "osx-arm64")["pytorch"].build.startswith("cpu_generic_py311h")


def test_lock_is_deterministic(urls):
    targets = [CondaTarget("linux-64", "12.6"), CondaTarget("linux-aarch64", "12.6")]
    one = lock(TORCH_126, targets, channel_urls=urls, solver="rattler")
    two = lock(TORCH_126, list(reversed(targets)), channel_urls=urls, solver="rattler")
    assert one == two
    assert "created_at" not in one and "time_metadata" not in one


def test_a_header_on_top_still_parses(urls, tmp_path):
    text = lock(TORCH_CPU, [CondaTarget("linux-64", None)], channel_urls=urls, solver="rattler")
    lockfile = parse("# generated by envforge 0.1.0\n# envforge lock --format conda\n" + text, tmp_path)
    assert by_name(lockfile, "linux-64")["pytorch"].build.startswith("cpu_")


# --------------------------------------------------------------------------- no solution / no channel


def test_target_cuda_below_the_build_fails_naming_the_cuda_constraint(urls):
    with pytest.raises(LockError) as info:
        lock(TORCH_GPU, [CondaTarget("linux-64", "10.2")], channel_urls=urls, solver="rattler")
    message = info.value.message
    assert "linux-64" in message and "__cuda=10.2" in message
    assert "cuda-version 11.8.*" in message and "__cuda >=11" in message  # the solver's explanation
    assert "newer CUDA driver" in info.value.fix


def test_cuda_build_on_a_target_without_cuda_fails(urls):
    with pytest.raises(LockError) as info:
        lock(TORCH_GPU, [CondaTarget("linux-64", None)], channel_urls=urls, solver="rattler")
    assert "pytorch ==2.1.2 cuda*" in info.value.message and "__cuda" in info.value.message
    assert "--cuda cpu" in info.value.fix


def test_a_platform_conda_forge_lacks_the_build_for_fails_naming_it(urls):
    # conda-forge skipped pytorch 2.1.2 CUDA 11.8 on aarch64: linux-64 solves, linux-aarch64 does not.
    targets = [CondaTarget("linux-64", "11.8"), CondaTarget("linux-aarch64", "11.8")]
    with pytest.raises(LockError, match="no conda solution for linux-aarch64"):
        lock(TORCH_GPU, targets, channel_urls=urls, solver="rattler")


def test_unknown_package_fails_naming_it(urls):
    spec = CondaSpec(("conda-forge",), ("python 3.11.*", "no-such-package"))
    with pytest.raises(LockError, match="no-such-package") as info:
        lock(spec, [CondaTarget("linux-64", None)], channel_urls=urls, solver="rattler")
    assert "No candidates were found" in info.value.message
    assert info.value.exit_code == 1


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_unreachable_channel_is_an_environment_failure():
    pytest.importorskip("rattler")
    pytest.importorskip("conda_lock")
    url = f"http://127.0.0.1:{_closed_port()}/conda-forge"
    with pytest.raises(EnvironmentFailure, match="cannot read the conda channel") as info:
        lock(TORCH_CPU, [CondaTarget("linux-64", None)], channel_urls={"conda-forge": url}, solver="rattler")
    assert info.value.exit_code == 3 and "127.0.0.1" in info.value.message


def test_missing_channel_directory_is_an_environment_failure(tmp_path):
    with pytest.raises(EnvironmentFailure, match="no conda channel"):
        lock(TORCH_CPU, [CondaTarget("linux-64", None)], channel_urls={"conda-forge": str(tmp_path / "nope")})


@pytest.mark.parametrize("targets,needle", [
    ([], "at least one target"),
    ([CondaTarget("linux-64", None), CondaTarget("linux-64", "11.8")], "given twice"),
    ([CondaTarget("linux-s390x", None)], "unknown conda platform"),
    ([CondaTarget("osx-arm64", "12.6")], "macOS has no CUDA"),
    ([CondaTarget("linux-64", "eleven")], "not a CUDA version"),
])
def test_bad_targets(targets, needle):
    with pytest.raises(BadInput, match=needle):
        lock(TORCH_CPU, targets, solver="rattler")


# --------------------------------------------------------------------------- the conda-lock route


def test_conda_lock_route_writes_the_same_file(urls, fake_micromamba_dir, monkeypatch):
    """`conda-lock lock` (its real CLI, driving a micromamba stand-in) and rattler give byte-identical files:
    same packages, same hashes, and the content hash conda-lock itself computed."""
    import envforge.lock.conda as conda_mod

    monkeypatch.setenv("PATH", f"{fake_micromamba_dir}:{Path(sys.executable).parent}")
    calls = []
    real = conda_mod._lock_with_conda_lock

    def recorded(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(conda_mod, "_lock_with_conda_lock", recorded)
    targets = [CondaTarget("linux-64", "12.6"), CondaTarget("linux-aarch64", "12.6")]
    via_conda_lock = lock(TORCH_126, targets, channel_urls=urls)  # auto: micromamba is on PATH
    assert len(calls) == 1 and str(fake_micromamba_dir) in str(calls[0]), "auto did not take the conda-lock route"
    via_rattler = lock(TORCH_126, targets, channel_urls=urls, solver="rattler")
    assert len(calls) == 1
    assert via_conda_lock == via_rattler


def test_conda_lock_route_no_solution_is_a_lock_error(urls, fake_micromamba_dir, monkeypatch):
    monkeypatch.setenv("PATH", f"{fake_micromamba_dir}:{Path(sys.executable).parent}")
    with pytest.raises(LockError, match="__cuda"):
        lock(TORCH_GPU, [CondaTarget("linux-64", "10.2")], channel_urls=urls, solver="conda-lock")


def test_conda_lock_route_unreachable_channel(fake_micromamba_dir, monkeypatch, channel):
    monkeypatch.setenv("PATH", f"{fake_micromamba_dir}:{Path(sys.executable).parent}")
    url = f"http://127.0.0.1:{_closed_port()}/conda-forge"
    with pytest.raises(EnvironmentFailure, match="could not read the conda channel"):
        lock(TORCH_CPU, [CondaTarget("linux-64", None)], channel_urls={"conda-forge": url}, solver="conda-lock")


def test_conda_lock_route_needs_an_executable(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ToolNotFound, match="micromamba"):
        lock(TORCH_CPU, [CondaTarget("linux-64", None)], solver="conda-lock")


# --------------------------------------------------------------------------- imports


def test_missing_packages_raise_tool_not_found(monkeypatch):
    for module in ("conda_lock", "conda_lock.lockfile", "conda_lock.content_hash", "rattler"):
        monkeypatch.setitem(sys.modules, module, None)  # `import` of these now raises ImportError
    with pytest.raises(ToolNotFound) as info:
        lock(TORCH_CPU, [CondaTarget("linux-64", None)], solver="rattler")
    assert info.value.fix and "pip install py-rattler conda-lock" in info.value.fix
    assert info.value.exit_code == 3


def test_help_imports_neither_rattler_nor_conda_lock():
    code = (
        "import sys\n"
        "import envforge.lock.conda\n"
        "from envforge.cli import main\n"
        "try:\n"
        "    main(['--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('rattler', 'conda_lock', 'pydantic'))\n"
        "print(heavy)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.stdout.strip().splitlines()[-1] == "[]", proc.stdout + proc.stderr


# --------------------------------------------------------------------------- through the CLI


def test_envforge_lock_format_conda_end_to_end(channel: Path, tmp_path: Path) -> None:
    """`envforge lock --format conda`: resolve, then environment.yml + conda-lock.yml per variant."""
    import json
    import subprocess

    env = clean_environ({"RATTLER_CACHE_DIR": str(tmp_path / "rattler-cache")})
    cmd = [sys.executable, "-m", "envforge", "lock", "--format", "conda", "--no-detect", "--python", "3.11",
           "-f", "torch", "--version", "2.1.2", "--cuda", "11.8", "--cuda", "cpu",
           "--conda-channel", f"conda-forge={channel}", "-o", str(tmp_path / "out")]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == [
        "Dockerfile.cpu", "Dockerfile.cu118", "conda-lock-cpu.yml", "conda-lock-cu118.yml", "envforge-guard.py",
        "envforge.lock.json", "environment-cpu.yml", "environment-cu118.yml"]
    # A Dockerfile beside each conda lock: micromamba installs that lock, for the platforms it covers.
    gpu_dockerfile, cpu_dockerfile = (out / "Dockerfile.cu118").read_text(), (out / "Dockerfile.cpu").read_text()
    assert "COPY conda-lock-cu118.yml /tmp/envforge/conda-lock.yml" in gpu_dockerfile
    assert "ARG BASE_IMAGE=nvidia/cuda:11.8.0-base-ubuntu22.04" in gpu_dockerfile
    assert "COPY conda-lock-cpu.yml /tmp/envforge/conda-lock.yml" in cpu_dockerfile
    assert "ARG BASE_IMAGE=debian:bookworm-slim" in cpu_dockerfile
    assert "# The lock covers linux-64;" in cpu_dockerfile
    env_text = (out / "environment-cu118.yml").read_text()
    assert "pytorch ==2.1.2 cuda*" in env_text and "cuda-version 11.8.*" in env_text
    assert env_text.startswith("#\n# This file is autogenerated by envforge")
    gpu = by_name(parse((out / "conda-lock-cu118.yml").read_text(), tmp_path), "linux-64")
    cpu = by_name(parse((out / "conda-lock-cpu.yml").read_text(), tmp_path), "linux-64")
    assert gpu["pytorch"].build.startswith("cuda118") and cpu["pytorch"].build.startswith("cpu")
    manifest = json.loads((out / "envforge.lock.json").read_text())
    assert {t["file"] for t in manifest["targets"]} >= {"conda-lock-cu118.yml", "conda-lock-cpu.yml"}
    again = subprocess.run(cmd[:-2] + ["-o", str(out), "--check"], capture_output=True, text=True, env=env)
    assert again.returncode == 0, again.stdout + again.stderr


def test_dockerfile_for_a_conda_lock_directory(channel: Path, tmp_path: Path) -> None:
    """`envforge dockerfile --lock DIR` reads a conda lock's manifest and platforms; --format must agree."""
    import subprocess

    env = clean_environ({"RATTLER_CACHE_DIR": str(tmp_path / "rattler-cache")})
    out = tmp_path / "out"
    base = [sys.executable, "-m", "envforge"]
    proc = subprocess.run(base + ["lock", "--format", "conda", "--no-detect", "--python", "3.11", "-f", "torch",
                                  "--version", "2.1.2", "--cuda", "cpu", "--platform", "linux-64", "--platform",
                                  "linux-aarch64", "--conda-channel", f"conda-forge={channel}", "--no-dockerfile",
                                  "-o", str(out)], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    assert not (out / "Dockerfile").exists()
    proc = subprocess.run(base + ["dockerfile", "--lock", str(out), "--micromamba-image", "mirror/micromamba:2.6.1"],
                          capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    text = (out / "Dockerfile").read_text()
    assert "ARG MICROMAMBA_IMAGE=mirror/micromamba:2.6.1" in text
    assert "micromamba create --yes --prefix /opt/conda-env --file /tmp/envforge/conda-lock.yml" in text
    assert "# The lock covers linux-64, linux-aarch64;" in text and "linux/amd64 or linux/arm64" in text
    assert (out / "envforge-guard.py").exists()
    wrong = subprocess.run(base + ["dockerfile", "--lock", str(out), "--format", "pip"], capture_output=True,
                           text=True, env=env)
    assert wrong.returncode == 2 and "holds a conda lock" in wrong.stderr and "Traceback" not in wrong.stderr
    wheelhouse = subprocess.run(base + ["dockerfile", "--lock", str(out), "--wheelhouse", "wh"], capture_output=True,
                                text=True, env=env)
    assert wheelhouse.returncode == 2 and "--wheelhouse is for pip locks" in wheelhouse.stderr
