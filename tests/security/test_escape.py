"""Escape attempts from inside a pod, on every backend: the host's files, the host's processes, the host's
network and loopback services, other pods' files, processes and names, and the VMM's own privileges."""

from __future__ import annotations

import secrets
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from podbay import Platform, Pod
from tests.integration.conftest import ALL_BACKENDS, skip_unless_available

pytestmark = [pytest.mark.integration, pytest.mark.security]
VM_BACKENDS = ("qemu", "qemu-q35", "firecracker")


@pytest.fixture(scope="module", params=ALL_BACKENDS)
def two_pods(request: pytest.FixtureRequest, shared_platform: Platform) -> Iterator[tuple[Pod, Pod]]:
    """Two pods side by side, each with a volume (a VM's volume never goes to a container: names per backend)."""
    backend = request.param
    skip_unless_available(shared_platform, backend)
    first = shared_platform.create_agent(backend=backend, memory_db=True, volume=f"alpha-secret-name-{backend}")
    second = shared_platform.create_agent(backend=backend, memory_db=True, volume=f"bravo-secret-name-{backend}")
    try:
        yield first, second
    finally:
        first.destroy()
        second.destroy()


class LoopbackService:
    """A TCP service on the host's loopback that records every connection it accepts."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.accepted = 0
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                connection, _ = self.listener.accept()
            except OSError:
                return
            self.accepted += 1
            connection.close()

    def close(self) -> None:
        self.listener.close()


REACH = """
import socket, sys
port = int(sys.argv[1])
for host in sys.argv[2:]:
    try:
        socket.create_connection((host, port), timeout=2).close()
        print("reached", host)
    except OSError as exc:
        print("refused", host, type(exc).__name__)
"""


def host_addresses() -> list[str]:
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        probe.connect(("192.0.2.1", 9))  # no packet is sent: this only picks the outgoing interface's address
        return [probe.getsockname()[0]]
    except OSError:
        return []
    finally:
        probe.close()


def test_the_pod_cannot_reach_the_hosts_network_or_loopback_services(two_pods: tuple[Pod, Pod]) -> None:
    pod, _ = two_pods
    service = LoopbackService()
    try:
        targets = ["127.0.0.1", "10.0.2.2", "172.17.0.1", *host_addresses()]
        result = pod.exec(["python3", "-c", REACH, str(service.port), *targets], timeout=60)
    finally:
        service.close()
    assert "reached" not in result.stdout, result.stdout
    assert service.accepted == 0


def test_the_pod_sees_neither_host_files_nor_host_processes(two_pods: tuple[Pod, Pod], tmp_path: Path) -> None:
    pod, _ = two_pods
    token = secrets.token_hex(16)
    marker = tmp_path / "host-secret"
    marker.write_text(token)
    script = """
import os
print("marker", os.path.exists(os.environ["MARKER"]))
names = []
for pid in os.listdir("/proc"):
    if pid.isdigit():
        try:
            names.append(open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\\0", b" ").decode())
        except OSError:
            pass
print("host-process-visible", any(os.environ["NEEDLE"] in name for name in names))
"""
    result = pod.exec(["python3", "-c", script], env={"NEEDLE": "pytest", "MARKER": str(marker)}, timeout=60)
    assert "marker False" in result.stdout
    assert "host-process-visible False" in result.stdout


FIND_NAMES = """
import os, sys
needles = [n.encode() for n in sys.argv[1:]]
roots = ["/sys/block", "/sys/class/block", "/sys/devices/virtual/block", "/sys/dev/block", "/sys/class/bdi",
         "/sys/devices/virtual/bdi", "/sys/fs/ext4", "/sys/fs/cgroup", "/sys/kernel/mm", "/proc/fs", "/proc/mounts",
         "/proc/self/mountinfo", "/proc/1/mountinfo", "/proc/partitions", "/proc/diskstats", "/proc/self/cgroup",
         "/work", "/tmp", "/run", "/data"]
found = set()
budget = 30000
def check(path):
    global budget
    budget -= 1
    try:
        with open(path, "rb") as f:
            data = f.read(1 << 16)
    except OSError:
        return
    found.update(f"{n.decode()} in {path}" for n in needles if n in data)
for root in roots:
    if os.path.isfile(root):
        check(root)
        continue
    for folder, dirs, files in os.walk(root, followlinks=False):
        for name in files + dirs:
            found.update(f"{n.decode()} named {folder}/{name}" for n in needles if n in name.encode())
        for name in files:
            if budget > 0:
                check(os.path.join(folder, name))
print(sorted(found))
"""


def test_a_pod_sees_nothing_of_another_pod(two_pods: tuple[Pod, Pod]) -> None:
    first, second = two_pods
    token = secrets.token_hex(16)
    second.files.write("/work/secret.txt", token)
    second.exec(["sh", "-c", f"echo {token} > /tmp/secret; sleep 600 > /dev/null 2>&1 &"])
    needles = [token, "bravo-secret-name", second.id]
    result = first.exec(["python3", "-c", FIND_NAMES, *needles], timeout=120)
    assert result.stdout.strip() == "[]", f"pod {first.id} found traces of pod {second.id}: {result.stdout}"
    processes = first.exec(["sh", "-c", "cat /proc/[0-9]*/cmdline | tr '\\0' ' '"]).stdout
    assert "sleep 600" not in processes


def vmm_status(pod: Pod) -> dict[str, str]:
    pid = pod.info().sandbox.pid  # type: ignore[union-attr]
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        fields[name] = value.strip()
    return fields


@pytest.mark.parametrize("backend", ["qemu", "qemu-q35", "firecracker"])
def test_each_vmm_runs_unprivileged_under_its_own_uid(shared_platform: Platform, backend: str) -> None:
    skip_unless_available(shared_platform, backend)
    pods = [shared_platform.create_agent(backend=backend) for _ in range(2)]
    try:
        statuses = [vmm_status(pod) for pod in pods]
    finally:
        for pod in pods:
            pod.destroy()
    uids = [status["Uid"].split()[0] for status in statuses]
    assert "0" not in uids
    assert uids[0] != uids[1], "two VMMs share a uid: one VMM escape would reach the other"
    assert all(status["Seccomp"] == "2" for status in statuses)
    assert all(status["CapEff"] == "0000000000000000" for status in statuses)
