"""`envforge check` and `envforge doctor` (being written)."""

from __future__ import annotations

import click


@click.command(hidden=True)
def check() -> None:
    """CI: report every incompatibility in a project's files (not implemented yet)."""
    raise click.UsageError("envforge check is not implemented yet")


@click.command(hidden=True)
def doctor() -> None:
    """Onboarding: probe, check the active environment, smoke (not implemented yet)."""
    raise click.UsageError("envforge doctor is not implemented yet")
