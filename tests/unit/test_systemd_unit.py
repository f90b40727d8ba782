"""contrib/podbay.service starts a real CLI command with options it accepts, and its state and cache
directories are the ones podbay is told to use."""

from __future__ import annotations

import configparser
import shlex
from pathlib import Path

import typer

from podbay.cli.main import app

UNIT = Path(__file__).parents[2] / "contrib" / "podbay.service"


def unit() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # systemd keys are case-sensitive
    parser.read_string(UNIT.read_text())
    return parser


def test_exec_start_names_a_cli_command_with_options_it_accepts() -> None:
    argv = shlex.split(unit()["Service"]["ExecStart"])
    assert Path(argv[0]).name == "podbay"
    cli = typer.main.get_command(app)
    command = cli.get_command(cli.make_context("podbay", argv[1:2]), argv[1])  # type: ignore[attr-defined]
    assert command is not None, f"no `podbay {argv[1]}`"
    command.make_context(argv[1], argv[2:])  # raises on an unknown option or a bad value


def test_the_state_and_cache_live_where_systemd_keeps_them() -> None:
    service = unit()["Service"]
    environment: dict[str, str] = {}
    for line in UNIT.read_text().splitlines():
        if line.startswith("Environment="):
            name, _, value = line.removeprefix("Environment=").partition("=")
            environment[name] = value
    assert environment["PODBAY_STATE"] == f"/var/lib/{service['StateDirectory']}"
    assert environment["PODBAY_CACHE"] == f"/var/cache/{service['CacheDirectory']}"
    assert "MemoryDenyWriteExecute" not in service, "QEMU's TCG writes and runs code"
    assert service["KillMode"] == "mixed", "podbay itself must get SIGTERM first, to destroy its pods"
