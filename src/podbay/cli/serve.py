"""`podbay serve --listen HOST:PORT [--pool SIZE[:BACKEND]]...`: the REST API (FastAPI under uvicorn) over one
platform, with warm pools filling in the background from the start."""

from __future__ import annotations

import signal
from pathlib import Path

import typer

from podbay.cli.common import errors
from podbay.errors import InvalidSpec
from podbay.metering import PriceTable


def serve(
    listen: str = typer.Option("127.0.0.1:8080", "--listen", help="HOST:PORT to listen on (loopback by default)"),
    log_level: str = typer.Option("info", "--log-level", help="uvicorn's log level: debug, info, warning, error"),
    log_format: str = typer.Option(
        "text", "--log-format", help="json: one JSON object per log line (request id, tenant, pod id); or text"
    ),
    prices: Path | None = typer.Option(
        None, "--prices", help="a JSON price table (PriceTable's fields; those left out keep their defaults)"
    ),
    pool: list[str] = typer.Option(
        [], "--pool", help="SIZE[:BACKEND]: keep a warm pool of this size (repeatable; filled in the background)"
    ),
    keep_pods: bool = typer.Option(
        False,
        "--keep-pods",
        help="at shutdown, leave the pods that can outlive the server (qemu) running for the next `podbay serve` "
        "on the same state to re-adopt (an upgrade); others are destroyed",
    ),
) -> None:
    """Serve pods over HTTP to the holders of API tokens (`podbay tokens create`); Ctrl-C or SIGTERM stops it
    and destroys its pods (unless --keep-pods). At start it re-adopts the pods a previous server on the same
    state left running (a restart, or a kill -9). State: PODBAY_STATE (the registry is server.db there)."""
    host, sep, port_text = listen.rpartition(":")
    if not sep or not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise typer.BadParameter(f"{listen!r} is not HOST:PORT (e.g. 127.0.0.1:8080)", param_hint="--listen")
    try:
        table = PriceTable.load(prices) if prices is not None else None
    except (OSError, ValueError) as exc:
        raise typer.BadParameter(f"{prices}: {exc}", param_hint="--prices") from None
    from podbay.server.startup_pools import parse_pool  # fastapi: only the server needs it

    try:
        pools = [parse_pool(text) for text in pool]
    except InvalidSpec as exc:
        raise typer.BadParameter(str(exc), param_hint="--pool") from None
    if log_format not in ("json", "text"):
        raise typer.BadParameter(f"{log_format!r} is neither json nor text", param_hint="--log-format")
    if log_level.lower() not in ("critical", "error", "warning", "info", "debug"):
        raise typer.BadParameter(f"{log_level!r} is not a log level", param_hint="--log-level")
    import uvicorn  # only the server needs it

    from podbay.server import create_app
    from podbay.server.observability import configure_logging

    configure_logging(log_format, log_level)

    config = uvicorn.Config(
        create_app(prices=table, keep_pods=keep_pods, pools=pools),
        host=host.strip("[]"),
        port=int(port_text),
        log_level=log_level,
        access_log=False,
        log_config=None,  # configure_logging's handler: podbay's one access line per request, text or JSON
    )
    server = uvicorn.Server(config)
    # uvicorn shuts down cleanly on SIGINT and SIGTERM; a closed terminal (SIGHUP) must too, not raise
    # SystemExit in the middle of the event loop.
    signal.signal(signal.SIGHUP, server.handle_exit)
    errors.print(f"podbay: serving on http://{host}:{port_text}", highlight=False)
    server.run()
