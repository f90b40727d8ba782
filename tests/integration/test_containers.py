"""What only containers have, under real runc and real runsc (gVisor, ptrace platform): their confinement, the
runtime's failures, a paused container's teardown. The behaviours every backend shares are in test_pod_exec.py
and test_pod_lifecycle.py, run over every backend."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from podbay import GuestError, Platform
from podbay.bench.leaks import loop_devices_under
from podbay.isolation.base import Backend
from podbay.isolation.gvisor import GVISOR, GvisorBackend
from podbay.isolation.oci import RuntimeProfile, mounts_under
from podbay.isolation.runc import RUNC, RuncBackend
from podbay.paths import PodbayPaths

from .conftest import processes_mentioning

pytestmark = pytest.mark.integration

PROFILES = {"runc": RUNC, "gvisor": GVISOR}


def container_backends(paths: PodbayPaths, rootfs_dir: Path | None = None) -> dict[str, Backend]:
    return {"runc": RuncBackend(paths, rootfs_dir), "gvisor": GvisorBackend(paths, rootfs_dir)}


def containers_under(profile: RuntimeProfile, root: Path) -> list[str]:
    """Containers the runtime still knows of whose bundle is under `root`."""
    listing = subprocess.run(
        profile.command("list", "--format=json"), capture_output=True, text=True, check=True
    ).stdout
    return [c["id"] for c in json.loads(listing) or [] if c.get("bundle", "").startswith(str(root))]


def assert_no_container_left(paths: PodbayPaths, backend: str) -> None:
    assert processes_mentioning(paths.state) == [], "a runtime, sandbox or gofer process outlived its pod"
    assert mounts_under(paths.state) == [], "a root overlay, layer or volume is still mounted"
    assert loop_devices_under(paths.state) == [], "a layer's or volume's loop device is still attached"
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


def test_coreutils_stat_works_except_under_this_old_gvisor(containers: Platform, backend: str) -> None:
    with containers.create_agent(backend=backend) as pod:
        result = pod.exec(["ls", "-ld", "/work"])
        if backend == "runc":
            assert result.ok and result.stdout.startswith("d")
        else:  # runsc 20221219 refuses statx(AT_NO_AUTOMOUNT); see podbay.isolation.gvisor
            assert result.exit_code == 2 and "Invalid argument" in result.stderr


def test_a_paused_container_is_destroyed_cleanly(containers: Platform, backend: str) -> None:
    pod = containers.create_agent(backend=backend)
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
