"""`podbay bench create`: measured figures as JSON plus a one-line summary."""

from __future__ import annotations

import json

import typer

from podbay.bench.create import bench_create, summary
from podbay.cli.common import console, reported_errors
from podbay.sync import Platform

app = typer.Typer(no_args_is_help=True, help="Benchmarks (JSON plus a one-line summary).")


@app.command("create")
def create(
    n: int = typer.Option(10, "--n", min=1, help="pods to create, one after another"),
    backend: str = typer.Option("qemu", "--backend"),
    as_json: bool = typer.Option(False, "--json", help="print the JSON result"),
) -> None:
    """Cold create → first exec result (median, p90), exec round trip, host memory per pod (USS/PSS)."""
    with reported_errors(), Platform() as platform:
        result = bench_create(platform, n, backend)
    if as_json:
        print(json.dumps(result, indent=2))
    console.print(summary(result), highlight=False)
