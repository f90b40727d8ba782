"""Snapshots without QEMU: the manifest and its checks, the restored pod's disks, sparse copies across
filesystems, and the guest agent's freeze/thaw bookkeeping (with the ioctls recorded, never run on the host)."""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from podbay.errors import Conflict, GuestError, InvalidSpec, NotFound
from podbay.guest import agent as guest
from podbay.isolation.base import SandboxConfig, VolumeAttachment
from podbay.isolation.qemu.snapshot import Snapshot, SnapshotDisk, VmImage, _restore_disks, sparse_copy

MIB = 1 << 20


def snapshot_dir(root: Path, memory_mib: int = 4) -> Snapshot:
    """A snapshot directory with files of the right sizes (contents do not matter without QEMU)."""
    path = root / "snap"
    path.mkdir()
    snapshot = Snapshot(
        path=path,
        vm=VmImage(Path("/k"), Path("/r"), "tcg", 1000),
        vcpus=1,
        memory_mib=memory_mib,
        ram="file",
        layer_size=2 * MIB,
        disks=(SnapshotDisk(0, MIB, "/data"), SnapshotDisk(1, MIB, None)),
        frozen=("layer", "/data"),
        state_bytes=100,
    )
    (path / "state").write_bytes(b"s" * 100)
    for name, size in (("memory", memory_mib * MIB), ("layer.ext4", 2 * MIB), ("vol0.img", MIB)):
        with open(path / name, "wb") as file:
            file.seek(size - 5)
            file.write(name[:5].encode().ljust(5, b"."))
    (path / "meta.json").write_text(json.dumps(snapshot.to_meta()))
    return snapshot


def pod_config(run_dir: Path, volumes: tuple[VolumeAttachment, ...] = (), memory_mib: int = 4) -> SandboxConfig:
    run_dir.mkdir(exist_ok=True)
    return SandboxConfig(pod_id="p", run_dir=run_dir, vcpus=1, memory_mib=memory_mib, layer=None, volumes=volumes)


def test_a_saved_manifest_loads_back_whole(tmp_path: Path) -> None:
    saved = snapshot_dir(tmp_path)
    loaded = Snapshot.load(saved.path)
    assert dataclasses.replace(loaded, timings={}) == saved
    assert [disk.file for disk in loaded.volumes] == ["vol0.img"]


@pytest.mark.parametrize(
    ("damage", "error", "words"),
    [
        (lambda p: p.rename(p.parent / "elsewhere"), NotFound, "no snapshot"),
        (lambda p: (p / "meta.json").unlink(), NotFound, "meta.json is missing"),
        (lambda p: (p / "meta.json").write_text("{"), GuestError, "corrupt meta.json"),
        (lambda p: (p / "meta.json").write_text('{"format": 99}'), GuestError, "corrupt meta.json"),
        (lambda p: (p / "vol0.img").unlink(), GuestError, "vol0.img is missing"),
        (lambda p: os.truncate(p / "memory", MIB), GuestError, "memory has 1048576 bytes"),
        (lambda p: os.truncate(p / "state", 10), GuestError, "state has 10 bytes, not 100"),
    ],
)
def test_a_damaged_snapshot_is_refused_saying_what_is_wrong(
    tmp_path: Path, damage: Callable[[Path], Any], error: type[Exception], words: str
) -> None:
    path = snapshot_dir(tmp_path).path
    damage(path)
    with pytest.raises(error, match=words.replace(".", r"\.")):
        Snapshot.load(path)


def test_meta_values_are_checked(tmp_path: Path) -> None:
    path = snapshot_dir(tmp_path).path
    meta = json.loads((path / "meta.json").read_text())
    for field, bad in (("memory_mib", 0), ("vcpus", True), ("ram", "disk"), ("disks", [{"index": 0}])):
        (path / "meta.json").write_text(json.dumps({**meta, field: bad}))
        with pytest.raises(GuestError, match="corrupt"):
            Snapshot.load(path)


def test_a_restored_pod_gets_its_own_copies_of_the_disks(tmp_path: Path) -> None:
    snapshot = snapshot_dir(tmp_path)
    config = _restore_disks(snapshot, pod_config(tmp_path / "pod"))
    assert config.layer == tmp_path / "pod" / "layer.ext4"
    assert [(v.image.name, v.target) for v in config.volumes] == [("vol0.img", "/data"), ("slot1.img", "")]
    for copy, original in ((config.layer, snapshot.layer), (config.volumes[0].image, snapshot.path / "vol0.img")):
        assert copy.read_bytes() == original.read_bytes()
        assert not os.path.samefile(copy, original)
    assert config.volumes[1].image.stat().st_size == MIB
    assert config.layer.stat().st_blocks * 512 < MIB, "holes stay holes"


def test_a_restore_into_given_volume_files(tmp_path: Path) -> None:
    snapshot = snapshot_dir(tmp_path)
    target = tmp_path / "named-volume.ext4"
    given = (VolumeAttachment(name="db", image=target, target="/data", lock_fd=7),)
    config = _restore_disks(snapshot, pod_config(tmp_path / "pod", given))
    assert config.volumes[0] == given[0] and target.read_bytes() == (snapshot.path / "vol0.img").read_bytes()


def test_restore_refusals_leave_no_files(tmp_path: Path) -> None:
    snapshot = snapshot_dir(tmp_path)
    with pytest.raises(InvalidSpec, match="memory_mib"):
        _restore_disks(snapshot, pod_config(tmp_path / "a", memory_mib=8))
    wrong_target = (VolumeAttachment(name="db", image=tmp_path / "v", target="/elsewhere"),)
    with pytest.raises(InvalidSpec, match="/data"):
        _restore_disks(snapshot, pod_config(tmp_path / "b", wrong_target))
    two = tuple(VolumeAttachment(name=f"v{i}", image=tmp_path / f"v{i}", target="/data") for i in range(2))
    with pytest.raises(InvalidSpec, match="1 volume"):
        _restore_disks(snapshot, pod_config(tmp_path / "c", two))
    taken = tmp_path / "taken"
    taken.write_bytes(b"someone else's")
    with pytest.raises(Conflict, match="already exists"):
        _restore_disks(snapshot, pod_config(tmp_path / "d", (VolumeAttachment(name="v", image=taken, target="/data"),)))
    assert taken.read_bytes() == b"someone else's"
    for run_dir in "abcd":
        assert list((tmp_path / run_dir).iterdir()) == []


@pytest.fixture
def shm() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(dir="/dev/shm") as directory:
        yield Path(directory)


def test_sparse_copy_crosses_filesystems(tmp_path: Path, shm: Path) -> None:
    """copy_file_range refuses disk → tmpfs (EXDEV): a template's RAM copied into a pod's own RAM file."""
    source = tmp_path / "memory"
    with open(source, "wb") as file:
        file.seek(8 * MIB)
        file.write(b"page" * 1024)
        file.seek(32 * MIB - 4)
        file.write(b"last")
    if os.stat(source).st_dev == os.stat(shm).st_dev:
        pytest.skip("tmp_path is on the same filesystem as /dev/shm")
    copied = sparse_copy(source, shm / "memory")
    assert (shm / "memory").read_bytes() == source.read_bytes()
    assert copied < 2 * MIB and (shm / "memory").stat().st_blocks * 512 < 2 * MIB
    with pytest.raises(FileExistsError):
        sparse_copy(source, shm / "memory")


# ---- the agent's freeze and thaw, with the ioctls recorded --------------------------------------------


class RecordingPort(guest.Port):
    def __init__(self) -> None:
        super().__init__(-1, -1, reconnects=False)
        self.sent: list[dict[str, Any]] = []

    def send(self, header: dict[str, Any], payload: bytes = b"") -> None:
        self.sent.append(header)


@dataclasses.dataclass
class Ioctls:
    """The freeze/thaw ioctls the agent made, by mount; `fail_on["freeze:/data"] = errno` makes one fail."""

    calls: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    fail_on: dict[str, int] = dataclasses.field(default_factory=dict)


@pytest.fixture
def ioctls(monkeypatch: pytest.MonkeyPatch) -> Ioctls:
    recorded = Ioctls()

    def on_mount(target: str, fd: int | None, call: Callable[[int], object]) -> None:
        code = {guest.FIFREEZE: "freeze", guest.FITHAW: "thaw"}[_ioctl_of(call)]
        failure = recorded.fail_on.get(f"{code}:{target}")
        if failure:
            raise OSError(failure, f"{code} {target} failed")
        recorded.calls.append((code, target))

    monkeypatch.setattr(guest, "_on_mount", on_mount)
    return recorded


def _ioctl_of(call: Callable[[int], object]) -> int:
    """Which ioctl a freeze/thaw lambda makes: run it against a recording fcntl.ioctl."""
    import fcntl

    seen: list[int] = []
    original = fcntl.ioctl
    fcntl.ioctl = lambda fd, request, *args: seen.append(request)  # type: ignore[assignment]
    try:
        call(-1)
    finally:
        fcntl.ioctl = original
    return seen[0]


def agent_with(mounts: list[str], layer_fd: int | None = 3) -> tuple[guest.Agent, RecordingPort]:
    port = RecordingPort()
    agent = guest.Agent(port, layer_fd=layer_fd)
    agent.mounts = list(mounts)
    return agent, port


def test_freeze_freezes_the_layer_then_the_volumes_and_thaw_undoes_it(ioctls: Ioctls) -> None:
    agent, port = agent_with(["/data", "/cache"])
    agent.handle({"id": 1, "op": "freeze"}, b"")
    assert port.sent[-1] == {"id": 1, "event": "result", "frozen": ["layer", "/data", "/cache"]}
    # While frozen the agent refuses its own writes (they would block its only thread, and `thaw` with it).
    agent.handle({"id": 2, "op": "file_write", "path": "/tmp/x"}, b"x")
    assert port.sent[-1]["error"] == "invalid" and "frozen" in port.sent[-1]["message"]
    agent.handle({"id": 3, "op": "freeze"}, b"")
    assert port.sent[-1]["error"] == "invalid" and "already frozen" in port.sent[-1]["message"]
    agent.handle({"id": 4, "op": "thaw"}, b"")
    assert port.sent[-1] == {"id": 4, "event": "result", "thawed": ["/cache", "/data", "layer"]}
    assert [code for code, _ in ioctls.calls] == ["freeze"] * 3 + ["thaw"] * 3
    assert agent.frozen == [] and agent.thaw_at is None


def test_a_freeze_that_fails_half_way_thaws_what_it_froze(ioctls: Ioctls) -> None:
    fail_on = ioctls.fail_on
    fail_on["freeze:/cache"] = errno.EOPNOTSUPP
    agent, port = agent_with(["/data", "/cache"])
    agent.handle({"id": 1, "op": "freeze"}, b"")
    assert port.sent[-1]["error"] == "os"
    assert ioctls.calls == [("freeze", "layer"), ("freeze", "/data"), ("thaw", "/data"), ("thaw", "layer")]
    assert agent.frozen == []


def test_a_freeze_nobody_undoes_thaws_itself(ioctls: Ioctls) -> None:
    agent, port = agent_with([], layer_fd=3)
    agent.handle({"id": 1, "op": "freeze", "timeout": 0.05}, b"")
    assert agent.thaw_at is not None and 0 < agent.next_timeout() <= 0.05  # type: ignore[operator]
    time.sleep(0.06)
    assert agent.thaw_at is not None and time.monotonic() >= agent.thaw_at  # the main loop then calls thaw_all
    agent.thaw_all()
    assert ioctls.calls == [("freeze", "layer"), ("thaw", "layer")]
    agent.handle({"id": 2, "op": "freeze", "timeout": 0}, b"")
    assert port.sent[-1]["field"] == "timeout"


def test_a_thaw_of_a_thawed_filesystem_counts_as_thawed(ioctls: Ioctls) -> None:
    fail_on = ioctls.fail_on
    agent, port = agent_with(["/data"])
    agent.handle({"id": 1, "op": "freeze"}, b"")
    fail_on["thaw:/data"] = errno.EINVAL  # someone in the guest thawed it already
    agent.handle({"id": 2, "op": "thaw"}, b"")
    assert port.sent[-1] == {"id": 2, "event": "result", "thawed": ["/data", "layer"]}
    agent.handle({"id": 3, "op": "freeze"}, b"")
    fail_on["thaw:layer"] = errno.EIO
    agent.handle({"id": 4, "op": "thaw"}, b"")
    assert port.sent[-1]["error"] == "os" and "layer" in port.sent[-1]["message"]


def test_no_disks_no_freeze() -> None:
    """A container, or a VM without a layer disk: `freeze` only syncs (never FIFREEZE the host's filesystems)."""
    agent, port = agent_with([], layer_fd=None)
    agent.handle({"id": 1, "op": "freeze"}, b"")
    assert port.sent[-1] == {"id": 1, "event": "result", "frozen": []}
    agent.handle({"id": 2, "op": "thaw"}, b"")
    assert port.sent[-1] == {"id": 2, "event": "result", "thawed": []}
