#!/usr/bin/python3
"""A stand-in for micromamba's `create --yes --prefix P --file X-lock.yml` (Docker Hub, GitHub and
conda channels are unreachable here, so the real executable cannot be had). Standard library only.

What it copies from micromamba 2.x (mamba-org/mamba @ 03564bf, libmamba/src/core/):
* a file is a conda-lock lock only when its name ends in -lock.yml / -lock.yaml (env_lockfile.cpp);
* it installs the entries of category "main" for this machine's platform and noarch (transaction.cpp,
  create_explicit_transaction_from_lockfile), without solving;
* no entries for the platform: a warning, an empty environment, exit 0 (same function);
* each download is checked against the lock's sha256 (package_fetcher.cpp, PackageFetcher::validate).
It extracts the archives (.tar.bz2 only) and writes conda-meta/<name>-<version>-<build>.json; no link
scripts, no path rewriting. Only the line layout conda-lock's writer produces is read.
"""

import hashlib
import io
import json
import os
import platform
import sys
import tarfile
import urllib.request


def parse_lock(text):
    """version/metadata/package of a conda-lock v1 file, as written by conda-lock (2-space YAML)."""
    packages, current, section = [], None, None
    for raw in text.splitlines():
        line = raw.split(" #", 1)[0].rstrip() if not raw.lstrip().startswith("#") else ""
        if not line:
            continue
        if line == "package:":
            section = "package"
            continue
        if section != "package":
            continue
        if line.startswith("- name: "):
            current = {"name": line[8:].strip(), "hash": {}}
            packages.append(current)
        elif line.startswith("    ") and current is not None and current.get("_in") == "hash":
            key, _, value = line.strip().partition(": ")
            current["hash"][key] = value.strip()
        elif line.startswith("  ") and not line.startswith("   ") and current is not None:
            key, _, value = line.strip().partition(":")
            current["_in"] = key
            if value.strip():
                current[key] = value.strip().strip("'\"")
    return packages


def main(argv):
    if argv[:1] == ["--version"]:
        print("2.6.1 (envforge test stand-in)")
        return 0
    args, rest = {}, list(argv[1:]) if argv[:1] == ["create"] else []
    while rest:
        arg = rest.pop(0)
        args[arg] = rest.pop(0) if arg in ("--prefix", "--file") and rest else True
    prefix, lock = args.get("--prefix"), args.get("--file")
    if not (isinstance(prefix, str) and isinstance(lock, str) and args.get("--yes")) or len(args) != 3:
        print("micromamba stand-in: only `create --yes --prefix P --file X-lock.yml` is supported", file=sys.stderr)
        return 2
    if not (lock.endswith("-lock.yml") or lock.endswith("-lock.yaml")):
        print(f"critical libmamba {lock} is not a conda-lock file name (stand-in)", file=sys.stderr)
        return 1
    machine = {"x86_64": "linux-64", "aarch64": "linux-aarch64"}.get(platform.machine(), platform.machine())
    with open(lock, encoding="utf-8") as handle:
        entries = [p for p in parse_lock(handle.read()) if p.get("manager", "conda") == "conda"
                   and p.get("category", "main") == "main" and p.get("platform") in (machine, "noarch")]
    if not entries:
        print(f"warning  libmamba Selected packages for category 'main' are empty. The lockfile might not be "
              f"resolved for your platform ({machine}).", file=sys.stderr)
    os.makedirs(os.path.join(prefix, "conda-meta"), exist_ok=True)
    for entry in entries:
        with urllib.request.urlopen(entry["url"], timeout=60) as response:
            data = response.read()
        if hashlib.sha256(data).hexdigest() != entry["hash"].get("sha256"):
            print(f"critical libmamba {entry['url']} tarball has incorrect SHA256", file=sys.stderr)
            return 1
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:bz2") as tar:
            members = [m for m in tar.getmembers() if not m.name.startswith("info/")]
            safe = {"filter": "tar"} if hasattr(tarfile, "tar_filter") else {}  # Python 3.11.4+
            tar.extractall(prefix, members=members, **safe)
        record = {k: v for k, v in entry.items() if not k.startswith("_")}
        name = f"{entry['name']}-{entry['version']}-{entry['build']}.json"
        with open(os.path.join(prefix, "conda-meta", name), "w", encoding="utf-8") as handle:
            json.dump(record, handle, indent=2, sort_keys=True)
        print(f"  + {entry['name']} {entry['version']} {entry['build']}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
