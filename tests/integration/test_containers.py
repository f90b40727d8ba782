"""Container pods end to end, under real runc and real runsc (gVisor, ptrace platform), over the cached rootfs."""

from __future__ import annotations

import json
import shutil
import signal
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from podbay import GuestError, InvalidSpec, Platform
from podbay.isolation.base import Backend
from podbay.isolation.gvisor import GVISOR, GvisorBackend
from podbay.isolation.oci import RuntimeProfile, mounts_under
from podbay.isolation.runc import RUNC, RuncBackend
from podbay.paths import PodbayPaths

pytestmark = pytest.mark.integration

PROFILES = {"runc": RUNC, "gvisor": GVISOR}
WRITE = """
import os, sqlite3
db = sqlite3.connect(os.environ["PODBAY_DB_PATH"])
db.execute("CREATE TABLE IF NOT EXISTS notes (text TEXT)")
db.execute("INSERT INTO notes VALUES (?)", (os.environ["NOTE"],))
db.commit()
print(db.execute("SELECT COUNT(*) FROM notes").fetchone()[0])
"""
PROCESS_NAMES = "import os; print([open(f'/proc/{p}/comm').read() for p in os.listdir('/proc') if p.isdigit()])"


def container_backends(paths: PodbayPaths, rootfs_dir: Path | None = None) -> dict[str, Backend]:
    return {"runc": RuncBackend(paths, rootfs_dir), "gvisor": GvisorBackend(paths, rootfs_dir)}


def processes_mentioning(text: str) -> list[str]:
    found = []
    for entry in Path("/proc").iterdir():
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if entry.name.isdigit() and text in cmdline:
            found.append(f"{entry.name}: {cmdline}")
    return found


def containers_under(profile: RuntimeProfile, root: Path) -> list[str]:
    """Containers the runtime still knows of whose bundle is under `root`."""
    listing = subprocess.run(
        profile.command("list", "--format=json"), capture_output=True, text=True, check=True
    ).stdout
    return [c["id"] for c in json.loads(listing) or [] if c.get("bundle", "").startswith(str(root))]


def assert_no_container_left(paths: PodbayPaths, backend: str) -> None:
    assert processes_mentioning(str(paths.state)) == [], "a runtime, sandbox or gofer process outlived its pod"
    assert mounts_under(paths.state) == [], "a root overlay or volume is still mounted"
    assert containers_under(PROFILES[backend], paths.state) == [], "the runtime still lists the container"
    assert not paths.pods.exists() or list(paths.pods.iterdir()) == []


@pytest.fixture(params=["runc", "gvisor"])
def backend(request: pytest.FixtureRequest) -> str:
    binary = PROFILES[request.param].binary
    if shutil.which(binary) is None:
        pytest.skip(f"{binary} is not installed (Debian package {PROFILES[request.param].package})")
    return str(request.param)


@pytest.fixture
def containers(vm_paths: PodbayPaths, backend: str) -> Iterator[Platform]:
    with Platform(vm_paths, backends=container_backends(vm_paths)) as platform:
        yield platform
    assert_no_container_left(vm_paths, backend)


def test_exec_gives_exit_codes_and_both_streams(containers: Platform, backend: str) -> None:
    with containers.create_agent(backend=backend) as pod:
        result = pod.exec(["sh", "-c", "echo out; echo err >&2; exit 7"])
        assert (result.exit_code, result.stdout, result.stderr) == (7, "out\n", "err\n")
        assert pod.exec(["true"]).ok
        assert pod.exec(["python3", "-c", "import os; print(os.getcwd())"]).stdout == "/work\n"


def test_sandbox_info_says_what_isolates_the_pod(containers: Platform, backend: str) -> None:
    with containers.create_agent(backend=backend) as pod:
        info = pod.info().sandbox
        assert info is not None and info.backend == backend
        if backend == "runc":
            assert (info.isolation, info.accelerator, info.security_boundary) == ("container (runc)", "none", False)
            assert "host kernel" in info.note
        else:
            assert (info.isolation, info.accelerator, info.security_boundary) == (
                "gvisor (user-space kernel)",
                "ptrace",
                True,
            )


def test_the_pod_is_confined(containers: Platform, backend: str) -> None:
    probe = (
        "import os, socket; status = open('/proc/self/status').read();"
        "print(socket.gethostname());"
        "print(open('/proc/1/cmdline').read().split(chr(0))[3]);"
        "print([line.split(':')[0].strip() for line in open('/proc/net/dev').readlines()[2:]]);"
        "print(status.split('CapEff:')[1].split()[0])"
    )
    with containers.create_agent(backend=backend) as pod:
        hostname, pid1, interfaces, capabilities = pod.exec(["python3", "-c", probe]).stdout.splitlines()
        assert hostname == "pod"
        assert pid1 == "/usr/lib/podbay/agent.py", "the agent is PID 1 of the pod's own PID namespace"
        assert interfaces == "['lo']", "a fresh network namespace with loopback only"
        assert int(capabilities, 16) == 0x20000420, "only CAP_KILL, CAP_NET_BIND_SERVICE, CAP_AUDIT_WRITE"
        if backend == "runc":  # gVisor's own user namespaces are inside the sentry: harmless there
            denied = pod.exec(["unshare", "--user", "true"])
            assert denied.exit_code != 0 and "not permitted" in denied.stderr


def test_env_and_context_are_injected(containers: Platform, backend: str) -> None:
    with containers.create_agent(backend=backend, env={"TASK": "refund"}, context={"ticket": 981}) as pod:
        script = "import json, os; print(os.environ['TASK'], json.load(open(os.environ['PODBAY_CONTEXT_FILE'])))"
        assert pod.exec(["python3", "-c", script]).stdout == "refund {'ticket': 981}\n"
        assert pod.exec(["sh", "-c", "echo $PODBAY_POD_ID"]).stdout.strip() == pod.id


def test_files_round_trip(containers: Platform, backend: str) -> None:
    with containers.create_agent(backend=backend) as pod:
        assert pod.files.write("/work/notes/a.txt", "hello\n") == 6
        assert pod.files.read("/work/notes/a.txt") == b"hello\n"
        assert pod.exec(["cat", "/work/notes/a.txt"]).stdout == "hello\n"
        assert [entry.name for entry in pod.files.list("/work/notes")] == ["a.txt"]
        assert pod.files.stat("/work/notes").type == "dir"


def test_coreutils_stat_works_except_under_this_old_gvisor(containers: Platform, backend: str) -> None:
    with containers.create_agent(backend=backend) as pod:
        result = pod.exec(["ls", "-ld", "/work"])
        if backend == "runc":
            assert result.ok and result.stdout.startswith("d")
        else:  # runsc 20221219 refuses statx(AT_NO_AUTOMOUNT); see podbay.isolation.gvisor
            assert result.exit_code == 2 and "Invalid argument" in result.stderr


def test_writes_to_the_root_stay_in_the_pods_own_layer(containers: Platform, backend: str) -> None:
    with containers.create_agent(backend=backend) as first:
        assert first.exec(["sh", "-c", "echo mine > /etc/podbay-probe && rm /etc/hostname"]).ok
        with containers.create_agent(backend=backend) as second:
            assert second.exec(["test", "-e", "/etc/podbay-probe"]).exit_code == 1
            assert second.exec(["test", "-e", "/etc/hostname"]).ok, "the shared tree is untouched"


def test_a_volume_carries_the_database_from_pod_to_pod_and_to_the_host(
    containers: Platform, backend: str, tmp_path: Path
) -> None:
    with containers.create_agent(backend=backend, memory_db=True, volume="v1", env={"NOTE": "first"}) as first:
        assert first.exec(["python3", "-c", WRITE]).stdout == "1\n"
    with containers.create_agent(backend=backend, memory_db=True, volume="v1", env={"NOTE": "second"}) as second:
        assert second.exec(["python3", "-c", WRITE]).stdout == "2\n", "the second pod sees the first pod's row"
    exported = containers.volumes.export("v1", tmp_path / "memory.db")
    rows = sqlite3.connect(exported).execute("SELECT text FROM notes").fetchall()
    assert rows == [("first",), ("second",)]


def test_a_timeout_kills_the_command_and_its_children(containers: Platform, backend: str) -> None:
    with containers.create_agent(backend=backend) as pod:
        result = pod.exec(["sh", "-c", "sleep 60 & sleep 60"], timeout=1)
        assert result.timed_out and result.signal == signal.SIGKILL
        assert "sleep" not in pod.exec(["python3", "-c", PROCESS_NAMES]).stdout


def test_pause_and_resume(containers: Platform, backend: str) -> None:
    pod = containers.create_agent(backend=backend)
    pod.pause()
    pod.resume()
    assert pod.exec(["echo", "awake"]).stdout == "awake\n"
    pod.pause()
    pod.destroy()  # a paused pod is resumed, shut down and removed like any other


def test_a_runtime_that_fails_is_reported_with_its_stderr(vm_paths: PodbayPaths, backend: str, tmp_path: Path) -> None:
    empty_rootfs = tmp_path / "empty-rootfs"
    empty_rootfs.mkdir()
    with Platform(vm_paths, backends=container_backends(vm_paths, empty_rootfs)) as platform:
        with pytest.raises(GuestError, match="before the agent answered") as caught:
            platform.create_agent(backend=backend, memory_db=True, volume="survivor")
        assert f"{PROFILES[backend].binary} stderr" in str(caught.value)
        assert not platform.volumes.info("survivor").attached, "a failed create must release the volume"
    assert_no_container_left(vm_paths, backend)


def test_network_is_refused_naming_the_field(containers: Platform, backend: str) -> None:
    with pytest.raises(InvalidSpec, match="network"):
        containers.create_agent(backend=backend, network=True)
