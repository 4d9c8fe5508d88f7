"""The knowledge base: schema, canonical form, cross-file consistency, and errors that name file and row."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from envforge import matrix as matrix_mod
from envforge.errors import MatrixError

ROOT = Path(__file__).resolve().parents[2]
MATRICES = ROOT / "matrices"
MAIN_TABLE = {"torch": "build", "tensorflow": "build", "jax": "build", "cuda": "toolkit", "gpus": "gpu",
              "images": "image"}


@pytest.mark.parametrize("subject", matrix_mod.SUBJECTS)
def test_file_round_trips_through_load_and_dump(subject: str) -> None:
    path = MATRICES / f"{subject}.toml"
    text = path.read_text(encoding="utf-8")
    parsed, problems = matrix_mod.parse_file(path)
    assert problems == []
    assert matrix_mod.dump(parsed) == text


def test_shipped_matrices_validate() -> None:
    assert matrix_mod.validate(MATRICES) == []


@pytest.fixture()
def broken_copy(tmp_path: Path) -> Path:
    target = tmp_path / "matrices"
    shutil.copytree(MATRICES, target)
    return target


def _header_lines(text: str, table: str) -> list[int]:
    return [i for i, line in enumerate(text.splitlines()) if line.strip() == f"[[{table}]]"]


@pytest.mark.parametrize("subject", matrix_mod.SUBJECTS)
def test_unknown_key_is_reported_with_file_and_row(broken_copy: Path, subject: str) -> None:
    path = broken_copy / f"{subject}.toml"
    lines = path.read_text().splitlines()
    table = MAIN_TABLE[subject]
    header = _header_lines("\n".join(lines), table)[2]
    lines.insert(header + 1, 'colour = "blue"')
    path.write_text("\n".join(lines) + "\n")
    problems = matrix_mod.validate(broken_copy)
    hits = [p for p in problems if "unknown key 'colour'" in p]
    assert len(hits) == 1, problems
    assert hits[0].startswith(f"{path}:{header + 1} [[{table}]] #3 (")


@pytest.mark.parametrize("subject", matrix_mod.SUBJECTS)
def test_unsorted_rows_are_reported(broken_copy: Path, subject: str) -> None:
    path = broken_copy / f"{subject}.toml"
    text = path.read_text()
    table = MAIN_TABLE[subject]
    blocks = re.split(rf"(?m)^(?=\[\[{table}\]\]$)", text)
    # blocks[0] is everything before the first row; move the last row of this table to the front.
    rows = blocks[1:]
    last = rows[-1]
    tail = ""
    nxt = re.search(r"(?m)^\[\[(?!" + table + r"\]\])", last)
    if nxt:  # the last block runs into the next table: keep that part in place
        last, tail = last[: nxt.start()], last[nxt.start():]
    if not last.endswith("\n\n"):
        last = last.rstrip("\n") + "\n\n"
    new = blocks[0] + last + "".join(rows[:-1]).rstrip("\n") + "\n" + ("\n" + tail if tail else "")
    path.write_text(new)
    problems = matrix_mod.validate(broken_copy)
    assert any("rows out of order" in p and str(path) in p for p in problems), problems
    # fmt repairs it
    assert matrix_mod.fmt(path) is True
    assert path.read_text() == (MATRICES / f"{subject}.toml").read_text()


@pytest.mark.parametrize("subject,table,field,value,message", [
    ("torch", "build", "cuda", "10.9", "CUDA 10.9 has no [[toolkit]] row"),
    ("tensorflow", "build", "cuda", "10.9", "CUDA 10.9 has no [[toolkit]] row"),
    ("jax", "build", "cuda", "10.9", "CUDA 10.9 has no [[toolkit]] row"),
    ("images", "image", "cuda", "10.9.0", "(cuda 10.9.0): no [[toolkit]] row"),
    ("cuda", "targets", "cuda", "10.9", "(cuda 10.9): no [[toolkit]] row"),
    ("gpus", "gpu", "arch", "x.y", "'arch' = 'x.y' must read 'X.Y'"),
])
def test_dangling_references_are_reported(
    broken_copy: Path, subject: str, table: str, field: str, value: str, message: str
) -> None:
    path = broken_copy / f"{subject}.toml"
    text = path.read_text()
    # change the value in the last row of the table that has the field
    pattern = re.compile(rf'(?m)^{field} = ".*"$')
    starts = _header_lines(text, table)
    lines = text.splitlines()
    for start in reversed(starts):
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("[")), len(lines))
        hit = next((i for i in range(start + 1, end) if pattern.match(lines[i])), None)
        if hit is not None:
            lines[hit] = f'{field} = "{value}"'
            break
    else:
        pytest.skip(f"no {table} row with {field}")
    path.write_text("\n".join(lines) + "\n")
    problems = matrix_mod.validate(broken_copy)
    assert any(message in p and str(path) in p for p in problems), problems


def test_load_refuses_a_broken_directory(broken_copy: Path) -> None:
    (broken_copy / "gpus.toml").write_text("[meta]\nsubject = 'gpus'\n[[gpu]]\nname = 1\n")
    data = matrix_mod.load(broken_copy)  # files are read when first used
    assert data.releases("torch")
    with pytest.raises(MatrixError) as info:
        data.gpus()
    assert "gpus.toml" in info.value.message


def test_every_row_cites_a_source_and_inferred_names_a_field(matrix) -> None:
    for mf in matrix.files.values():
        for rows in mf.tables.values():
            for row in rows:
                assert row.source, (mf.path, row)
                for entry in row.inferred:
                    assert ":" in entry


def test_every_cuda_series_used_by_a_build_has_a_floor(matrix) -> None:
    for framework in ("torch", "tensorflow", "jax"):
        for build in matrix.builds(framework):
            if build.cuda and int(build.cuda.split(".")[0]) >= 11:
                assert matrix.series(build.cuda.split(".")[0]) is not None, build


def test_each_nvml_name_and_alias_finds_its_gpu(matrix) -> None:
    for gpu in matrix.gpus():
        assert matrix.gpu(gpu.name) is gpu
        assert matrix.gpu(gpu.name.upper()) is gpu
        for alias in gpu.aliases:
            assert matrix.gpu(alias) is gpu


def test_parse_cache_is_keyed_on_the_file_and_survives_corruption(tmp_path: Path, monkeypatch) -> None:
    data = tmp_path / "matrices"
    shutil.copytree(MATRICES, data)
    cache = tmp_path / "cache"
    monkeypatch.setenv("ENVFORGE_CACHE_DIR", str(cache))
    first = matrix_mod._LazyFiles(data)["gpus"]
    written = list(cache.glob("gpus-*.pickle"))
    assert len(written) == 1
    assert matrix_mod._LazyFiles(data)["gpus"] == first  # served from the cache
    # an edited file is a different key: the edit is seen, the old entry replaced
    path = data / "gpus.toml"
    path.write_text(path.read_text().replace('family = "Ampere"', 'family = "Ampère"', 1))
    assert any(g.family == "Ampère" for g in matrix_mod._LazyFiles(data)["gpus"].rows("gpu"))
    assert len(list(cache.glob("gpus-*.pickle"))) == 1
    # a corrupt entry is only a miss
    for entry in cache.glob("gpus-*.pickle"):
        entry.write_bytes(b"not a pickle")
    assert any(g.family == "Ampère" for g in matrix_mod._LazyFiles(data)["gpus"].rows("gpu"))
