"""What every command shares: consoles and turning PodbayError into a clean message and exit status."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import typer
from rich.console import Console

from podbay.errors import PodbayError

console = Console()
errors = Console(stderr=True)


@contextlib.contextmanager
def reported_errors() -> Iterator[None]:
    """Show a podbay error as one readable message (no traceback) and exit with status 2."""
    try:
        yield
    except PodbayError as exc:
        errors.print(f"[bold red]error:[/] {type(exc).__name__}: {exc}", highlight=False)
        raise typer.Exit(2) from None
