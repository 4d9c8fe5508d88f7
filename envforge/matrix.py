"""The only reader of matrices/*.toml: load, validate (schema and cross-file), dump canonically.

The schema is the row dataclasses in models.py: their fields are the allowed
keys, their annotations the types, their order the canonical key order.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence, get_type_hints

from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.version import InvalidVersion, Version

from . import models
from .errors import MatrixError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.9/3.10 only
    import tomli as tomllib

SUBJECTS: tuple[str, ...] = ("torch", "tensorflow", "jax", "cuda", "gpus", "images")

# file subject -> table name -> row type; order is the canonical table order.
TABLES: dict[str, dict[str, type]] = {
    "torch": {"release": models.ReleaseRow, "build": models.BuildRow, "companion": models.CompanionRow},
    "tensorflow": {"release": models.ReleaseRow, "build": models.BuildRow},
    "jax": {"release": models.ReleaseRow, "build": models.BuildRow},
    "cuda": {
        "series": models.SeriesRow,
        "toolkit": models.ToolkitRow,
        "targets": models.TargetsRow,
        "branch": models.BranchRow,
    },
    "gpus": {"gpu": models.GpuRow},
    "images": {"image": models.ImageRow},
}

# Keys of a shared row type that make no sense in some files.
FORBIDDEN: dict[tuple[str, str], frozenset[str]] = {
    ("torch", "release"): frozenset({"jaxlib"}),
    ("tensorflow", "release"): frozenset({"torchvision", "torchaudio", "jaxlib"}),
    ("jax", "release"): frozenset({"torchvision", "torchaudio"}),
    ("tensorflow", "build"): frozenset({"local"}),
    ("jax", "build"): frozenset({"local"}),
}

GPU_KINDS = ("datacenter", "workstation", "consumer", "embedded")
IMAGE_FLAVOURS = ("base", "runtime", "devel", "cudnn-runtime", "cudnn-devel")
_CC_RE = re.compile(r"^\d{1,2}\.\d$")


def _v(text: str) -> Version:
    return Version(text)


# Sort key (also the uniqueness key) per table.
SORT_KEYS: dict[str, Callable[[Any], tuple[Any, ...]]] = {
    "release": lambda r: (_v(r.version),),
    "build": lambda r: (_v(r.version), r.variant),
    "companion": lambda r: (r.package, _v(r.version)),
    "series": lambda r: (int(r.major),),
    "toolkit": lambda r: (_v(r.version),),
    "targets": lambda r: (_v(r.cuda),),
    "branch": lambda r: (int(r.driver),),
    "gpu": lambda r: (_v(r.arch), r.name),
    "image": lambda r: (_v(r.cuda),),
}


def _row_label(table: str, row: Any) -> str:
    key_fields = {
        "release": ("version",),
        "build": ("version", "variant"),
        "companion": ("package", "version"),
        "series": ("major",),
        "toolkit": ("version",),
        "targets": ("cuda",),
        "branch": ("driver",),
        "gpu": ("name",),
        "image": ("cuda",),
    }[table]
    if isinstance(row, dict):
        parts = [f"{k} {row.get(k)!s}" for k in key_fields if k in row]
    else:
        parts = [f"{k} {getattr(row, k)!s}" for k in key_fields]
    return ", ".join(parts)


# --------------------------------------------------------------------------- data location


def data_dir() -> Path:
    """Where matrices/ lives: $ENVFORGE_MATRICES, the installed copy, or the source checkout."""
    override = os.environ.get("ENVFORGE_MATRICES")
    if override:
        return Path(override)
    here = Path(__file__).resolve().parent
    installed = here / "_data" / "matrices"
    if installed.is_dir():
        return installed
    return here.parent / "matrices"


# --------------------------------------------------------------------------- schema


@dataclass(frozen=True)
class FieldSpec:
    name: str
    kind: str  # "str" | "int" | "float" | "bool" | "list"
    required: bool


@functools.lru_cache(maxsize=None)
def fields_of(row_type: type) -> tuple[FieldSpec, ...]:
    hints = get_type_hints(row_type)
    specs = []
    for f in dataclasses.fields(row_type):
        hint = hints[f.name]
        text = str(hint)
        if "tuple" in text:
            kind = "list"
        elif hint is bool:
            kind = "bool"
        elif "int" in text:
            kind = "int"
        elif "float" in text:
            kind = "float"
        else:
            kind = "str"
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        specs.append(FieldSpec(f.name, kind, required))
    return tuple(specs)


@dataclass(frozen=True)
class MatrixFile:
    """One parsed and schema-checked file."""

    subject: str
    path: Path
    meta: models.Meta
    tables: dict[str, tuple[Any, ...]]
    header_lines: dict[str, tuple[int, ...]]  # table -> line number of each [[table]] header

    def rows(self, table: str) -> tuple[Any, ...]:
        return self.tables.get(table, ())

    def where(self, table: str, index: int) -> str:
        lines = self.header_lines.get(table, ())
        line = f":{lines[index]}" if index < len(lines) else ""
        return f"{self.path}{line}"


class _Problems:
    def __init__(self) -> None:
        self.items: list[str] = []

    def add(self, where: str, message: str) -> None:
        self.items.append(f"{where}: {message}")


def _check_value(spec: FieldSpec, value: Any) -> str | None:
    if spec.kind == "list":
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            return f"'{spec.name}' must be a list of strings"
        return None
    if spec.kind == "bool":
        return None if isinstance(value, bool) else f"'{spec.name}' must be true or false"
    if spec.kind == "int":
        ok = isinstance(value, int) and not isinstance(value, bool)
        return None if ok else f"'{spec.name}' must be an integer"
    if spec.kind == "float":
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        return None if ok else f"'{spec.name}' must be a number"
    return None if isinstance(value, str) else f"'{spec.name}' must be a string"


def _build_row(row_type: type, raw: dict[str, Any]) -> Any:
    values: dict[str, Any] = {}
    for spec in fields_of(row_type):
        if spec.name not in raw:
            continue
        value = raw[spec.name]
        if spec.kind == "list":
            value = tuple(value)
        elif spec.kind == "float":
            value = float(value)
        values[spec.name] = value
    return row_type(**values)


def parse_file(path: Path, text: str | None = None, *, check_order: bool = True) -> tuple[MatrixFile, list[str]]:
    """Parse one file and check it against the schema. Returns the file and its problems.

    `check_order=False` skips the sorted/unique check (what `fmt` is there to fix).
    """
    problems = _Problems()
    subject = path.stem
    if subject not in TABLES:
        raise MatrixError(f"{path}: unknown matrix file; expected one of {', '.join(s + '.toml' for s in SUBJECTS)}")
    if text is None:
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise MatrixError(f"{path}: cannot read: {exc.strerror}") from exc
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise MatrixError(f"{path}: not valid TOML: {exc}") from exc

    header_lines: dict[str, list[int]] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        match = re.match(r"^\s*\[\[\s*([A-Za-z_]+)\s*\]\]", line)
        if match:
            header_lines.setdefault(match.group(1), []).append(number)

    tables_spec = TABLES[subject]
    for key in doc:
        if key != "meta" and key not in tables_spec:
            allowed = ", ".join(["meta", *tables_spec])
            problems.add(str(path), f"unknown table '{key}' (allowed: {allowed})")

    meta = _parse_meta(path, subject, doc.get("meta"), problems)
    source_ids = {sid for sid, _ in meta.sources}

    tables: dict[str, tuple[Any, ...]] = {}
    for table, row_type in tables_spec.items():
        raw_rows = doc.get(table, [])
        if not isinstance(raw_rows, list):
            problems.add(str(path), f"'{table}' must be an array of tables ([[{table}]])")
            continue
        specs = {s.name: s for s in fields_of(row_type)}
        forbidden = FORBIDDEN.get((subject, table), frozenset())
        rows = []
        lines = header_lines.get(table, [])
        for index, raw in enumerate(raw_rows):
            line = f":{lines[index]}" if index < len(lines) else ""
            where = f"{path}{line} [[{table}]] #{index + 1} ({_row_label(table, raw)})"
            bad = False
            for key, value in raw.items():
                if key not in specs or key in forbidden:
                    allowed = ", ".join(k for k in specs if k not in forbidden)
                    problems.add(where, f"unknown key '{key}' (allowed: {allowed})")
                    bad = True
                    continue
                message = _check_value(specs[key], value)
                if message:
                    problems.add(where, message)
                    bad = True
            for spec in specs.values():
                if spec.required and spec.name not in raw:
                    problems.add(where, f"missing required key '{spec.name}'")
                    bad = True
            sources = raw.get("source", [])
            if not sources:
                problems.add(where, "missing 'source': every row cites where it was read")
            for sid in sources if isinstance(sources, list) else []:
                if sid not in source_ids:
                    problems.add(where, f"source '{sid}' is not a key of [meta.sources]")
            for entry in raw.get("inferred", []) if isinstance(raw.get("inferred"), list) else []:
                name = entry.split(":", 1)[0].strip()
                if ":" not in entry or name not in raw:
                    problems.add(where, f"inferred entry {entry!r} must read 'field: why' naming a key of the row")
            if bad:
                continue
            try:
                row = _build_row(row_type, raw)
                _check_row_values(subject, table, row, where, problems)
            except (TypeError, ValueError) as exc:
                problems.add(where, str(exc))
                continue
            rows.append(row)
        tables[table] = tuple(rows)
        if check_order:
            _check_order(path, table, rows, lines, problems)

    result = MatrixFile(
        subject=subject,
        path=path,
        meta=meta,
        tables=tables,
        header_lines={k: tuple(v) for k, v in header_lines.items()},
    )
    return result, problems.items


def _parse_meta(path: Path, subject: str, raw: Any, problems: _Problems) -> models.Meta:
    where = f"{path} [meta]"
    if not isinstance(raw, dict):
        problems.add(str(path), "missing [meta] table (subject, read, sources)")
        return models.Meta(subject=subject, read="")
    allowed = {"subject", "read", "notes", "sources"}
    for key in raw:
        if key not in allowed:
            problems.add(where, f"unknown key '{key}' (allowed: {', '.join(sorted(allowed))})")
    if raw.get("subject") != subject:
        problems.add(where, f"subject must be {subject!r} (the file's stem), not {raw.get('subject')!r}")
    read = raw.get("read")
    if not isinstance(read, str) or not re.match(r"^\d{4}-\d{2}-\d{2}$", read):
        problems.add(where, "read must be the date the sources were read, as \"YYYY-MM-DD\"")
        read = str(read or "")
    notes = raw.get("notes", [])
    if not isinstance(notes, list) or not all(isinstance(n, str) for n in notes):
        problems.add(where, "notes must be a list of strings")
        notes = []
    sources = raw.get("sources", {})
    if not isinstance(sources, dict) or not sources or not all(isinstance(v, str) for v in sources.values()):
        problems.add(where, "[meta.sources] must map each source id to a URL or 'owner/repo path @ commit'")
        sources = {}
    return models.Meta(subject=subject, read=read, notes=tuple(notes), sources=tuple(sources.items()))


def _version_ok(text: str | None) -> bool:
    if text is None:
        return True
    try:
        Version(text)
    except InvalidVersion:
        return False
    return True


def _check_row_values(subject: str, table: str, row: Any, where: str, problems: _Problems) -> None:
    for name in ("version", "cuda", "rocm", "torchvision", "torchaudio", "jaxlib", "min_driver", "linux_driver",
                 "windows_driver", "min_driver_linux", "min_driver_windows"):
        value = getattr(row, name, None)
        if isinstance(value, str) and not _version_ok(value):
            problems.add(where, f"'{name}' = {value!r} is not a version")
    if table == "release":
        try:
            SpecifierSet(row.python)
        except InvalidSpecifier:
            problems.add(where, f"'python' = {row.python!r} is not a PEP 440 specifier set")
    if table == "build":
        for cc in (*row.arch, *row.ptx, *([row.min_arch] if row.min_arch else [])):
            if not _CC_RE.match(cc):
                problems.add(where, f"compute capability {cc!r} must read 'X.Y'")
        for platform in row.platforms:
            if platform not in models.PLATFORMS:
                problems.add(where, f"platform {platform!r} is not one of {', '.join(models.PLATFORMS)}")
        if not row.platforms:
            problems.add(where, "'platforms' must name at least one platform")
        if row.cuda and row.rocm:
            problems.add(where, "a build is CUDA or ROCm, not both")
        if list(row.arch) != sorted(row.arch, key=_v) or len(set(row.arch)) != len(row.arch):
            problems.add(where, "'arch' must be sorted and unique")
    if table == "gpu":
        if not _CC_RE.match(row.arch):
            problems.add(where, f"'arch' = {row.arch!r} must read 'X.Y'")
        if row.kind is not None and row.kind not in GPU_KINDS:
            problems.add(where, f"'kind' must be one of {', '.join(GPU_KINDS)}")
    if table == "image":
        for flavour in row.flavours:
            if flavour not in IMAGE_FLAVOURS:
                problems.add(where, f"flavour {flavour!r} is not one of {', '.join(IMAGE_FLAVOURS)}")
    if table == "targets":
        for cc in row.sass:
            if not _CC_RE.match(cc):
                problems.add(where, f"compute capability {cc!r} must read 'X.Y'")


def _check_order(path: Path, table: str, rows: Sequence[Any], lines: Sequence[int], problems: _Problems) -> None:
    key = SORT_KEYS[table]
    seen: dict[tuple[Any, ...], int] = {}
    previous = None
    for index, row in enumerate(rows):
        try:
            k = key(row)
        except (InvalidVersion, ValueError):
            continue
        line = f":{lines[index]}" if index < len(lines) else ""
        where = f"{path}{line} [[{table}]] #{index + 1} ({_row_label(table, row)})"
        if k in seen:
            problems.add(where, f"duplicate of row #{seen[k] + 1}")
        else:
            seen[k] = index
        if previous is not None and k < previous:
            problems.add(where, "rows out of order: sort by " + {
                "release": "version", "build": "version, then variant", "companion": "package, then version",
                "series": "major", "toolkit": "version", "targets": "cuda", "branch": "driver",
                "gpu": "arch, then name", "image": "cuda",
            }[table] + " (`envforge matrix fmt` rewrites the file sorted)")
        previous = k if previous is None or k > previous else previous


# --------------------------------------------------------------------------- dump (canonical form)


def _toml_str(value: str) -> str:
    return json.dumps(value, ensure_ascii=False)


def _toml_value(value: Any, indent: str = "") -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, str):
        return _toml_str(value)
    if isinstance(value, (list, tuple)):
        items = [_toml_value(v) for v in value]
        one_line = "[" + ", ".join(items) + "]"
        if len(one_line) <= 100:
            return one_line
        return "[\n" + "".join(f"  {item},\n" for item in items) + "]"
    raise TypeError(f"cannot write {value!r} as TOML")


def dump(mf: MatrixFile) -> str:
    """The canonical text of a file: meta first, tables in schema order, rows sorted, keys in field order."""
    out: list[str] = ["[meta]"]
    out.append(f"subject = {_toml_str(mf.meta.subject)}")
    out.append(f"read = {_toml_str(mf.meta.read)}")
    if mf.meta.notes:
        out.append(f"notes = {_toml_value(list(mf.meta.notes))}")
    out.append("")
    out.append("[meta.sources]")
    for sid, where in mf.meta.sources:
        key = sid if re.match(r"^[A-Za-z0-9_-]+$", sid) else _toml_str(sid)
        out.append(f"{key} = {_toml_str(where)}")
    for table, row_type in TABLES[mf.subject].items():
        rows = sorted(mf.rows(table), key=SORT_KEYS[table])
        for row in rows:
            out.append("")
            out.append(f"[[{table}]]")
            for spec in fields_of(row_type):
                value = getattr(row, spec.name)
                # CompanionRow.torch, the only "" default, is left out when empty
                if value is None or value == () or (spec.kind == "bool" and value is False) or (
                    spec.name == "torch" and value == ""
                ):
                    continue
                out.append(f"{spec.name} = {_toml_value(value)}")
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------- the Matrix


@dataclass(frozen=True, eq=False)  # identity equality and hash: the lru_caches below key on the instance
class Matrix:
    """All matrices files, loaded and typed. Query helpers answer compatibility questions."""

    files: dict[str, MatrixFile]

    # --- framework data
    def releases(self, framework: str) -> tuple[models.ReleaseRow, ...]:
        return self.files[framework].rows("release")

    def builds(self, framework: str) -> tuple[models.BuildRow, ...]:
        return self.files[framework].rows("build")

    def release(self, framework: str, version: str) -> models.ReleaseRow | None:
        return _release_index(self, framework).get(Version(version))

    def companions(self) -> tuple[models.CompanionRow, ...]:
        return self.files["torch"].rows("companion")

    # --- CUDA
    def series(self, major: str) -> models.SeriesRow | None:
        return next((s for s in self.files["cuda"].rows("series") if s.major == major), None)

    def toolkits(self, cuda_minor: str) -> tuple[models.ToolkitRow, ...]:
        """Toolkit releases of one CUDA minor (e.g. '12.4' -> 12.4.0, 12.4.1), oldest first."""
        return _toolkit_index(self).get(_minor(cuda_minor), ())

    def known_cuda(self) -> tuple[str, ...]:
        return tuple(_toolkit_index(self))

    def targets(self, cuda_minor: str) -> models.TargetsRow | None:
        want = _minor(cuda_minor)
        return next((t for t in self.files["cuda"].rows("targets") if _minor(t.cuda) == want), None)

    def branch_cuda(self, driver: str) -> str | None:
        """The CUDA version a driver reports, from its branch (the first component)."""
        branch = driver.split(".")[0]
        best = None
        for row in self.files["cuda"].rows("branch"):
            if int(row.driver) <= int(branch):
                best = row
        return best.cuda if best else None

    # --- GPUs and images
    def gpus(self) -> tuple[models.GpuRow, ...]:
        return self.files["gpus"].rows("gpu")

    def gpu(self, name: str) -> models.GpuRow | None:
        return _gpu_index(self).get(_norm_gpu(name))

    def known_arches(self) -> frozenset[str]:
        arches = {g.arch for g in self.gpus()}
        for t in self.files["cuda"].rows("targets"):
            arches.update(t.sass)
        return frozenset(arches)

    def images(self) -> tuple[models.ImageRow, ...]:
        return self.files["images"].rows("image")

    def read_date(self) -> str:
        """The newest `read` date across files: how fresh the knowledge is."""
        return max((mf.meta.read for mf in self.files.values()), default="")


@functools.lru_cache(maxsize=1024)
def _minor(version: str) -> str:
    major, minor = (Version(version).release + (0,))[:2]
    return f"{major}.{minor}"


@functools.lru_cache(maxsize=8)
def _toolkit_index(matrix: Matrix) -> dict[str, tuple[models.ToolkitRow, ...]]:
    index: dict[str, list[models.ToolkitRow]] = {}
    for row in matrix.files["cuda"].rows("toolkit"):
        index.setdefault(_minor(row.version), []).append(row)
    return {k: tuple(v) for k, v in index.items()}


def _norm_gpu(name: str) -> str:
    return re.sub(r"\s+", " ", name.strip().lower())


@functools.lru_cache(maxsize=8)
def _gpu_index(matrix: Matrix) -> dict[str, models.GpuRow]:
    index: dict[str, models.GpuRow] = {}
    for gpu in matrix.gpus():
        for key in (gpu.name, *gpu.aliases):
            index.setdefault(_norm_gpu(key), gpu)
    return index


@functools.lru_cache(maxsize=8)
def _release_index(matrix: Matrix, framework: str) -> dict[Version, models.ReleaseRow]:
    return {Version(r.version): r for r in matrix.releases(framework)}




def read_all(directory: Path | None = None, subjects: Iterable[str] = SUBJECTS) -> tuple[dict[str, MatrixFile], list[str]]:
    directory = directory or data_dir()
    files: dict[str, MatrixFile] = {}
    problems: list[str] = []
    for subject in subjects:
        path = directory / f"{subject}.toml"
        if not path.exists():
            problems.append(f"{path}: missing")
            continue
        mf, file_problems = parse_file(path)
        files[subject] = mf
        problems.extend(file_problems)
    return files, problems


class _LazyFiles(dict):  # type: ignore[type-arg]
    """subject -> MatrixFile, each file parsed and checked the first time it is asked for.

    A resolve for torch reads torch, cuda, gpus and images, not the 340 KB of
    jax and tensorflow data: half the start-up cost of a command.
    """

    def __init__(self, directory: Path) -> None:
        super().__init__()
        self.directory = directory

    def __missing__(self, subject: str) -> MatrixFile:
        if subject not in TABLES:
            raise KeyError(subject)
        path = self.directory / f"{subject}.toml"
        if not path.exists():
            raise MatrixError(f"{path}: missing", fix="reinstall envforge, or point ENVFORGE_MATRICES at a matrices/ directory")
        mf = _cache_read(path)
        if mf is not None:
            self[subject] = mf
            return mf
        mf, problems = parse_file(path)
        if problems:
            shown = "\n  ".join(problems[:20])
            more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
            raise MatrixError(
                f"the compatibility matrix {path} is invalid:\n  {shown}{more}",
                fix="run `envforge matrix validate` for the full list",
            )
        self[subject] = mf
        _cache_write(path, mf)
        return mf

    def values(self):  # type: ignore[override]
        return [self[s] for s in SUBJECTS]

    def items(self):  # type: ignore[override]
        return [(s, self[s]) for s in SUBJECTS]


# --- parse cache: a parsed, already validated file, pickled under the user's cache directory and
# keyed by the file's path, size and mtime and by envforge's version. It saves ~40 ms of TOML parsing
# per command; any problem reading it just means parsing again.


def _cache_path(path: Path) -> Path | None:
    import hashlib

    from . import __version__

    if os.environ.get("ENVFORGE_NO_CACHE"):
        return None
    base = os.environ.get("ENVFORGE_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "envforge")
    try:
        st = path.stat()
    except OSError:
        return None
    key = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}|{__version__}|{sys.version_info[:2]}"
    return Path(base) / f"{path.stem}-{hashlib.sha256(key.encode()).hexdigest()[:20]}.pickle"


def _cache_read(path: Path) -> MatrixFile | None:
    import pickle

    cache = _cache_path(path)
    if cache is None or not cache.exists():
        return None
    try:
        with cache.open("rb") as handle:
            mf = pickle.load(handle)
    except Exception:  # noqa: BLE001 - a stale or corrupt cache is only a miss
        return None
    return mf if isinstance(mf, MatrixFile) and mf.path == path else None


def _cache_write(path: Path, mf: MatrixFile) -> None:
    import pickle
    import tempfile

    cache = _cache_path(path)
    if cache is None:
        return
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        for old in cache.parent.glob(f"{path.stem}-*.pickle"):
            old.unlink(missing_ok=True)
        fd, tmp = tempfile.mkstemp(dir=cache.parent, suffix=".tmp")
        with os.fdopen(fd, "wb") as handle:
            pickle.dump(mf, handle, protocol=pickle.HIGHEST_PROTOCOL)
        os.replace(tmp, cache)
    except OSError:
        pass  # a read-only home: no cache, still correct


@functools.lru_cache(maxsize=4)
def _load_cached(directory: str) -> Matrix:
    path = Path(directory)
    if not path.is_dir():
        raise MatrixError(f"{path}: no such matrices directory",
                          fix="reinstall envforge, or point ENVFORGE_MATRICES at a matrices/ directory")
    return Matrix(_LazyFiles(path))


def load(directory: Path | None = None) -> Matrix:
    """The matrices (cached). Each file is parsed and schema-checked when first used; a broken
    file raises MatrixError naming file and row."""
    return _load_cached(str(directory or data_dir()))


def validate(directory: Path | None = None) -> list[str]:
    """Every schema and cross-file problem, each naming file and row. Empty means valid."""
    directory = directory or data_dir()
    files, problems = read_all(directory)
    for subject, mf in files.items():
        text = mf.path.read_text(encoding="utf-8")
        if not problems and dump(mf) != text:
            problems.append(f"{mf.path}: not in canonical form (run `envforge matrix fmt {mf.path}`)")
    if all(s in files for s in SUBJECTS):
        problems.extend(_cross_checks(Matrix(files)))
    return problems


def _cross_checks(matrix: Matrix) -> Iterator[str]:
    cuda_minors = set(matrix.known_cuda())
    arches = matrix.known_arches()
    for framework in models.FRAMEWORKS:
        mf = matrix.files[framework]
        release_versions = {Version(r.version) for r in mf.rows("release")}
        built = set()
        for index, build in enumerate(mf.rows("build")):
            where = f"{mf.where('build', index)} [[build]] ({_row_label('build', build)})"
            built.add(Version(build.version))
            if Version(build.version) not in release_versions:
                yield f"{where}: no [[release]] row for version {build.version}"
            if build.cuda:
                minor = ".".join(build.cuda.split(".")[:2])
                if minor not in cuda_minors:
                    yield f"{where}: CUDA {build.cuda} has no [[toolkit]] row in cuda.toml"
            if build.variant != "cpu" and not build.cuda and not build.rocm:
                yield f"{where}: a GPU variant must name its cuda or rocm version"
            for cc in (*build.arch, *build.ptx, *([build.min_arch] if build.min_arch else [])):
                if cc not in arches:
                    yield f"{where}: compute capability {cc} is not a known one (gpus.toml arch or cuda.toml targets)"
        defaults: dict[str, int] = {}
        for build in mf.rows("build"):
            if build.pypi_default:
                defaults[build.version] = defaults.get(build.version, 0) + 1
        for version, count in defaults.items():
            if count > 1:
                yield f"{mf.path}: release {version} has {count} builds marked pypi_default (at most one)"
        for index, release in enumerate(mf.rows("release")):
            where = f"{mf.where('release', index)} [[release]] ({_row_label('release', release)})"
            if Version(release.version) not in built:
                yield f"{where}: no [[build]] rows for this release"
    torch = matrix.files["torch"]
    companion_versions = {(c.package, c.version) for c in torch.rows("companion")}
    for index, release in enumerate(torch.rows("release")):
        where = f"{torch.where('release', index)} [[release]] ({_row_label('release', release)})"
        for package in ("torchvision", "torchaudio"):
            version = getattr(release, package)
            if version and (package, version) not in companion_versions:
                yield f"{where}: {package} {version} has no [[companion]] row (does it exist?)"
    cuda_file = matrix.files["cuda"]
    for index, targets in enumerate(cuda_file.rows("targets")):
        if ".".join(targets.cuda.split(".")[:2]) not in cuda_minors:
            yield f"{cuda_file.where('targets', index)} [[targets]] (cuda {targets.cuda}): no [[toolkit]] row"
    images = matrix.files["images"]
    for index, image in enumerate(images.rows("image")):
        if ".".join(image.cuda.split(".")[:2]) not in cuda_minors:
            yield f"{images.where('image', index)} [[image]] (cuda {image.cuda}): no [[toolkit]] row in cuda.toml"
    gpus = matrix.files["gpus"]
    seen_names: dict[str, str] = {}
    for index, gpu in enumerate(gpus.rows("gpu")):
        for key in (gpu.name, *gpu.aliases):
            norm = _norm_gpu(key)
            if norm in seen_names and seen_names[norm] != gpu.name:
                yield f"{gpus.where('gpu', index)} [[gpu]] (name {gpu.name}): alias {key!r} also names {seen_names[norm]!r}"
            seen_names.setdefault(norm, gpu.name)


def fmt(path: Path) -> bool:
    """Rewrite one file in canonical form (atomically). Returns True if it changed."""
    mf, problems = parse_file(path, check_order=False)
    if problems:
        raise MatrixError(f"{path} has problems; fix them before formatting:\n  " + "\n  ".join(problems[:20]))
    text = path.read_text(encoding="utf-8")
    new = dump(mf)
    if new == text:
        return False
    from .fsutil import write_atomic

    write_atomic(path, new)
    return True


# --------------------------------------------------------------------------- queries for `envforge matrix`


def query(
    matrix: Matrix,
    framework: str,
    version: SpecifierSet | None = None,
    cuda: Any = None,
    python: str | None = None,
    platform: str | None = None,
) -> list[tuple[models.ReleaseRow, models.BuildRow]]:
    """Builds of a framework filtered by version spec, CUDA request (specs.CudaRequest), Python, platform."""
    out = []
    for build in matrix.builds(framework):
        if version is not None and not version.contains(build.version, prereleases=True):
            continue
        release = matrix.release(framework, build.version)
        if release is None:
            continue
        if cuda is not None and cuda.kind != "auto":
            if cuda.kind == "cpu" and build.variant != "cpu":
                continue
            if cuda.kind == "cuda" and not (build.cuda and cuda.matches_cuda(build.cuda)):
                continue
            if cuda.kind == "rocm" and not (build.rocm and cuda.matches_rocm(build.rocm)):
                continue
        if python is not None and not SpecifierSet(release.python).contains(python + ".0", prereleases=True):
            continue
        if platform is not None and platform not in build.platforms:
            continue
        out.append((release, build))
    return out


def build_doc(matrix: Matrix, framework: str, release: models.ReleaseRow, build: models.BuildRow) -> dict[str, Any]:
    """A build as one JSON object: every fact with its provenance."""
    meta = matrix.files[framework].meta
    doc: dict[str, Any] = {"framework": framework, "version": build.version, "variant": build.variant}
    for spec in fields_of(models.BuildRow):
        if spec.name in ("version", "variant", "source", "inferred", "note"):
            continue
        value = getattr(build, spec.name)
        doc[spec.name] = list(value) if isinstance(value, tuple) else value
    doc["python"] = release.python
    companions = {k: getattr(release, k) for k in ("torchvision", "torchaudio", "jaxlib") if getattr(release, k)}
    if companions:
        doc["companions"] = companions
    doc["source"] = {sid: meta.source(sid) for sid in (*release.source, *build.source)}
    doc["inferred"] = list(release.inferred) + list(build.inferred)
    notes = [n for n in (release.note, build.note) if n]
    if notes:
        doc["note"] = " ".join(notes)
    return doc
