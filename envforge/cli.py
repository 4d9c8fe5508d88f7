"""The click command-line interface: parse options, build one request, call one core function, render.

Heavy modules (packaging, pynvml, docker, jinja2 ...) are imported inside the
commands, never at start-up, so `envforge --help` stays fast (bench/startup).
"""

from __future__ import annotations

import sys
from typing import Any, NoReturn, Sequence

import click

from . import __version__
from .errors import EXIT_BAD_INPUT, EnvforgeError
from .options import (
    cuda_option,
    host_options,
    json_option,
    lock_target_options,
    platform_option,
    python_option,
    target_options,
    version_option,
)


def _emit_json(doc: Any) -> None:
    import json

    click.echo(json.dumps(doc, indent=2, sort_keys=False))


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(__version__, "--version", prog_name="envforge", message="%(prog)s %(version)s")
def cli() -> None:
    """Reproducible, provably working deep-learning environments.

    \b
    envforge detect                          what this machine has (driver, CUDA, GPUs)
    envforge matrix torch --version 2.3.1    the known builds of a release
    envforge resolve -f torch --cuda 11.8    the build that fits, and why others don't

    Exit codes: 0 success, 1 a real negative answer, 2 bad input, 3 the environment stopped us.
    """


# --------------------------------------------------------------------------- matrix


class _MatrixGroup(click.Group):
    """`envforge matrix [FRAMEWORK]` lists builds; `matrix validate|fmt|refresh` are subcommands."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if not args or (args[0] not in self.commands and args[0] not in ("-h", "--help")):
            args = ["list", *args]
        return super().parse_args(ctx, args)


@cli.group(cls=_MatrixGroup)
def matrix() -> None:
    """The compatibility knowledge base: list builds, validate, refresh from PyPI.

    \b
    envforge matrix torch --version 2.3.1 --json
    envforge matrix validate
    envforge matrix refresh [--write]
    """


@matrix.command("list")
@click.argument("framework", required=False)
@version_option
@cuda_option
@python_option
@platform_option
@json_option
def matrix_list(
    framework: str | None, version: str | None, cuda: str | None, python: str | None, platform: str | None,
    as_json: bool,
) -> None:
    """List known builds of FRAMEWORK (all frameworks when omitted)."""
    from . import matrix as matrix_mod
    from . import report, specs
    from .models import FRAMEWORKS

    data = matrix_mod.load()
    frameworks = [specs.parse_framework(framework)] if framework else list(FRAMEWORKS)
    version_spec = specs.parse_version_spec(version)
    cuda_request = specs.parse_cuda(cuda, data.known_cuda()) if cuda else None
    python_version = specs.parse_python(python)
    platform_name = specs.parse_platform(platform)
    rows = []
    for name in frameworks:
        for release, build in matrix_mod.query(data, name, version_spec, cuda_request, python_version, platform_name):
            rows.append(matrix_mod.build_doc(data, name, release, build))
    if version and framework and not rows:
        known = [r.version for r in data.releases(frameworks[0])]
        if not any(version_spec.contains(v, prereleases=True) for v in known):
            from .errors import BadInput

            raise BadInput(
                f"no {frameworks[0]} release matches {version!r}. Known releases: {known[0]} … {known[-1]} "
                f"({len(known)} in all; `envforge matrix {frameworks[0]}` lists them)."
            )
    if as_json:
        _emit_json({"matrices_read": data.read_date(), "builds": rows})
    else:
        click.echo(report.builds_table(rows))


@matrix.command("validate")
@click.option("--dir", "directory", type=click.Path(file_okay=False), help="Validate this matrices/ directory.")
@json_option
def matrix_validate(directory: str | None, as_json: bool) -> None:
    """Check schema and cross-file consistency; exit 1 naming file and row on any problem."""
    from pathlib import Path

    from . import matrix as matrix_mod

    problems = matrix_mod.validate(Path(directory) if directory else None)
    where = directory or str(matrix_mod.data_dir())
    if as_json:
        _emit_json({"ok": not problems, "directory": where, "problems": problems})
    else:
        for problem in problems:
            click.echo(problem)
        click.echo(f"{where}: {'OK' if not problems else f'{len(problems)} problem(s)'}", err=bool(problems))
    if problems:
        sys.exit(1)


@matrix.command("fmt")
@click.argument("files", nargs=-1, type=click.Path(dir_okay=False))
def matrix_fmt(files: Sequence[str]) -> None:
    """Rewrite matrices files in canonical form (sorted rows, fixed key order)."""
    from pathlib import Path

    from . import matrix as matrix_mod

    paths = [Path(f) for f in files] or [matrix_mod.data_dir() / f"{s}.toml" for s in matrix_mod.SUBJECTS]
    for path in paths:
        changed = matrix_mod.fmt(path)
        click.echo(f"{path}: {'rewritten' if changed else 'unchanged'}", err=True)


@matrix.command("refresh")
@click.argument("frameworks", nargs=-1)
@version_option
@click.option("--write", is_flag=True, help="Write the regenerated files (atomically); without it, only show the diff.")
@click.option("--dir", "directory", type=click.Path(file_okay=False), help="The matrices/ directory to refresh.")
@json_option
def matrix_refresh(frameworks: Sequence[str], version: str | None, write: bool, directory: str | None,
                   as_json: bool) -> None:
    """Regenerate from PyPI what its metadata tells (Python ranges, default torch variant and its pins,
    tensorflow[and-cuda] pins, JAX plugin pins) and print the diff. Exit 0 if nothing differs, 1 if it does
    (and was not written)."""
    from pathlib import Path

    from . import refresh as refresh_mod
    from . import specs
    from .fsutil import write_atomic

    names = [specs.parse_framework(f) for f in frameworks] or ["torch", "tensorflow", "jax"]
    only = specs.parse_version_spec(version) if version else None
    base = Path(directory) if directory else None
    result = refresh_mod.refresh(base, frameworks=names, only=only)
    diff = result.diff()
    if write:
        from . import matrix as matrix_mod

        target = base or matrix_mod.data_dir()
        for subject in result.changed:
            write_atomic(target / f"{subject}.toml", result.texts[subject][1])
    if as_json:
        _emit_json({"changed": result.changed, "written": write and bool(result.changed), "diff": diff,
                    "notes": result.notes})
    else:
        if diff:
            click.echo(diff, nl=False)
        for note in result.notes:
            click.echo(f"note: {note}", err=True)
        state = "written" if write else "not written (use --write)"
        click.echo(f"{len(result.changed)} file(s) differ from PyPI" + (f": {state}" if result.changed else ""),
                   err=True)
    if result.changed and not write:
        sys.exit(1)


# --------------------------------------------------------------------------- detect / resolve


def _probe(matrix_data: Any, driver: str | None, gpu: Sequence[str], arch: Sequence[str], no_detect: bool,
           include_toolkit: bool = False) -> Any:
    from . import hardware

    overrides = hardware.overrides_from(driver, gpu, arch, no_detect)
    return hardware.probe(
        overrides,
        include_toolkit=include_toolkit,
        gpu_lookup=matrix_data.gpu,
        branch_cuda=matrix_data.branch_cuda,
    )


@cli.command()
@host_options
@json_option
def detect(driver: str | None, gpu: Sequence[str], arch: Sequence[str], no_detect: bool, as_json: bool) -> None:
    """What this machine has: driver, the CUDA it supports, each GPU, and which source answered."""
    from . import matrix as matrix_mod
    from . import report

    host = _probe(matrix_mod.load(), driver, gpu, arch, no_detect, include_toolkit=True)
    if as_json:
        _emit_json(host.to_json())
    else:
        click.echo(report.host_text(host))


@cli.command()
@target_options
@json_option
def resolve(
    framework: str | None, version: str | None, cuda: str | None, python: str | None, platform: str | None,
    driver: str | None, gpu: Sequence[str], arch: Sequence[str], no_detect: bool, driver_policy: str,
    allow_cpu: bool, as_json: bool,
) -> None:
    """The best build for the target, and every rejected candidate with its reasons and fixes.

    Exit 0 when a build was selected, 1 when none can be, 2 for bad input.
    """
    from . import matrix as matrix_mod
    from . import report
    from . import resolve as resolve_mod

    data = matrix_mod.load()
    request = _request(data, framework, version, cuda, python, platform, driver_policy, allow_cpu)
    host = _probe(data, driver, gpu, arch, no_detect)
    resolution = resolve_mod.resolve(data, host, request)
    if as_json:
        _emit_json(resolution.to_json())
    else:
        click.echo(report.resolution_text(resolution))
    if not resolution.ok:
        sys.exit(1)


def _request(data: Any, framework: str | None, version: str | None, cuda: str | None, python: str | None,
             platform: str | None, driver_policy: str, allow_cpu: bool) -> Any:
    from . import hardware, specs
    from .errors import BadInput
    from .models import Request

    if not framework:
        raise BadInput("which framework? pass --framework torch, --framework tensorflow or --framework jax.")
    name = specs.parse_framework(framework)
    specs.parse_version_spec(version)
    specs.parse_cuda(cuda, data.known_cuda())
    return Request(
        framework=name,
        version=version,
        cuda=cuda or "auto",
        python=specs.parse_python(python) or f"{sys.version_info[0]}.{sys.version_info[1]}",
        platform=specs.parse_platform(platform) or hardware.platform_tag() or "linux-64",
        driver_policy=driver_policy,
        allow_cpu=allow_cpu,
    )


# --------------------------------------------------------------------------- lock


@cli.command()
@lock_target_options
@click.option("--format", "fmt", type=click.Choice(["pip", "pylock", "conda"]), default="pip", show_default=True,
              help="pip: hashed requirements; pylock: PEP 751 pylock.toml; conda: environment.yml + conda-lock.yml.")
@click.option("--resolver", type=click.Choice(["uv", "pip-tools"]), default="uv", show_default=True,
              help="The resolver that computes the lock.")
@click.option("--with", "with_packages", multiple=True, metavar="PKG", help="Also lock this requirement (repeatable).")
@click.option("-r", "--requirement", "requirement_files", multiple=True, type=click.Path(dir_okay=False),
              help="Also lock the requirements in this file (repeatable).")
@click.option("--pyproject", type=click.Path(dir_okay=False), help="Also lock this pyproject.toml's [project] dependencies.")
@click.option("--no-companions", is_flag=True, help="Do not add torchvision/torchaudio of the same release.")
@click.option("-o", "--output", "output", type=click.Path(file_okay=False), default=".", show_default=True,
              help="Directory to write the lock files into.")
@click.option("--check", is_flag=True, help="Write nothing; exit 1 and show the diff if the lock on disk is stale.")
@click.option("--index-url", default=None, metavar="URL", help="The default index (env ENVFORGE_INDEX_URL; default PyPI).")
@click.option("--torch-index", default=None, metavar="URL",
              help="Base of the PyTorch wheel index (env ENVFORGE_TORCH_INDEX; default https://download.pytorch.org/whl).")
@click.option("--no-dockerfile", is_flag=True, help="Do not write a Dockerfile beside a pip or conda lock.")
@click.option("--base-image", default=None, metavar="IMAGE", help="Base image for the Dockerfile (default: from the resolution).")
@click.option("--micromamba-image", default=None, metavar="IMAGE",
              help="Image the conda Dockerfile copies micromamba from (default: mambaorg/micromamba:2.6.1).")
@click.option("--conda-channel", "conda_channel", multiple=True, metavar="NAME=URL",
              help="Solve conda channel NAME from URL instead (a mirror or a local channel; repeatable).")
@click.option("-v", "--verbose", is_flag=True, help="Show the resolver commands on stderr.")
@json_option
def lock(framework: str | None, version: str | None, cuda: Sequence[str], python: str | None,
         platform: Sequence[str], driver: str | None, gpu: Sequence[str], arch: Sequence[str], no_detect: bool,
         driver_policy: str, allow_cpu: bool, fmt: str, resolver: str, with_packages: Sequence[str],
         requirement_files: Sequence[str], pyproject: str | None, no_companions: bool, output: str, check: bool,
         index_url: str | None, torch_index: str | None, no_dockerfile: bool, base_image: str | None,
         micromamba_image: str | None, conda_channel: Sequence[str], verbose: bool, as_json: bool) -> None:
    """The main job: resolve the target(s), then write a hashed lock per target and envforge.lock.json.

    \b
    envforge lock -f torch --cuda 11.8 -o out/
    envforge lock -f torch --version 2.7.1 --cuda 11.8 --cuda 12.6 --cuda cpu -o locks/
    envforge lock -f jax --cuda 12 --with optax -o out/ --check
    """
    import os
    import shlex
    from pathlib import Path

    from . import matrix as matrix_mod
    from . import resolve as resolve_mod
    from .errors import BadInput, NoCompatibleBuild

    channel_urls = {}
    for item in conda_channel:
        name, sep, url = item.partition("=")
        if not sep or not name or not url:
            raise BadInput(f"--conda-channel {item!r}: give NAME=URL (e.g. conda-forge=https://mirror/conda-forge)")
        channel_urls[name] = url
    if fmt == "conda" and resolver != "uv":
        raise BadInput("--resolver applies to pip locks; conda locks are solved by conda-lock or rattler")
    for path in (*requirement_files, *([pyproject] if pyproject else [])):
        if not Path(path).is_file():
            raise BadInput(f"cannot read {path}: no such file")
    data = matrix_mod.load()
    host = _probe(data, driver, gpu, arch, no_detect)
    requests = [
        _request(data, framework, version, c, python, p, driver_policy, allow_cpu)
        for c in (cuda or ("auto",)) for p in (platform or (None,))
    ]
    resolutions = [resolve_mod.resolve(data, host, r) for r in requests]
    failed = [r for r in resolutions if not r.ok]
    if failed:
        from . import report

        for res in failed:
            click.echo(report.resolution_text(res), err=True)
        targets = ", ".join(f"--cuda {r.request.cuda} ({r.request.platform})" for r in failed)
        raise NoCompatibleBuild(f"no compatible build for {targets}: nothing was locked",
                                fix="see the rejected builds above and their fixes")
    args = [a for a in sys.argv[1:] if a != "--check"] if sys.argv[1:2] == ["lock"] else ["lock"]
    from .lock import pip as pip_lock

    options = pip_lock.LockOptions(
        format=fmt,
        resolver=resolver,
        with_packages=tuple(with_packages),
        requirement_files=tuple(Path(p) for p in requirement_files),
        pyproject=Path(pyproject) if pyproject else None,
        companions=not no_companions,
        index_url=index_url or os.environ.get("ENVFORGE_INDEX_URL") or pip_lock.PYPI_SIMPLE,
        torch_index=torch_index or os.environ.get("ENVFORGE_TORCH_INDEX") or pip_lock.PYTORCH_INDEX,
        command="envforge " + " ".join(shlex.quote(a) for a in args),
        verbose=verbose,
    )
    if fmt == "conda":
        from .lock.condaset import lock_conda

        lockset = lock_conda(resolutions, options, data.read_date(), channel_urls or None)
        if not no_dockerfile:
            lockset.extra.update(_conda_dockerfiles(lockset, options.command, data.read_date(), base_image,
                                                    micromamba_image))
    else:
        if micromamba_image:
            raise BadInput("--micromamba-image applies to conda locks (--format conda)")

        def dockerfiles(targets: Any) -> dict[str, str]:
            return _dockerfiles(targets, options.command, data.read_date(), base_image)

        meanwhile = dockerfiles if fmt == "pip" and not no_dockerfile else None
        lockset = pip_lock.lock_all(resolutions, options, data.read_date(), meanwhile=meanwhile)
    out_dir = Path(output)
    for res in resolutions:
        for warning in res.warnings:
            click.echo(f"warning: {res.selected.variant if res.selected else ''}: {warning}", err=True)
    if check:
        diff = pip_lock.compare(out_dir, lockset)
        if as_json:
            _emit_json({"ok": not diff, "stale": bool(diff), "diff": diff})
        elif diff:
            click.echo(diff, nl=False)
            click.echo(f"the lock in {out_dir} is stale: re-run the command without --check", err=True)
        else:
            click.echo(f"the lock in {out_dir} is up to date", err=True)
        if diff:
            sys.exit(1)
        return
    written = pip_lock.write(out_dir, lockset)
    if as_json:
        _emit_json({"ok": True, "files": [str(p) for p in written],
                    "targets": __import__("json").loads(lockset.manifest)["targets"]})
    else:
        for target in lockset.targets:
            sel = target.resolution.selected
            assert sel is not None
            click.echo(f"wrote {out_dir / target.file}: {sel.framework} {sel.version} ({sel.variant}), "
                       f"Python {target.resolution.request.python}, {target.resolution.request.platform}")
        for name in sorted(lockset.extra):
            click.echo(f"wrote {out_dir / name}")
        click.echo(f"wrote {out_dir / pip_lock.MANIFEST}")


def _dockerfiles(targets: Any, command: str, matrices_read: str, base_image: str | None) -> dict[str, str]:
    """A Dockerfile per locked target (Dockerfile, or Dockerfile.<suffix> for several) and the guard.

    Rendered while the resolvers run: it needs only each target's resolution and lock file name.
    """
    from . import dockerfile as dockerfile_mod

    out = {}
    for resolution, file in targets:
        spec = dockerfile_mod.Target.from_resolution(resolution, file)
        name = dockerfile_mod.dockerfile_name(file, several=len(targets) > 1)
        out[name] = dockerfile_mod.render(spec, command=command, matrices_read=matrices_read, base_image=base_image)
    out[dockerfile_mod.GUARD_FILE] = dockerfile_mod.guard_text()
    return out


def _conda_dockerfiles(lockset: Any, command: str, matrices_read: str, base_image: str | None,
                       micromamba_image: str | None) -> dict[str, str]:
    """A Dockerfile per conda lock (one per variant; each serves every platform of its lock) and the guard."""
    from . import dockerfile as dockerfile_mod

    locks = [t for t in lockset.targets if dockerfile_mod.is_conda_lock_file(t.file)]
    out = {}
    for locked in locks:
        spec = dockerfile_mod.Target.from_resolution(locked.resolution, locked.file, format="conda",
                                                     platforms=locked.platforms)
        out[dockerfile_mod.dockerfile_name(locked.file, several=len(locks) > 1)] = dockerfile_mod.render(
            spec, command=command, matrices_read=matrices_read, base_image=base_image,
            micromamba_image=micromamba_image)
    out[dockerfile_mod.GUARD_FILE] = dockerfile_mod.guard_text()
    return out


# --------------------------------------------------------------------------- dockerfile / build


@cli.command()
@target_options
@click.option("--lock", "lock_dir", type=click.Path(file_okay=False), help="Make it for the lock in this directory.")
@click.option("-o", "--output", "output", type=click.Path(dir_okay=False),
              help="Write here (default: stdout; with --lock, LOCKDIR/Dockerfile).")
@click.option("--format", "fmt", type=click.Choice(["pip", "conda"]), default=None,
              help="The lock the Dockerfile installs: requirements.lock (pip, the default) or conda-lock.yml "
                   "(conda, with micromamba). With --lock, the lock's own format.")
@click.option("--base-image", default=None, metavar="IMAGE", help="Override the base image.")
@click.option("--micromamba-image", default=None, metavar="IMAGE",
              help="conda: the image micromamba is copied from (default: mambaorg/micromamba:2.6.1).")
@click.option("--pin-digest", is_flag=True,
              help="Resolve the base image's tag (and, for conda, micromamba's) to its digest at the registry.")
@click.option("--wheelhouse", default=None, metavar="DIR",
              help="Air-gapped build: install from DIR (inside the lock directory) with --no-index.")
@click.option("--fill-wheelhouse", is_flag=True, help="Download the lock's wheels into the wheelhouse (pip download).")
@click.option("-v", "--verbose", is_flag=True, help="Show the commands run on stderr.")
def dockerfile(framework: str | None, version: str | None, cuda: str | None, python: str | None,
               platform: str | None, driver: str | None, gpu: Sequence[str], arch: Sequence[str], no_detect: bool,
               driver_policy: str, allow_cpu: bool, lock_dir: str | None, output: str | None, fmt: str | None,
               base_image: str | None, micromamba_image: str | None, pin_digest: bool, wheelhouse: str | None,
               fill_wheelhouse: bool, verbose: bool) -> None:
    """A Dockerfile for a target (resolved now) or for an existing lock (--lock DIR).

    \b
    envforge dockerfile -f torch --cuda 11.8            # to stdout, for a requirements.lock beside it
    envforge dockerfile -f torch --cuda 11.8 --format conda   # for a conda-lock.yml beside it
    envforge dockerfile --lock out/ --base-image debian:bookworm --wheelhouse wheelhouse --fill-wheelhouse
    """
    import shlex
    from pathlib import Path

    from . import dockerfile as dockerfile_mod
    from . import matrix as matrix_mod
    from . import resolve as resolve_mod
    from .errors import BadInput, NoCompatibleBuild
    from .fsutil import write_atomic

    data = matrix_mod.load()
    command = "envforge " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    if lock_dir:
        targets = dockerfile_mod.targets_from_lock(Path(lock_dir))
        if len(targets) > 1:
            raise BadInput(f"{lock_dir} holds {len(targets)} targets; `envforge lock` wrote a Dockerfile for each")
        target = targets[0]
        if fmt and fmt != target.format:
            raise BadInput(f"{lock_dir} holds a {target.format} lock, not a {fmt} one", fix="drop --format")
    else:
        request = _request(data, framework, version, cuda, python, platform, driver_policy, allow_cpu)
        res = resolve_mod.resolve(data, _probe(data, driver, gpu, arch, no_detect), request)
        if not res.ok:
            from . import report

            click.echo(report.resolution_text(res), err=True)
            raise NoCompatibleBuild("no compatible build: no Dockerfile written")
        if fmt == "conda":
            target = dockerfile_mod.Target.from_resolution(res, "conda-lock.yml", format="conda")
        else:
            target = dockerfile_mod.Target.from_resolution(res, "requirements.lock")
    if wheelhouse and fill_wheelhouse:
        if not lock_dir:
            raise BadInput("--fill-wheelhouse needs --lock DIR (the wheels are downloaded from the lock)")
        from .docker_build import fill_wheelhouse as fill

        fill(Path(lock_dir) / target.lock_file, Path(lock_dir) / wheelhouse, target.python, target.platform,
             verbose=verbose)
    text = dockerfile_mod.render(target, command=command, matrices_read=data.read_date(), base_image=base_image,
                                 wheelhouse=wheelhouse, micromamba_image=micromamba_image, pin=pin_digest)
    destination = Path(output) if output else (Path(lock_dir) / "Dockerfile" if lock_dir else None)
    if destination is None:
        click.echo(text, nl=False)
        return
    write_atomic(destination, text)
    write_atomic(destination.parent / dockerfile_mod.GUARD_FILE, dockerfile_mod.guard_text())
    click.echo(f"wrote {destination} and {destination.parent / dockerfile_mod.GUARD_FILE}", err=True)


@cli.command()
@click.argument("directory", required=False, default=".", type=click.Path(file_okay=False))
@click.option("-t", "--tag", default=None, help="Image tag (default: envforge/<framework>:<version>-<variant>).")
@click.option("-f", "--file", "dockerfile_name", default="Dockerfile", show_default=True, help="Dockerfile in DIRECTORY.")
@click.option("--smoke", is_flag=True, help="Then run `envforge smoke --image TAG` in the built image.")
@json_option
def build(directory: str, tag: str | None, dockerfile_name: str, smoke: bool, as_json: bool) -> None:
    """docker build a directory written by `envforge lock` (through the docker SDK), optionally smoke-test it."""
    import time
    from pathlib import Path

    from . import docker_build

    context = Path(directory)
    if tag is None:
        tag = _default_tag(context)
    started = time.perf_counter()
    image_id = docker_build.build(context, tag, dockerfile_name)
    seconds = time.perf_counter() - started
    size = docker_build.client().images.get(tag).attrs.get("Size")
    click.echo(f"built {tag} ({image_id[:19]}) in {seconds:.1f} s" + (f", {size / 2**20:.0f} MiB" if size else ""),
               err=True)
    doc: dict[str, Any] = {"ok": True, "tag": tag, "id": image_id, "seconds": round(seconds, 1), "size": size}
    if smoke:
        from .commands.smoke import run_in_image

        gpus = docker_build.nvidia_runtime()
        if not gpus:
            click.echo("no NVIDIA container runtime on this Docker daemon: the smoke test runs on the CPU", err=True)
        report_doc, code = run_in_image(tag, gpus=gpus, as_json=as_json)
        doc["smoke"] = report_doc
        if as_json:
            _emit_json(doc)
        sys.exit(code)
    if as_json:
        _emit_json(doc)


def _default_tag(context: Any) -> str:
    import json as json_mod

    from .lock.pip import MANIFEST

    try:
        doc = json_mod.loads((context / MANIFEST).read_text())
        target = doc["targets"][0]
        suffix = "-conda" if doc.get("format") == "conda" else ""
        return f"envforge/{target['framework']}:{target['version']}-{target['variant']}{suffix}"
    except (OSError, ValueError, KeyError, IndexError):
        return "envforge/image:latest"


# --------------------------------------------------------------------------- commands in their own modules

from .commands.checks import check as _check_command, doctor as _doctor_command  # noqa: E402
from .commands.smoke import smoke as _smoke_command  # noqa: E402

cli.add_command(_smoke_command)
cli.add_command(_check_command)
cli.add_command(_doctor_command)


# --------------------------------------------------------------------------- entry point


def main(argv: Sequence[str] | None = None) -> NoReturn:
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        cli.main(args=args, prog_name="envforge", standalone_mode=False)
    except EnvforgeError as exc:
        if "--json" in args:
            _emit_json({"ok": False, "error": exc.to_json()})
        message = f"envforge: error: {exc.message}"
        if exc.fix:
            message += f"\n  fix: {exc.fix}"
        click.echo(message, err=True)
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        click.echo("envforge: aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code if exc.exit_code else EXIT_BAD_INPUT)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        click.echo("envforge: interrupted", err=True)
        sys.exit(130)
    except BrokenPipeError:
        sys.exit(0)
    sys.exit(0)
