"""`envforge smoke`: train a tiny model for real in a target environment and report what works."""

from __future__ import annotations

import sys
from typing import Sequence

import click

from ..options import json_option

CHECK_NAMES = ("import", "devices", "kernels", "training", "mixed_precision", "determinism", "throughput",
               "distributed")


@click.command()
@click.option("--python", "python", metavar="PATH",
              help="The target interpreter or virtual environment (default: the one running envforge); "
              "with --image, the interpreter inside the image (default: python).")
@click.option("--image", metavar="TAG", help="Run inside a container from this image (docker SDK; GPUs requested "
              "when the host has them).")
@click.option("--framework", "-f", "frameworks", multiple=True, metavar="torch|tensorflow|jax",
              help="Framework to test (repeatable; default: every one the target can import).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True,
              help="auto: the GPU when the framework sees one, else the CPU (said plainly); cuda: a GPU or fail.")
@click.option("--expect", "expect", multiple=True, metavar="REQ",
              help="Check 1 requires this version, e.g. torch==2.13.0 (repeatable).")
@click.option("--lock", "lock_dir", metavar="DIR", type=click.Path(file_okay=False),
              help="Expect the versions of a lock (DIR/envforge.lock.json, as written by envforge lock -o DIR).")
@click.option("--distributed", is_flag=True,
              help="Also train across every local GPU (torchrun + NCCL, MirroredStrategy, pmap); 2 CPU ranks "
              "(gloo) without a GPU.")
@click.option("--skip", "skip", multiple=True, type=click.Choice(CHECK_NAMES),
              help="Do not run this check (repeatable).")
@click.option("--timeout", "timeout_s", type=click.FloatRange(min=1), metavar="SECONDS",
              help="Time limit for each check (default: 180 s for import, 300 s for distributed, 120 s for the rest); "
              "a hang is a failure.")
@click.option("--nproc", type=click.IntRange(min=1), default=None, hidden=True,
              help="CPU ranks/replicas for --distributed without a GPU (default 2).")
@click.option("--steps", type=click.IntRange(min=2), default=None, hidden=True, help="Training steps (default 40).")
@click.option("--lr", type=float, default=None, hidden=True, help="Test-only: training's learning rate.")
@json_option
def smoke(python: str | None, image: str | None, frameworks: Sequence[str], device: str, expect: Sequence[str],
          lock_dir: str | None, distributed: bool, skip: Sequence[str], timeout_s: float | None, nproc: int | None,
          steps: int | None, lr: float | None, as_json: bool) -> None:
    """Train a tiny model for real in a target environment and report what works.

    \b
    Checks: import and versions, devices (against the host probe), matmul and cuDNN convolution
    against a CPU reference, training (the loss must fall), mixed precision, determinism,
    matmul throughput (against the GPU's datasheet peak), and with --distributed, DDP/all-reduce.

    \b
    envforge smoke --python .venv/bin/python --expect torch==2.13.0
    envforge smoke --image myproject:cu121 --device cuda --distributed

    Exit 0 when every check passed, 1 when one failed, 3 when the environment could not be started.
    """
    from .. import hardware, matrix, specs
    from ..smoke import run

    names = tuple(dict.fromkeys(specs.parse_framework(f) for f in frameworks))
    expectations = run.expectations(expect, lock_dir)
    request = run.SmokeRequest(
        python=python, image=image, frameworks=names, device=device,  # type: ignore[arg-type]
        expectations=expectations, distributed=distributed, nproc=nproc or 0, skip=tuple(skip),
        timeout_s=timeout_s, steps=steps, lr=lr,
    )
    data = matrix.load()
    host = hardware.probe(gpu_lookup=data.gpu, branch_cuda=data.branch_cuda)
    printer = _Progress(to_stderr=as_json)
    result = run.smoke(request, host, data.gpu, printer)
    if as_json:
        import json

        click.echo(json.dumps(result.to_json(), indent=2))
    else:
        from ..smoke.render import verdict

        click.echo(verdict(result))
    if not result.ok:
        sys.exit(1)


class _Progress:
    """A line per check as it finishes (stdout for people, stderr under --json); on a terminal, the running one."""

    def __init__(self, to_stderr: bool) -> None:
        self.err = to_stderr
        self.tty = sys.stderr.isatty()
        self.seen: set[str] = set()

    def __call__(self, framework: str, event: str, check: dict) -> None:
        from ..smoke.render import check_line

        if framework not in self.seen:
            self.seen.add(framework)
            click.echo(f"{framework}:", err=self.err)
        if event == "start":
            if self.tty:
                click.echo(f"  ....  {check['name']} (timeout {check['timeout_s']:.0f} s)\r", err=True, nl=False)
            return
        if self.tty:
            click.echo("\x1b[2K", err=True, nl=False)
        click.echo(check_line(check), err=self.err)


def run_in_image(tag: str, *, gpus: bool, as_json: bool) -> tuple[dict, int]:
    """`envforge build --smoke`: the smoke test inside a freshly built image. Returns (report, exit code)."""
    from .. import hardware, matrix
    from ..smoke import run

    data = matrix.load()
    host = hardware.probe(gpu_lookup=data.gpu, branch_cuda=data.branch_cuda)
    request = run.SmokeRequest(image=tag, device="auto", gpus=gpus)
    result = run.smoke(request, host, data.gpu, _Progress(to_stderr=True))
    if not as_json:
        from ..smoke.render import verdict

        click.echo(verdict(result))
    return result.to_json(), 0 if result.ok else 1
