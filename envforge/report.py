"""Human-readable renderings of command results (tables and verdicts). JSON goes through to_json()."""

from __future__ import annotations

from typing import Any, Sequence


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [len(h) for h in headers]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))
    lines = ["  ".join(h.ljust(widths[i]) for i, h in enumerate(headers)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    for row in rows:
        lines.append("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip())
    return "\n".join(lines)


def _arch_text(doc: dict[str, Any]) -> str:
    arch = list(doc.get("arch") or [])
    ptx = set(doc.get("ptx") or [])
    parts = [a + ("+PTX" if a in ptx else "") for a in arch]
    parts += [p + " (PTX)" for p in sorted(ptx - set(arch))]
    if doc.get("min_arch"):
        parts.append(f">={doc['min_arch']}")
    return ",".join(parts) or "-"


def builds_table(docs: Sequence[dict[str, Any]]) -> str:
    if not docs:
        return "no build matches"
    rows = []
    for d in docs:
        accel = d.get("cuda") or (f"rocm{d['rocm']}" if d.get("rocm") else "cpu")
        rows.append([
            d["framework"],
            d["version"],
            d["variant"] + (" *" if d.get("pypi_default") else ""),
            accel,
            d.get("cudnn") or "-",
            d["python"],
            _arch_text(d),
            ",".join(d.get("platforms") or []),
        ])
    text = table(["framework", "version", "variant", "cuda", "cudnn", "python", "arch", "platforms"], rows)
    if any(d.get("pypi_default") for d in docs):
        text += "\n* = what plain `pip install` gives on Linux x86_64"
    return text
