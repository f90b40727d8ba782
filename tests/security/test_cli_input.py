"""Hostile and careless input to the CLI: every refusal is one clear line naming the option, exit status 2,
never a traceback, and no pod is made for a request that was bad from the start."""

from __future__ import annotations

import subprocess
import sys

import pytest

from podbay.paths import PodbayPaths
from tests.integration.conftest import cli_env

pytestmark = pytest.mark.security

BAD_INVOCATIONS = [
    (["run", "--timeout", "nan", "--", "true"], "--timeout"),
    (["run", "--timeout", "0", "--", "true"], "--timeout"),
    (["run", "--timeout", "-3", "--", "true"], "--timeout"),
    (["run", "--timeout", "inf", "--", "true"], "--timeout"),
    (["run", "--memory", "1", "--", "true"], "memory_mib"),
    (["run", "--backend", "hyperv", "--", "true"], "backend"),
    (["run", "--volume", "../../etc", "--", "true"], "volume"),
    (["run", "--volume", "pod-0123456789ab-db", "--", "true"], "volume"),
    (["run", "--env", "NOEQUALS", "--", "true"], "--env"),
    (["run", "--env", "PODBAY_POD_ID=x", "--", "true"], "env"),
    (["run", "--env", "BAD-NAME=x", "--", "true"], "env"),
    (["volume", "export", "../../etc/passwd"], "volume"),
    (["volume", "export", "missing", "--file", "../../etc/shadow"], "file"),
    (["volume", "delete", "missing"], "missing"),
]


@pytest.mark.parametrize(("arguments", "named"), BAD_INVOCATIONS, ids=[" ".join(a) for a, _ in BAD_INVOCATIONS])
def test_bad_cli_input_is_one_clear_error(arguments: list[str], named: str, paths: PodbayPaths) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "podbay.cli", *arguments],
        capture_output=True,
        text=True,
        env=cli_env(paths),
        timeout=60,
    )
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr + result.stdout
    assert named in result.stderr
    assert not (paths.pods.exists() and list(paths.pods.iterdir())), "a pod was made for a bad request"
