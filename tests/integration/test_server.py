"""`podbay serve` as a user runs it: a real server process on a loopback port, tokens made with the CLI, the
SDK and raw HTTP against it; two tenants that never see each other's pods; bad input answered in one shape;
and nothing left on the host once the server stops (it destroys its pods at shutdown)."""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from podbay import Client, Forbidden, NotFound, QuotaExceeded, Unauthorized, Unsupported
from podbay.bench.leaks import processes_mentioning
from podbay.isolation.registry import default_backends
from podbay.paths import PodbayPaths

from .conftest import assert_nothing_left, cli_env

pytestmark = pytest.mark.integration
PODBAY = [sys.executable, "-m", "podbay.cli"]
START_TIMEOUT_S = 60.0


@dataclass
class Server:
    url: str
    paths: PodbayPaths
    token_a: str
    token_b: str
    backend: str
    process: subprocess.Popen[bytes]

    def raw(self, token: str | None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=120)


def podbay(paths: PodbayPaths, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*PODBAY, *args], capture_output=True, text=True, env=cli_env(paths), timeout=60, check=True)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_until_serving(url: str, process: subprocess.Popen[bytes], log_path: Path) -> None:
    """Return once the `podbay serve` at `url` answers /healthz; fail with its log if it exits first."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        assert process.poll() is None, log_path.read_text()
        try:
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, "podbay serve did not answer in time"
        time.sleep(0.2)


def stop_serving(process: subprocess.Popen[bytes]) -> None:
    """A graceful stop (SIGTERM); killed if it has not exited in 120 s (the wait's timeout fails the test)."""
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()


def fastest_backend(paths: PodbayPaths) -> str:
    runc = default_backends(paths)["runc"].availability()
    return "runc" if runc.available else "qemu"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    paths = PodbayPaths(cache=PodbayPaths.from_env().cache, state=tmp_path_factory.mktemp("state"))
    token_a = podbay(paths, "tokens", "create", "--tenant", "acme").stdout.strip()
    token_b = podbay(paths, "tokens", "create", "--tenant", "globex").stdout.strip()
    url = f"http://127.0.0.1:{free_port()}"
    log = (paths.state / "serve.log").open("wb")
    process = subprocess.Popen(
        [*PODBAY, "serve", "--listen", url.removeprefix("http://"), "--log-level", "warning"],
        env=cli_env(paths),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_until_serving(url, process, paths.state / "serve.log")
        yield Server(url, paths, token_a, token_b, fastest_backend(paths), process)
    finally:
        try:
            stop_serving(process)
        finally:
            log.close()
    output = (paths.state / "serve.log").read_text()
    assert "Traceback" not in output, output
    assert_nothing_left(paths)
    with sqlite3.connect(paths.state / "server.db") as db:
        assert db.execute("SELECT count(*) FROM pods WHERE ended_at IS NULL").fetchone()[0] == 0


def test_a_tenant_drives_a_pod_through_the_sdk(server: Server) -> None:
    with Client(server.url, server.token_a) as client:
        pod = client.create_agent(backend=server.backend, env={"TASK": "refund"})
        assert pod.info().state == "running"
        result = pod.exec(["sh", "-c", 'echo "$TASK"; cat; echo oops >&2; exit 3'], stdin=b"from-stdin")
        assert (result.exit_code, result.stdout, result.stderr) == (3, "refund\nfrom-stdin", "oops\n")

        events = list(pod.exec_stream(["sh", "-c", "echo one; sleep 0.3; echo two; echo err >&2; exit 4"]))
        assert events[-1].kind == "exit" and events[-1].result is not None
        assert events[-1].result.exit_code == 4
        stdout = b"".join(event.data for event in events if event.kind == "stdout")
        assert stdout == b"one\ntwo\n"
        assert b"".join(event.data for event in events if event.kind == "stderr") == b"err\n"

        blob = os.urandom(300_000)
        assert pod.files.write("/tmp/blob.bin", blob) == len(blob)
        assert pod.files.read("/tmp/blob.bin") == blob
        assert pod.exec(["wc", "-c", "/tmp/blob.bin"]).stdout.split()[0] == str(len(blob))

        assert [info.id for info in client.list()] == [pod.id]
        pod.pause()
        assert client.get(pod.id).info().state == "paused"
        pod.resume()
        if server.backend == "runc":
            with pytest.raises(Unsupported):
                pod.snapshot("no-snapshots-for-runc")
        pod.destroy()
        with pytest.raises(NotFound) as gone:
            client.get(pod.id)
        assert gone.value.pod_id == pod.id
        assert client.list() == []


def test_another_tenant_gets_404_on_every_pod_route(server: Server) -> None:
    with Client(server.url, server.token_a) as owner:
        pod = owner.create_agent(backend=server.backend)  # left running: the server's shutdown destroys it
    routes = [
        ("GET", f"/pods/{pod.id}", None),
        ("DELETE", f"/pods/{pod.id}", None),
        ("POST", f"/pods/{pod.id}/pause", None),
        ("POST", f"/pods/{pod.id}/resume", None),
        ("POST", f"/pods/{pod.id}/exec", {"argv": ["true"]}),
        ("POST", f"/pods/{pod.id}/exec/stream", {"argv": ["true"]}),
        ("GET", f"/pods/{pod.id}/files?path=/etc/hostname", None),
        ("PUT", f"/pods/{pod.id}/files?path=/tmp/x", None),
        ("POST", f"/pods/{pod.id}/snapshot", {"name": "stolen"}),
        ("POST", f"/pods/{pod.id}/fork", {"n": 1}),
    ]
    with server.raw(server.token_b) as intruder:
        assert intruder.get("/pods").json() == []
        for method, url, body in routes:
            answer = intruder.request(method, url, json=body) if body else intruder.request(method, url, content=b"x")
            assert answer.status_code == 404, (method, url, answer.text)
            assert answer.json()["error"]["type"] == "NotFound", (method, url)
            assert answer.json()["error"]["message"] == f"no pod {pod.id!r}", "the same answer as for no pod at all"
        assert intruder.post("/snapshots/anything/restore").status_code == 404
    with Client(server.url, server.token_a) as owner:
        assert owner.get(pod.id).exec(["echo", "still mine"]).stdout == "still mine\n"


def test_missing_unknown_and_revoked_tokens_answer_401(server: Server) -> None:
    token = podbay(server.paths, "tokens", "create", "--tenant", "acme").stdout.strip()
    with server.raw(token) as fine:
        assert fine.get("/pods").status_code == 200
    podbay(server.paths, "tokens", "revoke", token)
    for bad in (None, "pb_not-a-token", token):
        with server.raw(bad) as client:
            answer = client.get("/pods")
            assert answer.status_code == 401
            assert answer.json()["error"]["type"] == "Unauthorized"
    with Client(server.url, token) as revoked, pytest.raises(Unauthorized, match="revoked"):
        revoked.list()


@pytest.mark.parametrize(
    ("url", "body", "field"),
    [
        ("/pods", b"{not json", None),
        ("/pods", b'{"colour": "red"}', "colour"),
        ("/pods", b'{"memory_mib": -64}', "memory_mib"),
        ("/pods", b'{"disk_mib": "huge"}', "disk_mib"),
        ("/pods", b"[1, 2]", None),
        ("/pods/pod-x/exec", b'{"argv": []}', "argv"),
        ("/pods/pod-x/exec", b'{"argv": ["true"], "stdin": "%%%"}', "stdin"),
        ("/pods/pod-x/fork", b'{"n": -1}', "n"),
    ],
)
def test_bad_input_answers_422_in_the_error_shape(server: Server, url: str, body: bytes, field: str | None) -> None:
    with server.raw(server.token_a) as client:
        answer = client.post(url, content=body, headers={"Content-Type": "application/json"})
    assert answer.status_code == 422, answer.text
    error = answer.json()["error"]
    assert error["type"] == "InvalidSpec" and error["message"]
    if field is not None:
        assert error["field"] == field


def test_the_cli_prints_a_token_once_and_keeps_only_its_hash(server: Server) -> None:
    listing = podbay(server.paths, "tokens", "ls", "--json").stdout
    assert server.token_a not in listing and "acme" in listing
    assert server.token_a.encode() not in Path(server.paths.state / "server.db").read_bytes()


def test_a_client_that_leaves_a_stream_early_kills_the_command(server: Server) -> None:
    listing = "for f in /proc/[0-9]*/cmdline; do tr '\\0' ' ' < $f; echo; done"
    with Client(server.url, server.token_a) as client, client.create_agent(backend=server.backend) as pod:
        for event in pod.exec_stream(["sh", "-c", "echo started; exec sleep 37"]):
            assert event.kind == "stdout"
            break
        deadline = time.monotonic() + 10
        while "sleep 37" in pod.exec(["sh", "-c", listing]).stdout:
            assert time.monotonic() < deadline, "the abandoned command still runs"
            time.sleep(0.2)


def test_snapshots_belong_to_their_tenant(server: Server) -> None:
    if not default_backends(server.paths)["qemu"].availability().available:
        pytest.skip("snapshots need the qemu backend")
    with Client(server.url, server.token_a) as owner, owner.create_agent() as pod:
        pod.files.write("/tmp/note", b"before")
        assert pod.snapshot("tenant-a-snap").path == "", "the server's paths stay on the server"
        with owner.restore("tenant-a-snap") as copy:
            assert copy.files.read("/tmp/note") == b"before"
    with server.raw(server.token_b) as intruder:
        answer = intruder.post("/snapshots/tenant-a-snap/restore")
        assert answer.status_code == 404
        assert answer.json()["error"]["message"] == "no snapshot 'tenant-a-snap'"


def test_a_pod_is_destroyed_at_its_timeout_and_can_be_extended(server: Server) -> None:
    with Client(server.url, server.token_a) as client:
        pod = client.create_agent(backend=server.backend, timeout_s=2)
        sandbox = pod.info().sandbox
        pod.set_timeout(6)  # extended: alive past the original deadline
        expires_at = pod.info().expires_at
        assert expires_at is not None and expires_at > time.time() + 3
        time.sleep(3.5)
        assert pod.exec(["true"]).ok
        deadline = time.monotonic() + 30
        while pod.id in {info.id for info in client.list()} and time.monotonic() < deadline:
            time.sleep(0.2)
        assert pod.id not in {info.id for info in client.list()}, "destroyed at the new deadline"
        with pytest.raises(NotFound, match="timeout after 6 s"):
            pod.info()
        assert sandbox is not None and sandbox.pid is None, "a tenant never learns the host's pids"
        run_dir = server.paths.pods / pod.id
        while run_dir.exists() and time.monotonic() < deadline:  # the teardown may still be finishing
            time.sleep(0.1)
        assert not run_dir.exists()
        assert processes_mentioning(run_dir) == [], "its processes are gone"


WRITE_NOTE = (
    "import os, sqlite3; db = sqlite3.connect(os.environ['PODBAY_DB_PATH']); "
    "db.execute('CREATE TABLE notes (text TEXT)'); db.execute(\"INSERT INTO notes VALUES ('kept')\"); db.commit()"
)
TABLES = (
    "import os, sqlite3; db = sqlite3.connect(os.environ['PODBAY_DB_PATH']); "
    "print([row[0] for row in db.execute('SELECT name FROM sqlite_master')])"
)
READ_NOTES = (
    "import os, sqlite3; db = sqlite3.connect(os.environ['PODBAY_DB_PATH']); "
    "print([row[0] for row in db.execute('SELECT text FROM notes')])"
)


def test_a_tenants_volume_keeps_its_database_across_pods_and_is_its_own(server: Server) -> None:
    """Tenant A writes to its volume "customer-42" in one pod and reads it back in the next; tenant B's
    "customer-42" is another volume, empty; neither answer names where the volume lives on the host."""
    spec = {"backend": server.backend, "memory_db": True, "volume": "customer-42", "volume_mib": 32}
    with Client(server.url, server.token_a) as a, Client(server.url, server.token_b) as b:
        with a.create_agent(**spec) as first:
            wrote = first.exec(["python3", "-c", WRITE_NOTE])
            assert wrote.ok, wrote.stderr
            info = first.info()
            assert info.volume == "customer-42" and info.sandbox is not None and info.sandbox.pid is None
        with a.create_agent(**spec) as second:
            assert second.exec(["python3", "-c", READ_NOTES]).stdout == "['kept']\n"
        with b.create_agent(**spec) as theirs:
            assert theirs.exec(["python3", "-c", TABLES]).stdout == "[]\n", "B's customer-42 is not A's"
        assert [(v.name, v.attached) for v in a.volumes()] == [("customer-42", False)]
        assert [v.name for v in b.volumes()] == ["customer-42"]
        with server.raw(server.token_b) as intruder:
            assert intruder.get("/volumes/customer-43").status_code == 404
        b.delete_volume("customer-42")
        with a.create_agent(**spec) as third:  # B's delete took B's volume only
            assert third.exec(["python3", "-c", READ_NOTES]).stdout == "['kept']\n"
        a.delete_volume("customer-42")
        assert a.volumes() == [] and not any(server.paths.volumes.glob("*.ext4"))


def test_an_admin_token_from_the_cli_manages_tenants_over_the_api(server: Server) -> None:
    admin_token = podbay(server.paths, "tokens", "create", "--admin").stdout.strip()
    with Client(server.url, admin_token) as admin:
        admin.admin.create_tenant("initech")
        token = admin.admin.create_token("initech").token
        admin.admin.set_quota("initech", volumes=1)
        with Client(server.url, token) as initech:
            assert initech.list() == [] and initech.volumes() == []
            initech.create_volume("only-one", size_mib=16)
            with pytest.raises(QuotaExceeded, match="1 volumes \\+ 1 = 2 > quota 1"):
                initech.create_volume("two", size_mib=16)
            with pytest.raises(Forbidden):
                initech.admin.tenants()
            initech.delete_volume("only-one")
        with pytest.raises(Forbidden, match="acts for no tenant"):
            admin.list()
        assert admin.admin.delete_tenant("initech").name == "initech"
        assert "initech" not in [tenant.name for tenant in admin.admin.tenants()]
