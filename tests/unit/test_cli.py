"""The command-line contract: exit codes, one JSON document with --json, no tracebacks."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from click.testing import CliRunner

from envforge.cli import cli


def invoke(*args: str):
    runner = CliRunner()
    return runner.invoke(cli, list(args))


def cli_main(args: list[str]) -> tuple[int, str, str]:
    proc = subprocess.run([sys.executable, "-m", "envforge", *args], capture_output=True, text=True)
    return proc.returncode, proc.stdout, proc.stderr


@pytest.mark.parametrize("args,needle", [
    (["resolve", "-f", "mxnet"], "torch, tensorflow, jax"),
    (["resolve", "-f", "torch", "--version", "2.x"], "PEP 440"),
    (["resolve", "-f", "torch", "--cuda", "11.9"], "Known CUDA versions"),
    (["resolve", "-f", "torch", "--version", "0.4"], "no torch release matches"),
    (["matrix", "mxnet"], "envforge knows"),
    (["resolve", "-f", "torch", "--gpu", "Voodoo 5"], "unknown GPU"),
    (["resolve", "-f", "torch", "--arch", "eight"], "compute capability"),
    (["resolve", "-f", "torch", "--driver", "new"], "driver version"),
    (["resolve"], "which framework"),
])
def test_bad_input_exits_2_with_a_message_and_no_traceback(args, needle) -> None:
    code, out, err = cli_main(args)
    assert code == 2, (out, err)
    assert needle in err
    assert "Traceback" not in err + out


def test_bad_input_with_json_prints_an_error_document() -> None:
    code, out, err = cli_main(["resolve", "-f", "torch", "--cuda", "11.9", "--json"])
    assert code == 2
    doc = json.loads(out)
    assert doc["ok"] is False and doc["error"]["code"] == "bad_input"


def test_unknown_option_is_a_usage_error() -> None:
    code, out, err = cli_main(["resolve", "--frobnicate"])
    assert code == 2 and "No such option" in err


def test_matrix_lists_every_variant_of_a_release_as_json() -> None:
    result = invoke("matrix", "torch", "--version", "2.3.1", "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    variants = {b["variant"] for b in doc["builds"]}
    assert {"cpu", "cu118", "cu121"} <= variants
    for build in doc["builds"]:
        assert build["version"] == "2.3.1"
        assert build["source"] and all(build["source"].values())
        if build["cuda"]:
            assert build["cudnn"] and build["arch"] and build["index_url"]


def test_matrix_validate_passes() -> None:
    result = invoke("matrix", "validate")
    assert result.exit_code == 0, result.output


def test_help_imports_nothing_heavy() -> None:
    code = (
        "import sys, runpy\n"
        "sys.argv = ['envforge', '--help']\n"
        "try:\n    runpy.run_module('envforge', run_name='__main__')\n"
        "except SystemExit:\n    pass\n"
        "heavy = ['packaging', 'pynvml', 'docker', 'jinja2', 'piptools', 'tomllib', 'envforge.matrix', 'conda_lock']\n"
        "print('HEAVY:' + ','.join(m for m in heavy if m in sys.modules))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    loaded = [line for line in proc.stdout.splitlines() if line.startswith("HEAVY:")]
    assert loaded == ["HEAVY:"]
