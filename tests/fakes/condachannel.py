"""A local conda channel of tiny generated packages, modelled on conda-forge's real metadata.

`build_channel(dest)` writes one valid `.tar.bz2` conda package per row of PACKAGES
(an `info/index.json`, an empty `info/paths.json`, nothing else) into
dest/<subdir>/, then indexes the channel for real with py-rattler's indexer
(`rattler.index.index_fs`, the library behind `rattler-index`), which reads every
archive and writes each subdir's repodata.json with md5, sha256 and size. The
archives are byte-for-byte reproducible (fixed mtimes, sorted JSON), so their
hashes are the same in every session.

What is modelled on conda-forge, and where it was read:

* build strings and build numbers of pytorch 2.1.2 (conda-forge/pytorch-cpu-feedstock
  recipe/meta.yaml @ ef00600f: "cuda{{ cuda_compiler_version | replace('.', '') }}_py{{ CONDA_PY }}h{{ PKG_HASH }}_{{ PKG_BUILDNUM }}",
  "cpu_{{ blas_impl }}_py{{ CONDA_PY }}h..."; build 4, +200 for CUDA, +100 for mkl; linux-64 CUDA builds are mkl
  builds; "skip: true  # [cuda_compiler_version == "11.8" and aarch64]" and "skip: true  # [win]"), and its
  run requirements that decide which build is chosen: `__cuda` ("avoid that people without GPUs needlessly
  download ~0.5-1GB"), filelock, python. A real build of this family: pytorch 2.3.1 cuda118_py311h0047a46_300.
* `cuda-version >=X.Y,<X+1` on CUDA builds: conda-forge's CUDA recipe pattern
  pin_compatible('cuda-version', min_pin='x.x', max_pin='x').
* `cuda-version` itself: noarch generic, build 3, run_constrained `__cuda >=<major>` (the major version only)
  and `cudatoolkit X.Y|X.Y.*` (conda-forge/cuda-version-feedstock recipe/meta.yaml @ d548d47).
* python's `__glibc >=2.17,<3.0.a0` on Linux (conda-forge's default sysroot is glibc 2.17) and `__osx >=11.0`
  on osx-arm64.

Left out on purpose: libtorch, sympy, networkx, jinja2, fsspec, cudnn, nccl, magma, mkl and the other real
run dependencies, and the cpu_mkl builds; hashes in build strings are derived from the row, not conda-build's.
"""

from __future__ import annotations

import asyncio
import bz2
import hashlib
import io
import json
import tarfile
from dataclasses import dataclass
from pathlib import Path

SUBDIRS = ("noarch", "linux-64", "linux-aarch64", "osx-arm64", "win-64")
TIMESTAMP_MS = 1706140800000  # 2024-01-25, when conda-forge's pytorch 2.1.2 was merged (8c4d9b3a)

LINUX_GLIBC = "__glibc >=2.17,<3.0.a0"


@dataclass(frozen=True)
class FakePackage:
    subdir: str
    name: str
    version: str
    build: str  # the build string, without the file extension
    build_number: int
    depends: tuple[str, ...] = ()
    constrains: tuple[str, ...] = ()
    noarch: str | None = None
    # Files the package installs: (path, content), content "-> TARGET" for a symlink. Empty for the
    # solver tests; the docker test's packages carry a few (see payload_packages).
    payload: tuple[tuple[str, str], ...] = ()

    @property
    def filename(self) -> str:
        return f"{self.name}-{self.version}-{self.build}.tar.bz2"

    def index_json(self) -> dict[str, object]:
        doc: dict[str, object] = {
            "arch": None,
            "build": self.build,
            "build_number": self.build_number,
            "constrains": list(self.constrains),
            "depends": list(self.depends),
            "license": "BSD-3-Clause",
            "name": self.name,
            "platform": None,
            "subdir": self.subdir,
            "timestamp": TIMESTAMP_MS,
            "version": self.version,
        }
        if self.noarch:
            doc["noarch"] = self.noarch
        return doc


def _hash(*parts: str) -> str:
    """A 7-hex-digit stand-in for conda-build's PKG_HASH, stable per row."""
    return "h" + hashlib.sha1("|".join(parts).encode()).hexdigest()[:7]


def _python(subdir: str, version: str) -> FakePackage:
    depends = (LINUX_GLIBC,) if subdir.startswith("linux-") else ("__osx >=11.0",) if subdir == "osx-arm64" else ()
    return FakePackage(subdir, "python", version, f"{_hash('python', version, subdir)}_0_cpython", 0, depends)


def _pytorch(subdir: str, accelerator: str, py: str, build_number: int) -> FakePackage:
    """pytorch 2.1.2 for `accelerator` ("cuda118", "cuda120", "cpu_generic") and Python `py` ("311")."""
    nxt = f"3.{int(py[1:]) + 1}"
    depends = ["filelock", f"python >=3.{py[1:]},<{nxt}.0a0"]
    if accelerator.startswith("cuda"):
        major, minor = accelerator[4:-1], accelerator[-1]
        depends += ["__cuda", f"cuda-version >={major}.{minor},<{int(major) + 1}"]
    if subdir.startswith("linux-"):
        depends.append(LINUX_GLIBC)
    elif subdir == "osx-arm64":
        depends.append("__osx >=11.0")
    build = f"{accelerator}_py{py}{_hash('pytorch', '2.1.2', accelerator, py, subdir)}_{build_number}"
    return FakePackage(subdir, "pytorch", "2.1.2", build, build_number, tuple(sorted(depends)))


def _numpy(subdir: str, py: str) -> FakePackage:
    nxt = f"3.{int(py[1:]) + 1}"
    depends = [f"python >=3.{py[1:]},<{nxt}.0a0"]
    if subdir.startswith("linux-"):
        depends.append(LINUX_GLIBC)
    return FakePackage(subdir, "numpy", "1.26.4", f"py{py}{_hash('numpy', py, subdir)}_0", 0, tuple(depends))


def _cuda_version(version: str, build: str) -> FakePackage:
    major = version.split(".")[0]
    return FakePackage(
        "noarch", "cuda-version", version, build, 3,
        constrains=(f"__cuda >={major}", f"cudatoolkit {version}|{version}.*"), noarch="generic",
    )


PACKAGES: tuple[FakePackage, ...] = (
    *(_python(subdir, v) for subdir in SUBDIRS[1:] for v in ("3.10.14", "3.11.9", "3.12.4")),
    _cuda_version("11.8", "h70ddcb2_3"),
    _cuda_version("12.0", "hffde075_3"),
    _cuda_version("12.6", "h7480c83_3"),
    # linux-64: CUDA builds are mkl builds (4 + 200 + 100); CPU generic is build 4.
    _pytorch("linux-64", "cuda118", "311", 304),
    _pytorch("linux-64", "cuda120", "311", 304),
    _pytorch("linux-64", "cpu_generic", "311", 4),
    _pytorch("linux-64", "cpu_generic", "312", 4),
    # linux-aarch64: no CUDA 11.8 build (skipped in the recipe since 2024/04), generic BLAS (4 + 200).
    _pytorch("linux-aarch64", "cuda120", "311", 204),
    _pytorch("linux-aarch64", "cpu_generic", "311", 4),
    _pytorch("osx-arm64", "cpu_generic", "311", 4),
    # win-64: none (skip: true  # [win] for 2.1.2).
    *(_numpy(subdir, "311") for subdir in SUBDIRS[1:]),
    _numpy("linux-64", "312"),
    FakePackage("noarch", "filelock", "3.13.1", "pyhd8ed1ab_0", 0, ("python >=3.7",), noarch="python"),
)


def _archive(package: FakePackage) -> bytes:
    """A reproducible .tar.bz2 conda package: info/index.json, info/paths.json and the payload, if any."""
    paths = [{"_path": path, "path_type": "softlink" if content.startswith("-> ") else "hardlink"}
             for path, content in package.payload]
    members = {
        "info/index.json": json.dumps(package.index_json(), indent=2, sort_keys=True).encode(),
        "info/paths.json": json.dumps({"paths": paths, "paths_version": 1}, sort_keys=True).encode(),
    }
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, content in [*members.items(), *package.payload]:
            info = tarfile.TarInfo(name)
            info.mtime = 0
            info.mode = 0o644
            info.uname = info.gname = "root"
            if isinstance(content, str) and content.startswith("-> "):
                info.type, info.linkname, info.mode = tarfile.SYMTYPE, content[3:], 0o777
                tar.addfile(info)
                continue
            data = content if isinstance(content, bytes) else content.encode()
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return bz2.compress(raw.getvalue(), compresslevel=9)


def payload_packages(python: str = "3.11") -> tuple[FakePackage, ...]:
    """PACKAGES, with linux-64's python X.Y and CPU pytorch carrying files, for a docker build test.

    The "python" package is a virtual environment over the image's own /usr/bin/python3 (a bin/python
    symlink and a pyvenv.cfg), so the environment has a working interpreter with its own site-packages;
    "pytorch" installs a torch module that only knows its version, an activate.d script and an env_vars.d
    file. Stand-ins, not conda-forge's packages.
    """
    import dataclasses

    site = f"lib/python{python}/site-packages"
    out = []
    for package in PACKAGES:
        if package.subdir == "linux-64" and package.name == "python" and package.version.startswith(python + "."):
            package = dataclasses.replace(package, payload=(
                ("bin/python", "-> /usr/bin/python3"),
                ("pyvenv.cfg", f"home = /usr/bin\ninclude-system-site-packages = false\nversion = {python}\n")))
        elif (package.subdir == "linux-64" and package.name == "pytorch" and "cpu" in package.build
              and f"py{python.replace('.', '')}" in package.build):
            package = dataclasses.replace(package, payload=(
                (f"{site}/torch/__init__.py", f'__version__ = "{package.version}"\n'),
                # what real packages ship for activation (e.g. gdal's GDAL_DATA), for the image's guard to apply
                ("etc/conda/activate.d/envforge-test.sh", 'export ENVFORGE_TEST_ACTIVATED="sourced:$CONDA_PREFIX"\n'),
                ("etc/conda/env_vars.d/envforge-test.json", '{"envforge_test_var": "from-env-vars-d"}\n')))
        out.append(package)
    return tuple(out)


def build_channel(dest: Path, packages: tuple[FakePackage, ...] = PACKAGES) -> Path:
    """Write the packages into dest/<subdir>/ and index them with rattler; return dest."""
    from rattler.index import index_fs

    dest = Path(dest)
    for subdir in SUBDIRS:
        (dest / subdir).mkdir(parents=True, exist_ok=True)
    for package in packages:
        (dest / package.subdir / package.filename).write_bytes(_archive(package))
    # Plain repodata.json only, as conda-index writes it and every conda client reads it.
    asyncio.run(index_fs(dest, write_zst=False, write_shards=False))
    return dest


def repodata(channel: Path, subdir: str) -> dict[str, dict[str, object]]:
    """filename -> record of one subdir's repodata.json (what the indexer wrote)."""
    doc = json.loads((Path(channel) / subdir / "repodata.json").read_text(encoding="utf-8"))
    return {**doc.get("packages", {}), **doc.get("packages.conda", {})}


# --------------------------------------------------------------------------- a stand-in for micromamba
#
# No conda, mamba or micromamba can be installed here (conda channels are unreachable),
# so conda-lock's subprocess route is exercised against this script: it answers the two
# calls conda-lock makes of a micromamba (`--version`, and `create --dry-run --json
# --override-channels --channel ... SPECS` with CONDA_SUBDIR and CONDA_OVERRIDE_* set)
# by solving with rattler, and prints what micromamba prints: a FETCH action per package
# (its repodata record plus url/channel/fn), or on failure a JSON error and exit 1 with
# micromamba's wording ("Could not solve for environment specs", "Download error").
# It tests envforge's driving of conda-lock, not a conda solver.

FAKE_MICROMAMBA = r'''
import asyncio, json, os, sys

def virtual_packages(rattler, subdir, fake_repos):
    env = os.environ
    found = {}
    if not subdir.startswith("win-"):
        found["__unix"] = ("0", "0")
    # conda-lock passes its virtual packages as a channel of package records (and, from 4.0.3 on,
    # also as CONDA_OVERRIDE_* variables, which win here as they do in micromamba).
    for repo in fake_repos:
        for part in ("noarch", subdir):
            path = os.path.join(repo[len("file://"):], part, "repodata.json")
            if os.path.exists(path):
                with open(path) as handle:
                    for record in json.load(handle).get("packages", {}).values():
                        found[record["name"]] = (record["version"], record.get("build_string") or record["build"])
    for name in ("cuda", "glibc", "linux", "osx", "win"):
        value = env.get("CONDA_OVERRIDE_" + name.upper(), "")
        if value:
            found["__" + name] = (value, "0")
    if env.get("CONDA_OVERRIDE_ARCHSPEC"):
        found["__archspec"] = ("1", env["CONDA_OVERRIDE_ARCHSPEC"])
    build_string = getattr(rattler, "BuildString", None)
    return [rattler.GenericVirtualPackage(rattler.PackageName(n), rattler.Version(v),
                                          build_string(b) if build_string else b)
            for n, (v, b) in sorted(found.items())]

def main(argv):
    if argv[:1] == ["--version"]:
        print("2.0.5")
        return 0
    if argv[:1] != ["create"] or "--dry-run" not in argv:
        print("fake micromamba: unsupported call " + " ".join(argv), file=sys.stderr)
        return 2
    import rattler
    import rattler.exceptions
    channels, fake_repos, specs, i = [], [], [], 1
    while i < len(argv):
        arg = argv[i]
        if arg in ("--channel", "-c", "--prefix", "-p"):
            if arg in ("--channel", "-c"):
                value = argv[i + 1]
                (fake_repos if "conda-lock-fake-repodata" in value else channels).append(value)
            i += 2
            continue
        if not arg.startswith("-"):
            specs.append(arg)
        i += 1
    subdir = os.environ["CONDA_SUBDIR"]
    try:
        records = asyncio.run(rattler.solve(
            sources=[rattler.Channel(c) for c in channels], specs=specs, platforms=[subdir, "noarch"],
            virtual_packages=virtual_packages(rattler, subdir, fake_repos), gateway=rattler.Gateway()))
    except rattler.exceptions.SolverError as exc:
        print(json.dumps({"success": False, "message": "Could not solve for environment specs\n" + str(exc)}))
        print("error    libmamba Could not solve for environment specs\n" + str(exc), file=sys.stderr)
        return 1
    except Exception as exc:
        print(json.dumps({"success": False, "message": "Download error: " + str(exc)}))
        print("critical libmamba Download error: " + str(exc), file=sys.stderr)
        return 1
    fetch = []
    for r in records:
        fetch.append({
            "name": r.name.normalized, "version": str(r.version), "build": str(r.build),
            "build_number": r.build_number, "depends": list(r.depends), "constrains": list(r.constrains),
            "md5": r.md5.hex() if r.md5 else None, "sha256": r.sha256.hex() if r.sha256 else None,
            "subdir": str(r.subdir), "url": str(r.url), "fn": r.file_name, "channel": str(r.channel),
            "timestamp": 0,
        })
    print(json.dumps({"success": True, "dry_run": True, "actions": {"FETCH": fetch, "LINK": [], "PREFIX": "x"}}))
    return 0

code = main(sys.argv[1:])
# Seen here: py-rattler 0.28 segfaults now and then (4 in 100 runs) at interpreter exit after a solve,
# with the output already complete. A stand-in must not be flakier than what it stands in for.
sys.stdout.flush()
sys.stderr.flush()
os._exit(code)
'''


def write_fake_micromamba(bin_dir: Path) -> Path:
    """bin_dir/micromamba: the stand-in above, run by this interpreter (which has py-rattler)."""
    import sys

    bin_dir = Path(bin_dir)
    bin_dir.mkdir(parents=True, exist_ok=True)
    script = bin_dir / "micromamba"
    script.write_text(f"#!{sys.executable}\n{FAKE_MICROMAMBA.lstrip()}", encoding="utf-8")
    script.chmod(0o755)
    return script
