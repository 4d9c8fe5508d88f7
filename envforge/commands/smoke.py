"""`envforge smoke` (being written)."""

from __future__ import annotations

import click


@click.command(hidden=True)
def smoke() -> None:
    """Train a tiny model in a target environment (not implemented yet)."""
    raise click.UsageError("envforge smoke is not implemented yet")
