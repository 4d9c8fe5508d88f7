"""`envforge lock --format conda`: environment.yml + conda-lock.yml per variant, all platforms in one lock."""

from __future__ import annotations

from collections import defaultdict
from typing import Mapping, Sequence

from ..models import Resolution
from ..render import header
from .pip import LockedTarget, LockOptions, LockSet, _details, manifest


def lock_conda(
    resolutions: Sequence[Resolution], options: LockOptions, matrices_read: str,
    channel_urls: Mapping[str, str] | None = None,
) -> LockSet:
    from . import conda

    groups: dict[str, list[Resolution]] = defaultdict(list)
    for res in resolutions:
        assert res.selected is not None
        groups[res.selected.variant].append(res)
    multi = len(groups) > 1
    locked: list[LockedTarget] = []
    for variant, group in groups.items():
        sel = group[0].selected
        assert sel is not None
        python = group[0].request.python or "3.11"
        spec = conda.conda_spec(sel, python, extra=options.with_packages)
        suffix = f"-{variant}" if multi else ""
        head = header(options.command, matrices_read, _details(group[0]))
        env_name = f"environment{suffix}.yml"
        env_text = conda.render_environment_yml(spec, name=f"{sel.framework}-{variant}", header=head)
        targets = [conda.CondaTarget(platform=r.request.platform, cuda=sel.cuda) for r in group]
        lock_text = head + conda.lock(spec, targets, channel_urls=channel_urls)
        locked.append(LockedTarget(group[0], env_name, env_text))
        locked.append(LockedTarget(group[0], f"conda-lock{suffix}.yml", lock_text,
                                   tuple(dict.fromkeys(t.platform for t in targets))))
    return LockSet(locked, manifest(locked, options, matrices_read))
