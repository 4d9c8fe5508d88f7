"""The pure parts of `envforge check`: parsers (each keeps file and line), target specs, the rules, the renderers."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
from packaging.specifiers import SpecifierSet

from envforge import check as C
from envforge.errors import BadInput


def write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip("\n"))
    return root


def project(matrix, root: Path, python: str = "3.11", platform: str = "linux-64") -> C.Project:
    return C.Project(root, matrix, C.Env(python, platform))


def findings(matrix, root: Path, *targets: C.Target) -> list[tuple[str, int, str, str]]:
    report = C.check(root, list(targets), matrix)
    return [(f.file, f.line, f.code, f.severity) for f in report.findings]


def target(matrix, driver: str | None, *gpus: str, name: str = "t") -> C.Target:
    return C.make_target(matrix, name, driver, gpus)


# --------------------------------------------------------------------------- requirements files


def test_requirements_keep_lines_through_continuations_hashes_comments_and_includes(matrix, tmp_path: Path) -> None:
    write(tmp_path, {
        "requirements.txt": """
            # comment line
            -r base.txt
            --extra-index-url https://download.pytorch.org/whl/cu118
            torch==2.1.2 \\
                --hash=sha256:00 \\
                --hash=sha256:11
            requests>=2  # not a framework
            torchaudio==2.1.2 ; sys_platform == "darwin"
            torchaudio==2.1.2+cu118 ; sys_platform == "linux"
        """,
        "base.txt": "numpy\ntorchvision==0.16.2\n",
    })
    parsed = project(matrix, tmp_path).requirements(tmp_path / "requirements.txt")
    got = [(p.loc.file, p.loc.line, p.name, p.spec, p.local, p.index_variant) for p in parsed.pins]
    assert got == [
        ("base.txt", 2, "torchvision", "==0.16.2", None, "cu118"),
        ("requirements.txt", 4, "torch", "==2.1.2", None, "cu118"),
        ("requirements.txt", 9, "torchaudio", "==2.1.2", "cu118", "cu118"),
    ]


def test_requirement_urls_variables_and_errors(matrix, tmp_path: Path) -> None:
    write(tmp_path, {"requirements.txt": """
        torch @ https://download.pytorch.org/whl/cu121/torch-2.1.2%2Bcu121-cp311-cp311-linux_x86_64.whl
        https://download.pytorch.org/whl/cu121/torchvision-0.16.2%2Bcu121-cp311-cp311-linux_x86_64.whl
        tensorflow==${TF_VERSION}
        -e ./src/mypkg
        jax[cuda12]==0.4.30
    """})
    proj = project(matrix, tmp_path)
    pins = proj.requirements(tmp_path / "requirements.txt").pins
    assert [(p.name, p.spec, p.local, p.extras) for p in pins] == [
        ("torch", "==2.1.2", "cu121", ()), ("torchvision", "==0.16.2", "cu121", ()), ("jax", "==0.4.30", None, ("cuda12",))]
    assert any("TF_VERSION" in n for n in proj.notes)
    (tmp_path / "bad.txt").write_text("torch==2.1.2\ntorch>=>2\n")
    with pytest.raises(BadInput, match=r"bad.txt:2: cannot read the requirement"):
        project(matrix, tmp_path).requirements(tmp_path / "bad.txt")
    (tmp_path / "missing.txt").write_text("-r nowhere.txt\n")
    with pytest.raises(BadInput, match=r"missing.txt:1: -r nowhere.txt: no such file"):
        project(matrix, tmp_path).requirements(tmp_path / "missing.txt")


# --------------------------------------------------------------------------- pyproject.toml and pylock.toml


def test_pyproject_lines_groups_and_uv_sources(matrix, tmp_path: Path) -> None:
    write(tmp_path, {"pyproject.toml": """
        [project]
        name = "x"
        requires-python = ">=3.10"
        dependencies = [
          "numpy",
          "torch==2.5.1",
        ]
        [project.optional-dependencies]
        cu124 = ["torchvision==0.20.1"]
        [dependency-groups]
        dev = ["pytest"]
        [tool.uv.sources]
        torch = [{ index = "cu124", marker = "sys_platform == 'linux'" }]
        torchvision = [{ index = "cu124", extra = "cu124" }]
        [[tool.uv.index]]
        name = "cu124"
        url = "https://download.pytorch.org/whl/cu124"
        explicit = true
    """})
    contexts, python = project(matrix, tmp_path).pyproject(tmp_path / "pyproject.toml")
    assert [(f.loc.line, f.spec, f.kind) for f in python] == [(3, ">=3.10", "spec")]
    assert [c.label for c in contexts] == ["pyproject.toml [project] dependencies",
                                           "pyproject.toml [project.optional-dependencies] cu124"]
    assert [(p.name, p.loc.line, p.index_variant) for p in contexts[1].pins] == [
        ("torch", 6, "cu124"), ("torchvision", 9, "cu124")]
    mac = C.Project(tmp_path, matrix, C.Env("3.11", "osx-arm64")).pyproject(tmp_path / "pyproject.toml")[0]
    assert mac[0].pins[0].index_variant is None  # the marker keeps the cu124 index to Linux


def test_pylock_packages_with_lines(matrix, tmp_path: Path) -> None:
    write(tmp_path, {"pylock.toml": """
        lock-version = "1.0"
        requires-python = ">=3.11"
        [[packages]]
        name = "numpy"
        version = "2.0.0"
        [[packages]]
        name = "torch"
        version = "2.4.1+cu118"
        index = "https://download.pytorch.org/whl/cu118"
    """})
    ctx, python = project(matrix, tmp_path).pylock(tmp_path / "pylock.toml")
    assert [(p.name, p.spec, p.local, p.index_variant, p.loc.line) for p in ctx.pins] == [
        ("torch", "==2.4.1", "cu118", "cu118", 7)]
    assert python[0].spec == ">=3.11"


# --------------------------------------------------------------------------- conda


@pytest.mark.parametrize("spec,expected", [
    ("pytorch=2.1.2", ("pytorch", "2.1.2*", "")),
    ("pytorch==2.1.2", ("pytorch", "==2.1.2", "")),
    ("pytorch::pytorch=2.1.2=py3.11_cuda11.8_cudnn8.7.0_0", ("pytorch", "2.1.2*", "py3.11_cuda11.8_cudnn8.7.0_0")),
    ("pytorch 2.1.2 cuda118*", ("pytorch", "2.1.2", "cuda118*")),
    ("pytorch >=2.1,<2.2", ("pytorch", ">=2.1,<2.2", "")),
    ("numpy", ("numpy", "", "")),
])
def test_conda_match_specs(spec: str, expected: tuple[str, str, str]) -> None:
    assert C._conda_split(spec) == expected


@pytest.mark.parametrize("conda,pep440", [
    ("2.1.2*", "==2.1.2.*"), ("2.1.*", "==2.1.*"), ("==2.1.2", "==2.1.2"), ("2.1.2", "==2.1.2"),
    (">=2.1,<2.2", "<2.2,>=2.1"), ("", ""), ("2.1|2.2", None),
])
def test_conda_versions_as_pep440(conda: str, pep440: str | None) -> None:
    assert C.conda_to_pep440(conda) == pep440


def test_conda_environment_reads_cuda_python_and_pip_section(matrix, tmp_path: Path) -> None:
    write(tmp_path, {"environment.yml": """
        channels: [pytorch, nvidia]
        dependencies:
          - python=3.10
          - pytorch=2.1.2
          - pytorch-cuda=11.8
          - pip:
            - --extra-index-url https://download.pytorch.org/whl/cu118
            - torchaudio==2.1.2
    """})
    ctx = project(matrix, tmp_path).conda_environment(tmp_path / "environment.yml")
    assert [(f.version, f.loc.line, f.kind) for f in ctx.python] == [("3.10", 3, "conda")]
    by_name = {p.name: p for p in ctx.pins}
    assert by_name["torch"].conda_cuda == "11.8" and by_name["torch"].loc.line == 4
    assert by_name["torchaudio"].manager == "pip" and by_name["torchaudio"].loc.line == 8
    (tmp_path / "broken.yml").write_text("dependencies:\n  - [unclosed\n")
    with pytest.raises(BadInput, match="broken.yml:3: not valid YAML"):
        C._yaml_compose((tmp_path / "broken.yml").read_text(), "broken.yml")


# --------------------------------------------------------------------------- Dockerfiles


def test_dockerfile_stages_args_env_continuations_and_locations(matrix, tmp_path: Path) -> None:
    write(tmp_path, {
        "Dockerfile": """
            ARG CUDA=12.1.1
            ARG UBUNTU=22.04
            FROM nvidia/cuda:${CUDA}-cudnn8-devel-ubuntu${UBUNTU} AS build
            # a comment
            RUN apt-get update && \\
                apt-get install -y python3.11 python3-pip
            ENV TORCH=2.1.2
            RUN python3.11 -m pip install --no-cache-dir \\
                  "torch==${TORCH}" \\
                  -r requirements.txt
            FROM nvidia/cuda:${CUDA}-runtime-ubuntu${UBUNTU} AS runtime
            ENV CUDA_VERSION 12.1.1
            COPY --from=build /usr/local/lib/python3.11 /usr/local/lib/python3.11
            RUN ["uv", "pip", "install", "--system", "torchaudio==2.1.2"]
        """,
        "requirements.txt": "torchvision==0.16.2\n",
    })
    reader = C.DockerfileReader(project(matrix, tmp_path), tmp_path / "Dockerfile")
    contexts = reader.read()
    build, runtime = reader.stages
    assert build.image.ref == "nvidia/cuda:12.1.1-cudnn8-devel-ubuntu22.04" and build.image.flavour == "cudnn-devel"
    assert [(f.version, f.loc.line) for f in build.python] == [("3.11", 6)]
    assert [(p.name, p.loc.file, p.loc.line) for p in build.pins] == [
        ("torch", "Dockerfile", 9), ("torchvision", "requirements.txt", 1)]
    assert runtime.cuda_env == (C.Loc("Dockerfile", 12), "12.1.1")
    # the runtime stage copies the build stage's site-packages: its pins come along
    assert [p.name for p in contexts[1].pins] == ["torch", "torchvision", "torchaudio"]


def test_dockerfile_heredoc_conda_and_ubuntu_python(matrix, tmp_path: Path) -> None:
    write(tmp_path, {"Dockerfile": """
        FROM ubuntu:24.04
        RUN <<EOF
        apt-get update
        apt-get install -y python3 python3-pip
        pip install --break-system-packages tensorflow==2.15.0
        EOF
        RUN conda install -y -c pytorch pytorch=2.1.2 pytorch-cuda=12.1 python=3.11
    """})
    reader = C.DockerfileReader(project(matrix, tmp_path), tmp_path / "Dockerfile")
    reader.read()
    stage = reader.stages[0]
    assert [(f.version, f.loc.line, f.kind) for f in stage.python] == [("3.12", 4, "apt"), ("3.11", 7, "conda")]
    assert [(p.name, p.manager, p.loc.line, p.conda_cuda) for p in stage.pins] == [
        ("tensorflow", "pip", 5, None), ("torch", "conda", 7, "12.1")]


@pytest.mark.parametrize("ref,kind,cuda,flavour,cudnn,known", [
    ("nvidia/cuda:11.8.0-cudnn8-runtime-ubuntu22.04", "cuda", "11.8.0", "cudnn-runtime", "8", True),
    ("nvcr.io/nvidia/cuda:12.4.1-cudnn-devel-ubuntu22.04", "cuda", "12.4.1", "cudnn-devel", "9", True),
    ("nvidia/cuda:12.4.1-cudnn9-runtime-ubuntu22.04", "cuda", "12.4.1", "cudnn-runtime", "9", False),
    ("nvidia/cuda:12.1.1-base-ubuntu24.04", "cuda", "12.1.1", "base", None, False),
    ("python:3.12-slim-bookworm", "python", None, None, None, True),
    ("ubuntu:jammy", "os", None, None, None, True),
    ("ghcr.io/acme/base:1.0", "unknown", None, None, None, True),
])
def test_images(matrix, ref, kind, cuda, flavour, cudnn, known) -> None:
    image = C.parse_image(ref, C.Loc("Dockerfile", 1), matrix)
    assert (image.kind, image.cuda, image.flavour, image.cudnn, image.known) == (kind, cuda, flavour, cudnn, known)


def test_an_image_tag_that_does_not_exist_gets_the_nearest_that_does(matrix, tmp_path: Path) -> None:
    write(tmp_path, {"Dockerfile": "FROM nvidia/cuda:12.4.1-cudnn9-runtime-ubuntu22.04\n"})
    report = C.check(tmp_path, [], matrix)
    assert [(f.code, f.severity) for f in report.findings] == [("not_published", "warning")]
    assert report.findings[0].fix == "use nvidia/cuda:12.4.1-cudnn-runtime-ubuntu22.04"


# --------------------------------------------------------------------------- targets


def test_target_specs(matrix, tmp_path: Path) -> None:
    t = C.parse_target('driver=535.104.05,gpu="NVIDIA A100-SXM4-80GB",gpu=T4,name=mixed', matrix)
    assert t.name == "mixed" and t.host.driver == "535.104.05" and t.host.driver_cuda == "12.2"
    assert [(g.name, g.arch) for g in t.host.gpus] == [("NVIDIA A100-SXM4-80GB", "8.0"), ("Tesla T4", "7.5")]
    assert C.parse_target("arch=6.1,platform=linux-aarch64", matrix, 3).describe() == \
        "target 3 (GPU with compute capability 6.1; linux-aarch64)"
    (tmp_path / "fleet.toml").write_text('[[machine]]\nname = "a"\ndriver = "470.82.01"\ngpu = "Tesla T4"\n')
    assert [t.describe() for t in C.load_fleet(tmp_path / "fleet.toml", matrix)] == ["a (Tesla T4; driver 470.82.01)"]
    (tmp_path / "bad.toml").write_text('[[machine]]\nname = "a"\ndrivers = "470"\n')
    with pytest.raises(BadInput, match="unknown keys drivers"):
        C.load_fleet(tmp_path / "bad.toml", matrix)


# --------------------------------------------------------------------------- rules


@pytest.mark.parametrize("package", ["torchvision", "torchaudio"])
def test_every_torch_release_with_its_own_companion_is_clean_and_with_another_is_not(matrix, tmp_path, package) -> None:
    """Generated from the matrices: each release's own companion passes; the next release's is a mismatch."""
    releases = [r for r in matrix.releases("torch") if getattr(r, package)]
    checked = 0
    for release, following in zip(releases, releases[1:]):
        mine, theirs = getattr(release, package), getattr(following, package)
        row = next(c for c in matrix.companions() if c.package == package and c.version == theirs)
        if mine == theirs or (row.torch and SpecifierSet(row.torch).contains(release.version)):
            continue  # e.g. torchvision 0.29.1 declares torch>=2.14.0
        (tmp_path / "requirements.txt").write_text(f"torch=={release.version}\n{package}=={mine}\n")
        assert findings(matrix, tmp_path) == [], release.version
        (tmp_path / "requirements.txt").write_text(f"torch=={release.version}\n{package}=={theirs}\n")
        got = findings(matrix, tmp_path)
        assert got == [("requirements.txt", 2, "companion_mismatch", "error")], (release.version, theirs)
        checked += 1
    assert checked >= 20, checked  # 37 torchvision / 33 torchaudio pairs today


def test_companion_of_another_variant(matrix, tmp_path: Path) -> None:
    (tmp_path / "requirements.txt").write_text("torch==2.1.2+cu118\ntorchvision==0.16.2+cu121\n")
    report = C.check(tmp_path, [], matrix)
    assert [(f.line, f.code) for f in report.findings] == [(2, "companion_mismatch")]
    assert report.findings[0].fix.startswith("pin torchvision==0.16.2+cu118")


def test_requires_python_partly_outside_is_a_warning_with_a_cap(matrix, tmp_path: Path) -> None:
    write(tmp_path, {"pyproject.toml": """
        [project]
        name = "x"
        requires-python = ">=3.9"
        dependencies = ["torch==2.1.2"]
    """})
    report = C.check(tmp_path, [], matrix)
    assert [(f.line, f.code, f.severity) for f in report.findings] == [(3, "python_unsupported", "warning")]
    assert report.findings[0].fix.startswith("cap requires-python to <3.12")


def test_an_unpinned_framework_is_judged_as_the_newest_release(matrix, tmp_path: Path) -> None:
    (tmp_path / "requirements.txt").write_text("torch\n")
    newest = matrix.releases("torch")[-1].version
    report = C.check(tmp_path, [target(matrix, "580.95.05", "Tesla P100-PCIE-16GB")], matrix)
    assert [(f.line, f.code) for f in report.findings] == [(1, "arch_unsupported")]
    assert f"torch {newest}" in report.findings[0].message


def test_a_cuda_build_is_fine_without_targets_and_cpu_builds_never_fail_a_target(matrix, tmp_path: Path) -> None:
    (tmp_path / "requirements.txt").write_text("torch==2.1.2+cpu\n")
    assert findings(matrix, tmp_path, target(matrix, "390.157", "Tesla K80")) == []


def test_a_target_without_gpus_still_checks_the_driver(matrix, tmp_path: Path) -> None:
    (tmp_path / "requirements.txt").write_text("jax[cuda12]==0.4.30\n")
    report = C.check(tmp_path, [target(matrix, "520.61.05")], matrix)
    assert [(f.code, f.line) for f in report.findings] == [("driver_too_old", 1)]
    assert "525.60.13" in report.findings[0].fix


def test_bundled_cuda_in_an_image_of_another_major(matrix, tmp_path: Path) -> None:
    write(tmp_path, {"Dockerfile": """
        FROM nvidia/cuda:11.8.0-devel-ubuntu22.04
        RUN pip install torch==2.4.1
    """})
    report = C.check(tmp_path, [], matrix)
    assert [(f.line, f.code, f.severity) for f in report.findings] == [(1, "cuda_mismatch", "error")]
    assert report.findings[0].fix == "use FROM nvidia/cuda:12.1.1-base-ubuntu22.04"
    (tmp_path / "Dockerfile").write_text("FROM nvidia/cuda:11.8.0-runtime-ubuntu22.04\nRUN pip install torch==2.4.1\n")
    assert findings(matrix, tmp_path) == [("Dockerfile", 1, "cuda_mismatch", "warning")]


def test_system_cuda_builds_need_cudnn_of_the_right_major(matrix, tmp_path: Path) -> None:
    (tmp_path / "Dockerfile").write_text("FROM nvidia/cuda:12.2.2-runtime-ubuntu22.04\nRUN pip install tensorflow==2.15.0\n")
    assert findings(matrix, tmp_path) == [("Dockerfile", 1, "cuda_mismatch", "error")]
    (tmp_path / "Dockerfile").write_text(
        "FROM nvidia/cuda:12.4.1-cudnn-runtime-ubuntu22.04\nRUN pip install tensorflow==2.15.0\n")
    assert findings(matrix, tmp_path) == [("Dockerfile", 1, "cudnn_mismatch", "error")]
    (tmp_path / "Dockerfile").write_text(
        "FROM nvidia/cuda:12.2.2-cudnn8-runtime-ubuntu22.04\nRUN pip install tensorflow==2.15.0\n")
    assert findings(matrix, tmp_path) == []


def test_exclude_and_discovery(matrix, tmp_path: Path) -> None:
    write(tmp_path, {
        "requirements/base.txt": "torch==9.9.9\n",
        "docker/gpu.Dockerfile": "FROM python:3.11\n",
        ".venv/lib/requirements.txt": "torch==9.9.9\n",
        "MANIFEST.in": "include README\n",
        "docs/environment-docs.yml": "dependencies: []\n",
    })
    kinds = [(k, p.relative_to(tmp_path).as_posix()) for k, p in C.discover(tmp_path)]
    assert kinds == [("dockerfile", "docker/gpu.Dockerfile"), ("conda-env", "docs/environment-docs.yml"),
                     ("requirements", "requirements/base.txt")]
    assert [k for k, _ in C.discover(tmp_path, ["requirements"])] == ["dockerfile", "conda-env"]


# --------------------------------------------------------------------------- renderers


def _report(tmp_path: Path, message: str) -> C.Report:
    finding = C.Finding("dir, with: odd%name/requirements.txt", 3, "driver_too_old", "error", message, "upgrade")
    return C.Report(tmp_path, [finding], ["requirements.txt"], [], [])


def test_github_escaping(tmp_path: Path) -> None:
    out = C.render_github(_report(tmp_path, "100% broken:\nsecond line, really\r"), cwd=tmp_path)
    first = out.splitlines()[0]
    assert first == ("::error file=dir%2C with%3A odd%25name/requirements.txt,line=3,title=envforge driver_too_old"
                     "::100%25 broken:%0Asecond line, really%0D. Fix: upgrade")


def test_sarif_paths_and_levels(tmp_path: Path) -> None:
    doc = json.loads(C.render_sarif(_report(tmp_path, "m"), cwd=tmp_path))
    result = doc["runs"][0]["results"][0]
    assert result["locations"][0]["physicalLocation"]["artifactLocation"] == {
        "uri": "dir, with: odd%name/requirements.txt", "uriBaseId": "%SRCROOT%"}
    assert result["level"] == "error" and result["message"]["text"] == "m. Fix: upgrade"
    assert doc["runs"][0]["originalUriBaseIds"]["%SRCROOT%"]["uri"].endswith("/")
