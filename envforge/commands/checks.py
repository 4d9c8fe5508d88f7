"""`envforge check` (CI: a project's pins against the matrices and its targets) and `envforge doctor` (a new machine).

Only click (and the shared options) at module level: `envforge --help` stays fast.
"""

from __future__ import annotations

import json
import sys
from typing import Any, Sequence

import click

from ..options import driver_policy_option, host_options, json_option

FORMATS = ("text", "json", "github", "sarif")


def _fail(exc: Any, fmt: str) -> None:
    """A foreseeable error with a non-text format: the one document that format promises, then the exit code."""
    if fmt == "json":
        click.echo(json.dumps({"ok": False, "error": exc.to_json()}, indent=2))
    elif fmt == "github":
        click.echo(f"::error title=envforge check::{exc.message}".replace("\n", "%0A"))
    message = f"envforge: error: {exc.message}"
    if exc.fix:
        message += f"\n  fix: {exc.fix}"
    click.echo(message, err=True)
    sys.exit(exc.exit_code)


@click.command()
@click.argument("path", required=False, default=".", type=click.Path())
@click.option("--target", "target_specs", multiple=True, metavar="SPEC",
              help='A machine the project must run on: driver=535.104.05,gpu="NVIDIA A100-SXM4-80GB" '
                   "(keys: name, driver, gpu, arch, platform; repeatable).")
@click.option("--fleet", type=click.Path(dir_okay=False), metavar="FILE",
              help="A TOML file of [[machine]] tables (name, driver, gpus, arch, platform) the project must run on.")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="text", show_default=True,
              help="text for people; json (the contract's document); github (workflow annotations); sarif (2.1.0).")
@click.option("-o", "--output", type=click.Path(dir_okay=False), metavar="FILE",
              help="Write the report to FILE instead of stdout (e.g. envforge.sarif for code-scanning upload).")
@click.option("--exclude", multiple=True, metavar="GLOB", help="Skip paths matching GLOB, relative to PATH (repeatable).")
@host_options
@driver_policy_option
@json_option
def check(path: str, target_specs: Sequence[str], fleet: str | None, fmt: str, output: str | None,
          exclude: Sequence[str], driver: str | None, gpu: Sequence[str], arch: Sequence[str], no_detect: bool,
          driver_policy: str, as_json: bool) -> None:
    """Report every incompatibility in what a project pins, with file and line.

    Reads requirements*.txt/.in/.lock, pyproject.toml, environment.yml, conda-lock.yml, pylock.toml,
    Dockerfiles and envforge.lock.json under PATH (default: .). Targets: --target / --fleet; without
    them, this machine (or --driver/--gpu/--arch); --no-detect checks the files alone.

    Exit 0 when clean (warnings allowed), 1 when a finding is an error, 2 for unreadable input.
    """
    from pathlib import Path

    from .. import check as check_mod
    from .. import matrix as matrix_mod
    from ..errors import EnvforgeError

    fmt = "json" if as_json else fmt
    try:
        data = matrix_mod.load()
        targets = [check_mod.parse_target(spec, data, i) for i, spec in enumerate(target_specs, 1)]
        if fleet:
            targets += check_mod.load_fleet(Path(fleet), data)
        if not targets:
            targets = _host_target(data, driver, gpu, arch, no_detect)
        report = check_mod.check(Path(path), targets, data, driver_policy=driver_policy, exclude=exclude)
    except EnvforgeError as exc:
        if fmt != "text":
            _fail(exc, fmt)
        raise
    text = json.dumps(report.to_json(), indent=2) if fmt == "json" else check_mod.RENDERERS[fmt](report)
    if output:
        from ..fsutil import write_atomic

        write_atomic(Path(output), text + "\n")
        click.echo(check_mod.render_text(report) if fmt != "text" else f"wrote {output}", err=True)
    else:
        click.echo(text)
    if not report.ok:
        sys.exit(1)


def _host_target(data: Any, driver: str | None, gpu: Sequence[str], arch: Sequence[str], no_detect: bool) -> list[Any]:
    """This machine as the one target (flag > environment variable > probe); none when it has no NVIDIA GPU."""
    from .. import hardware
    from ..check import Target

    overrides = hardware.overrides_from(driver, gpu, arch, no_detect)
    if no_detect and not overrides.any:
        return []
    host = hardware.probe(overrides, gpu_lookup=data.gpu, branch_cuda=data.branch_cuda)
    if not (host.gpus or (overrides.any and host.driver)):
        return []
    return [Target("this machine" if host.source != "override" else "command line", host,
                   host.platform or "linux-64")]


@click.command()
@click.option("--smoke", is_flag=True, help="Also import each installed framework and run a tiny computation on it.")
@click.option("--python", "python_exe", type=click.Path(dir_okay=False), metavar="PATH",
              help="The environment's interpreter (default: the active virtual or conda environment, else this one).")
@host_options
@json_option
def doctor(smoke: bool, python_exe: str | None, driver: str | None, gpu: Sequence[str], arch: Sequence[str],
           no_detect: bool, as_json: bool) -> None:
    """A new machine: what it has, which frameworks the environment holds, each problem with its fix, and
    the `envforge lock` command that gives this machine a working environment.

    Frameworks are read from installed metadata; nothing is imported unless --smoke.
    Exit 0 when nothing is wrong (warnings allowed), 1 when a problem is an error or a smoke test failed.
    """
    from .. import doctor as doctor_mod
    from .. import matrix as matrix_mod
    from ..errors import EnvforgeError

    try:
        data = matrix_mod.load()
        result = doctor_mod.doctor(data, driver=driver, gpus=gpu, arch=arch, no_detect=no_detect,
                                   python=python_exe, smoke=smoke)
    except EnvforgeError as exc:
        if as_json:
            _fail(exc, "json")
        raise
    if as_json:
        click.echo(json.dumps(result.to_json(), indent=2))
    else:
        click.echo(doctor_mod.render_text(result))
    if not result.ok:
        sys.exit(1)
