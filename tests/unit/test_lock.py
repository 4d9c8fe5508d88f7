"""The pure parts of `envforge lock`: inputs, index plan, file names, headers."""

from __future__ import annotations

from pathlib import Path

from envforge.lock import pip as pip_lock
from envforge.lock.interface import IndexPlan, pins
from envforge.models import HostFacts, Request
from envforge.render import header
from envforge.resolve import resolve


def selected(matrix, **kw):
    res = resolve(matrix, HostFacts(source="none", constrained=False), Request(python="3.11", **kw))
    assert res.ok, res.to_json()
    return res.selected


def test_companions_follow_the_variant(matrix) -> None:
    cu118 = selected(matrix, framework="torch", version="2.1.2", cuda="11.8")
    assert pip_lock.framework_requirements(cu118, True) == [
        "torch==2.1.2+cu118", "torchvision==0.16.2+cu118", "torchaudio==2.1.2+cu118"]
    default = selected(matrix, framework="torch", version="2.7.1")
    assert pip_lock.framework_requirements(default, True) == [
        "torch==2.7.1", "torchvision==0.22.1", "torchaudio==2.7.1"]
    assert pip_lock.framework_requirements(default, False) == ["torch==2.7.1"]


def test_extras_select_the_cuda_build(matrix) -> None:
    tf = selected(matrix, framework="tensorflow", version="2.15.1", cuda="12")
    assert tf.requirements == ("tensorflow[and-cuda]==2.15.1",)
    jax = selected(matrix, framework="jax", version="0.4.30", cuda="12")
    assert jax.requirements == ("jax[cuda12]==0.4.30",)


def test_index_plan_keeps_the_pytorch_index_to_torch_packages(matrix) -> None:
    options = pip_lock.LockOptions(torch_index="http://127.0.0.1:8000/whl", index_url="http://127.0.0.1:8000/pypi")
    plan = pip_lock.index_plan(selected(matrix, framework="torch", version="2.1.2", cuda="11.8"), options)
    assert plan.framework_index == "http://127.0.0.1:8000/whl/cu118"
    assert plan.default_index == "http://127.0.0.1:8000/pypi"
    assert "torch" in plan.framework_packages and "numpy" not in plan.framework_packages
    assert plan.pip_lines() == ["--index-url http://127.0.0.1:8000/pypi",
                                "--extra-index-url http://127.0.0.1:8000/whl/cu118"]
    default = pip_lock.index_plan(selected(matrix, framework="torch", version="2.7.1"), pip_lock.LockOptions())
    assert default.framework_index is None and default.pip_lines() == ["--index-url https://pypi.org/simple"]


def test_file_names(matrix) -> None:
    sel = selected(matrix, framework="torch", version="2.1.2", cuda="11.8")
    assert pip_lock.target_file(sel, "linux-64", "pip", False, False) == "requirements.lock"
    assert pip_lock.target_file(sel, "linux-64", "pip", True, False) == "requirements-cu118.lock"
    assert pip_lock.target_file(sel, "linux-64", "pip", True, True) == "requirements-cu118-linux-64.lock"
    assert pip_lock.target_file(sel, "linux-64", "pylock", False, False) == "pylock.toml"
    assert pip_lock.target_file(sel, "linux-64", "pylock", True, False) == "pylock.cu118.toml"


def test_header_names_version_matrices_and_command_and_has_no_timestamp() -> None:
    text = header("envforge lock -f torch --cuda 11.8", "2026-11-21", ["target: torch"])
    assert "envforge 0.1.0" in text and "2026-11-21" in text and "envforge lock -f torch --cuda 11.8" in text
    assert header("x", "d") == header("x", "d")
    assert all(line.startswith("#") for line in text.splitlines())


def test_pins_reads_a_requirements_lock() -> None:
    text = "foo-bar==1.0 \\\n    --hash=sha256:00\ntorch==2.1.2+cu118 ; sys_platform == 'linux'\n# c==3\n"
    assert pins(text) == {"foo-bar": "1.0", "torch": "2.1.2+cu118"}


def test_pip_tools_refuses_a_foreign_target(tmp_path: Path) -> None:
    import pytest

    from envforge.errors import BadInput
    from envforge.lock.interface import CompileSpec
    from envforge.lock.piptools import PipToolsLocker

    spec = CompileSpec(requirements=(), inputs=(), python="3.7", platform="linux-64", indexes=IndexPlan(), workdir=tmp_path)
    with pytest.raises(BadInput) as info:
        PipToolsLocker().compile(spec)
    assert "--resolver uv" in (info.value.fix or "")
