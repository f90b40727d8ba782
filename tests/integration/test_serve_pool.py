"""`podbay serve --pool SIZE:BACKEND` as a user runs it: the pool is there from the start (an admin token made
with the CLI sees it), and a tenant's first pod of that shape is claimed from it."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from podbay import Client
from podbay.paths import PodbayPaths

from .conftest import assert_nothing_left, cli_env
from .test_server import PODBAY, fastest_backend, free_port, podbay, stop_serving, wait_until_serving

pytestmark = pytest.mark.integration
FILL_WAIT_S = 300.0


def test_serve_warms_its_pool_from_the_start(tmp_path: Path) -> None:
    paths = PodbayPaths(cache=PodbayPaths.from_env().cache, state=tmp_path / "state")
    backend = fastest_backend(paths)
    token = podbay(paths, "tokens", "create", "--tenant", "acme").stdout.strip()
    admin_token = podbay(paths, "tokens", "create", "--admin").stdout.strip()
    listen = f"127.0.0.1:{free_port()}"
    url = f"http://{listen}"
    log_path = tmp_path / "serve.log"
    with log_path.open("wb") as log:
        server = subprocess.Popen(
            [*PODBAY, "serve", "--listen", listen, "--pool", f"1:{backend}", "--log-level", "warning"],
            env=cli_env(paths),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            wait_until_serving(url, server, log_path)
            with Client(url, admin_token, timeout=FILL_WAIT_S + 30) as admin:
                (pool,) = admin.admin.pools()
                assert (pool.size, pool.shape.backend) == (1, backend), "asked for at the start, by no request"
                assert admin.admin.ensure_pool(1, backend=backend, wait_s=FILL_WAIT_S).idle == 1
            with Client(url, token) as client:
                pod = client.create_agent(backend=backend)
                assert str(pod.info().origin) == "pool claim"
                assert pod.exec(["echo", "warm"]).stdout == "warm\n"
                pod.destroy()
        finally:
            stop_serving(server)
    assert "Traceback" not in log_path.read_text()
    assert_nothing_left(paths)
