"""A real `podbay serve` killed with SIGKILL, or stopped with --keep-pods, and started again on the same state:
its QEMU pods (template clones, the default path) are re-adopted with their files and deadlines; a pod whose
QEMU died meanwhile, and a runc pod, end with their reasons; nothing is left once the last server stops."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from podbay import Client, NotFound
from podbay.isolation.registry import default_backends
from podbay.isolation.supervise import command_lines_mentioning
from podbay.paths import PodbayPaths

from .conftest import assert_nothing_left, cli_env
from .test_server import PODBAY, free_port, podbay, wait_until_serving

pytestmark = pytest.mark.integration


class Serve:
    """One `podbay serve` process on `paths`; start() again after a stop to restart it on the same state."""

    def __init__(self, paths: PodbayPaths) -> None:
        self.paths = paths
        self.url = f"http://127.0.0.1:{free_port()}"
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self, *options: str) -> None:
        self.starts += 1
        log = (self.paths.state / f"serve-{self.starts}.log").open("wb")
        self.process = subprocess.Popen(
            [*PODBAY, "serve", "--listen", self.url.removeprefix("http://"), "--log-level", "warning", *options],
            env=cli_env(self.paths),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        wait_until_serving(self.url, self.process, self.paths.state / f"serve-{self.starts}.log")

    def stop(self, signum: int) -> None:
        assert self.process is not None
        self.process.send_signal(signum)
        self.process.wait(timeout=120)
        assert "Traceback" not in self.log(), self.log()

    def log(self) -> str:
        return (self.paths.state / f"serve-{self.starts}.log").read_text()


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[tuple[Serve, str]]:
    paths = PodbayPaths(cache=PodbayPaths.from_env().cache, state=tmp_path / "state")
    paths.state.mkdir(parents=True)
    token = podbay(paths, "tokens", "create", "--tenant", "acme").stdout.strip()
    server = Serve(paths)
    try:
        yield server, token
    finally:
        if server.process is not None and server.process.poll() is None:
            server.stop(signal.SIGTERM)
    assert_nothing_left(paths)


def qemu_of(paths: PodbayPaths, pod_id: str) -> list[int]:
    return sorted(command_lines_mentioning(paths.pods / pod_id))


def test_a_killed_server_s_pods_are_re_adopted_by_the_next(serve: tuple[Serve, str]) -> None:
    server, token = serve
    runc = default_backends(server.paths)["runc"].availability().available
    server.start()
    with Client(server.url, token) as client:
        pod = client.create_agent(memory_db=True, timeout_s=120)
        assert pod.files.write("/tmp/note.txt", "still here") == 10
        doomed = client.create_agent()
        container = client.create_agent(backend="runc") if runc else None
        expires_at = pod.info().expires_at
    server.stop(signal.SIGKILL)
    assert qemu_of(server.paths, pod.id), "QEMU outlives a killed server"
    for pid in qemu_of(server.paths, doomed.id):  # this VMM dies while no server runs
        os.kill(pid, signal.SIGKILL)

    server.start()
    with Client(server.url, token) as client:
        again = client.get(pod.id)
        assert again.info().expires_at == pytest.approx(expires_at)
        assert again.files.read("/tmp/note.txt") == b"still here"
        assert again.exec(["echo", "ok"]).stdout == "ok\n"
        assert [info.id for info in client.list()] == [pod.id]
        with pytest.raises(NotFound, match=r"could not be re-attached: its QEMU .* is gone"):
            client.get(doomed.id)
        if container is not None:
            with pytest.raises(NotFound, match="runc sandbox cannot outlive"):
                client.get(container.id)
        deadline = time.monotonic() + 300  # the recorded deadline (120 s from create) is still enforced
        while True:
            try:
                client.get(pod.id)
            except NotFound as gone:
                assert "timeout after 120 s" in str(gone)
                break
            assert time.monotonic() < deadline, "the re-adopted pod outlived its deadline"
            time.sleep(1)
    server.stop(signal.SIGTERM)


def test_keep_pods_hands_the_pods_to_the_next_server(serve: tuple[Serve, str]) -> None:
    server, token = serve
    server.start("--keep-pods")
    with Client(server.url, token) as client:
        pod = client.create_agent()
        pod.files.write("/tmp/kept.txt", "kept")
    server.stop(signal.SIGTERM)
    assert qemu_of(server.paths, pod.id), "--keep-pods leaves the pod running"

    server.start()
    with Client(server.url, token) as client:
        assert client.get(pod.id).files.read("/tmp/kept.txt") == b"kept"
    server.stop(signal.SIGTERM)  # without --keep-pods: destroyed
    assert qemu_of(server.paths, pod.id) == []
