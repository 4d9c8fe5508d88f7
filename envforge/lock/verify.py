"""Dependency-confusion check for resolvers that merge indexes (pip-tools): every package other than the
framework's own must be pinned to files the default index serves, with the same hashes."""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor

from packaging.utils import canonicalize_name

from ..errors import LockError
from ..pypi import PyPI
from .interface import IndexPlan

_ENTRY = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?==(\S+?)\s*(?:;[^\\]*)?\\?\n((?:\s+--hash=sha256:[0-9a-f]+\s*\\?\n?)+)",
                    re.MULTILINE)


def check_default_index(text: str, plan: IndexPlan) -> None:
    allowed = {canonicalize_name(p) for p in plan.framework_packages}
    entries = [(m.group(1), m.group(2), set(re.findall(r"sha256:([0-9a-f]+)", m.group(3))))
               for m in _ENTRY.finditer(text)]
    entries = [e for e in entries if canonicalize_name(e[0]) not in allowed]
    client = PyPI(simple_url=plan.default_index.rstrip("/") + "/{name}/")

    def served(entry: tuple[str, str, set[str]]) -> tuple[str, str, bool]:
        name, version, hashes = entry
        on_default = {f.sha256 for f in client.files(canonicalize_name(name)) if f.sha256}
        return name, version, bool(hashes & on_default)

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(served, entries))
    offenders = [f"{n}=={v}" for n, v, ok in results if not ok]
    if offenders:
        raise LockError(
            f"{', '.join(offenders)} would come from {plan.framework_index}, which may only serve "
            f"{', '.join(sorted(allowed))}: pip merges indexes and took a version the default index "
            f"({plan.default_index}) does not have (dependency confusion)",
            fix="use --resolver uv, which keeps the framework index to the framework's packages, "
            "or pin these packages to versions on the default index with --with",
        )


