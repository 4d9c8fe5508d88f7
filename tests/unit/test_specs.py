"""Parsing of what users type: every bad value is a BadInput (exit 2) listing what is valid."""

from __future__ import annotations

import pytest
from packaging.specifiers import SpecifierSet

from envforge import specs
from envforge.errors import BadInput


@pytest.mark.parametrize("text,inside,outside", [
    ("2.1", ["2.1.0", "2.1.2"], ["2.2.0", "2.0.1"]),
    ("2.1.*", ["2.1.2"], ["2.2.0"]),
    ("2.4.1", ["2.4.1"], ["2.4.0", "2.4.10"]),
    (">=2.3,<2.6", ["2.3.0", "2.5.1"], ["2.6.0", "2.2.2"]),
    ("2", ["2.0.0", "2.9.1"], ["1.13.1"]),
    (None, ["1.8.0", "2.15.0"], []),
])
def test_version_spec(text, inside, outside) -> None:
    spec = specs.parse_version_spec(text)
    assert isinstance(spec, SpecifierSet)
    assert all(spec.contains(v) for v in inside)
    assert not any(spec.contains(v) for v in outside)


@pytest.mark.parametrize("text", ["2.x", ">>2", "latest", "=2.1"])
def test_bad_version_spec(text) -> None:
    with pytest.raises(BadInput) as info:
        specs.parse_version_spec(text)
    assert info.value.exit_code == 2
    assert "PEP 440" in info.value.message


@pytest.mark.parametrize("text,kind,version", [
    ("auto", "auto", None), (None, "auto", None), ("cpu", "cpu", None), ("11.8", "cuda", "11.8"),
    ("12", "cuda", "12"), ("cu121", "cuda", "12.1"), ("cu118", "cuda", "11.8"), ("12.4.1", "cuda", "12.4"),
    ("rocm6.0", "rocm", "6.0"), ("rocm5.4.2", "rocm", "5.4.2"), ("cuda-12.6", "cuda", "12.6"),
])
def test_cuda(text, kind, version) -> None:
    parsed = specs.parse_cuda(text, ["11.8", "12.1", "12.4", "12.6"])
    assert (parsed.kind, parsed.version) == (kind, version)


def test_unknown_cuda_lists_the_known_ones() -> None:
    with pytest.raises(BadInput) as info:
        specs.parse_cuda("11.9", ["11.8", "12.1"])
    assert "11.8, 12.1" in info.value.message


def test_unreadable_cuda() -> None:
    with pytest.raises(BadInput) as info:
        specs.parse_cuda("eleven", ["11.8"])
    assert "rocmX.Y" in info.value.message


def test_cuda_major_matches_any_minor() -> None:
    req = specs.parse_cuda("12", ["12.1"])
    assert req.matches_cuda("12.1") and req.matches_cuda("12.8") and not req.matches_cuda("11.8")


@pytest.mark.parametrize("text,expected", [("8.0", "8.0"), ("sm_80", "8.0"), ("86", "8.6"), ("12.0", "12.0"),
                                           ("sm_120", "12.0")])
def test_arch(text, expected) -> None:
    assert specs.parse_arch(text) == expected


@pytest.mark.parametrize("bad", ["eight", "8", "sm_8x"])
def test_bad_arch(bad) -> None:
    with pytest.raises(BadInput):
        specs.parse_arch(bad)


def test_framework_aliases_and_unknown() -> None:
    assert specs.parse_framework("PyTorch") == "torch"
    assert specs.parse_framework("tf") == "tensorflow"
    with pytest.raises(BadInput) as info:
        specs.parse_framework("mxnet")
    assert "torch, tensorflow, jax" in info.value.message


def test_platform_and_python() -> None:
    assert specs.parse_platform("linux") == "linux-64"
    assert specs.parse_python("cp311") == "3.11"
    assert specs.parse_python("3.12.1") == "3.12"
    with pytest.raises(BadInput):
        specs.parse_platform("solaris")
    with pytest.raises(BadInput):
        specs.parse_python("three")
    with pytest.raises(BadInput):
        specs.parse_driver("latest")
