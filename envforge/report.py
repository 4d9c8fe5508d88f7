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


def _version_key(text: str) -> tuple[int, ...]:
    return tuple(int(p) if p.isdigit() else 0 for p in text.split("."))


def host_text(host: Any) -> str:
    lines = [f"source     {host.source}"]
    lines.append(f"driver     {host.driver or '-'}" + (f"  (supports CUDA <= {host.driver_cuda})" if host.driver_cuda else ""))
    for key in ("platform", "os", "glibc", "python", "nvcc", "rocm"):
        value = getattr(host, key)
        if value:
            lines.append(f"{key:<10} {value}")
    if host.wsl:
        lines.append("wsl        yes")
    if host.gpus:
        rows = [
            [str(g.index if g.index is not None else "-"), g.name, g.arch or "?",
             f"{g.memory_mib} MiB" if g.memory_mib else "-", "on" if g.mig else ("off" if g.mig is False else "-"),
             g.uuid or "-"]
            for g in host.gpus
        ]
        lines.append("")
        lines.append(table(["#", "gpu", "arch", "memory", "mig", "uuid"], rows))
    else:
        lines.append("gpus       none found")
    for note in host.notes:
        lines.append(f"note ({note.source}): {note.message}" + (f"\n  fix: {note.fix}" if note.fix else ""))
    return "\n".join(lines)


def resolution_text(res: Any, max_rejections: int = 25) -> str:
    lines = []
    req = res.request
    target = f"{req.framework} {req.version or '(newest)'} cuda={req.cuda} python={req.python} {req.platform}"
    host = res.host
    host_line = f"host: {host.source}"
    if host.driver:
        host_line += f", driver {host.driver}"
    if host.gpus:
        host_line += ", " + ", ".join(f"{g.name} ({g.arch})" for g in host.gpus[:4])
        if len(host.gpus) > 4:
            host_line += f" and {len(host.gpus) - 4} more"
    lines.append(f"target: {target}")
    lines.append(host_line)
    sel = res.selected
    if sel is not None:
        lines.append("")
        lines.append(f"OK: {sel.framework} {sel.version} ({sel.variant})")
        accel = f"CUDA {sel.cuda}" if sel.cuda else (f"ROCm {sel.rocm}" if sel.rocm else "CPU")
        lines.append(f"  accelerator   {accel}" + (f", cuDNN {sel.cudnn}" if sel.cudnn else ""))
        lines.append(f"  install       {' '.join(sel.requirements)}" + (f"  (index {sel.index_url})" if sel.index_url else ""))
        if sel.companions:
            lines.append("  companions    " + ", ".join(f"{k}=={v}" for k, v in sel.companions))
        lines.append(f"  python        {sel.python}")
        if sel.min_driver:
            lines.append(f"  min driver    {sel.min_driver}")
        arch_doc = {"arch": sel.arch, "ptx": sel.ptx, "min_arch": sel.min_arch}
        lines.append(f"  gpu archs     {_arch_text(arch_doc)}")
        if sel.base_image:
            lines.append(f"  base image    {sel.base_image}")
    else:
        lines.append("")
        lines.append(f"NO BUILD: no {req.framework} build fits this target ({res.candidates} candidates considered)")
    for warning in res.warnings:
        lines.append(f"warning: {warning}")
    # People read the rejections that explain the answer; --json has every one. Builds for another
    # accelerator than the one asked for (or the host has) are summarised, not listed.
    shown = [r for r in res.rejected if any(x.code not in ("cuda_mismatch", "not_published") for x in r.reasons)]
    unpublished = [r for r in res.rejected if all(x.code == "not_published" for x in r.reasons)]
    hidden = len(res.rejected) - len(shown) - len(unpublished)
    if unpublished:
        versions = sorted({r.version for r in unpublished}, key=_version_key)
        span = versions[0] if len(versions) == 1 else f"{versions[0]} … {versions[-1]} ({len(versions)} releases)"
        lines.append("")
        what = unpublished[0].reasons[0].message.split(" has ", 1)[-1]
        lines.append(f"not published: {span} {'has' if len(versions) == 1 else 'have'} {what}")
        lines.append(f"  {unpublished[0].reasons[0].fix.split('; ')[-1]}")
    if shown:
        lines.append("")
        lines.append("rejected:" if sel is None else "rejected (same or newer releases):")
        rows = []
        for rejection in shown[:max_rejections]:
            reasons = [x for x in rejection.reasons if x.code != "cuda_mismatch"] or list(rejection.reasons)
            for i, reason in enumerate(reasons):
                rows.append([
                    rejection.version if i == 0 else "", rejection.variant if i == 0 else "",
                    reason.code, reason.message, reason.fix,
                ])
        lines.append(table(["version", "variant", "reason", "why", "fix"], rows))
        if len(shown) > max_rejections:
            lines.append(f"... and {len(shown) - max_rejections} more (--json lists all)")
    if hidden:
        lines.append(f"({hidden} build(s) for another accelerator than the target's not shown; --json lists them)")
    return "\n".join(lines)
