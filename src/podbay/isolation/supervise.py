"""What every backend does while its sandbox process starts: race the start-up work against the process's
exit (so a crash is reported at once, in the process's own words, not after a timeout), read the tail of its
logs, and name the disks a VM sees."""

from __future__ import annotations

import asyncio
import contextlib
import os
import select
import signal
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol, TypeVar

from podbay.channel import GuestChannel
from podbay.errors import GuestError, Timeout
from podbay.images.ext4 import make_ext4
from podbay.isolation.base import SandboxConfig

T = TypeVar("T")
LOG_TAIL = 2000  # bytes of a log quoted in an error
KILL_TIMEOUT_S = 10.0
ROTATED_MARK = b"[podbay: log rotated; the previous part is in the .1 file, anything older was dropped]\n"
LOG_LIMIT = 1 << 20  # bytes per log file a sandbox can make the host keep; with one rotation, twice that


class VmmProcess(Protocol):
    """A sandbox's process as its sandbox sees it: a child this process started (`asyncio.subprocess.Process`),
    or one an earlier controller started and this one re-adopted (`AdoptedProcess`)."""

    @property
    def pid(self) -> int: ...

    @property
    def returncode(self) -> int | None: ...

    async def wait(self) -> int: ...


ADOPTED_EXIT = -1  # what an adopted process "exits with": it is not this process's child, so its status is unknown


class AdoptedProcess:
    """A sandbox process started by an earlier controller that died (or handed it over): not a child of this
    process, so its exit status cannot be read. A pidfd opened once, at adoption, tells when it exits; its
    identity (pid + start time) is checked once, right after the pidfd is opened, so the pidfd is of that
    process and a reused pid is never taken for it. Nothing is read from /proc afterwards: a failed read
    (descriptors exhausted) never makes a live process look exited."""

    def __init__(self, pid: int, identity: str) -> None:
        self.pid = pid
        self._returncode: int | None = None
        self._exited: asyncio.Future[None] | None = None
        try:
            self._pidfd = os.pidfd_open(pid)
        except OSError:
            raise GuestError(f"process {pid} is gone") from None
        if process_identity(pid) != identity or is_gone(pid):
            os.close(self._pidfd)
            self._pidfd = -1
            raise GuestError(f"process {pid} is gone")

    @property
    def returncode(self) -> int | None:
        if self._returncode is None and select.select([self._pidfd], [], [], 0)[0]:  # a pidfd: readable on exit
            self._has_exited()
        return self._returncode

    async def wait(self) -> int:
        if self.returncode is None:
            if self._exited is None:  # one wait on the pidfd, shared by every waiter
                self._exited = asyncio.ensure_future(_readable(self._pidfd))
            await asyncio.shield(self._exited)
            self._has_exited()
        return ADOPTED_EXIT

    def _has_exited(self) -> None:
        """Note the exit and close the pidfd (once the wait on it, if any, has let go of it)."""
        if self._returncode is not None:
            return
        self._returncode = ADOPTED_EXIT
        if self._exited is None or self._exited.done():
            self._close()
        else:
            self._exited.add_done_callback(lambda _: self._close())

    def _close(self) -> None:
        if self._pidfd >= 0:
            os.close(self._pidfd)
            self._pidfd = -1


async def _readable(fd: int) -> None:
    """Wait until `fd` is readable (a pidfd: until its process exits)."""
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    loop.add_reader(fd, wake)
    try:
        await ready
    finally:
        loop.remove_reader(fd)


class ProcessExited(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(f"exited with status {status}")
        self.status = status


async def unless_exited(process: VmmProcess, work: Awaitable[T], timeout: float, grace: float = 1.0) -> T:
    """The result of `work`, unless `process` exits first (ProcessExited) or `timeout` passes (Timeout).

    When `work` fails, the process is given `grace` seconds to exit: a broken channel is usually the symptom
    of a dying VMM or runtime, and its exit status (with its stderr) says more than the broken pipe.
    """
    exited = asyncio.ensure_future(process.wait())
    task = asyncio.ensure_future(work)
    try:
        done, _ = await asyncio.wait({exited, task}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        if task in done and task.exception() is None:
            return task.result()
        if task in done and grace > 0:
            await asyncio.wait({exited}, timeout=grace)
        if exited.done():
            raise ProcessExited(exited.result())
        if task in done:
            raise task.exception()  # type: ignore[misc]  # done and failed, checked above
        raise Timeout(f"not ready within {timeout} s")
    finally:
        for future in (exited, task):
            future.cancel()
        await asyncio.gather(exited, task, return_exceptions=True)


async def kill_session(process: VmmProcess) -> None:
    """SIGKILL the process's whole session (it was started in its own), then reap it."""
    if process.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    await process.wait()


def kill_processes_mentioning(path: Path, timeout: float = KILL_TIMEOUT_S) -> None:
    """SIGKILL every process whose command line names `path` (a pod's run directory): VMMs, runtimes, agents;
    return once none is left, or raise GuestError naming the survivors (whatever they hold stays held)."""
    deadline = time.monotonic() + timeout
    targets: set[int] = set()
    while True:
        # A dying process drops its command line before its descriptors (and the locks they hold): keep
        # every process seen until it is gone for good.
        targets = {pid for pid in targets | set(command_lines_mentioning(path)) if not is_gone(pid)}
        if not targets:
            return
        if time.monotonic() > deadline:
            raise GuestError(f"processes of {path} survived SIGKILL for {timeout} s: {sorted(targets)}")
        for pid in targets:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.01)


def is_gone(pid: int) -> bool:
    """True once the process has exited and let go of everything it held: it no longer exists, or it is a
    zombie (past closing its descriptors), never merely because its command line reads empty."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


def command_lines_mentioning(path: Path) -> dict[int, bytes]:
    """Processes (other than this one) whose command line names `path`, with their NUL-separated command
    lines. A zombie's command line is empty: it holds nothing any more."""
    needle = str(path).encode()
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue  # gone meanwhile
        if needle in cmdline:
            found[int(entry.name)] = cmdline
    return found


def process_identity(pid: int) -> str | None:
    """A pid plus its start time: unlike a bare pid, it is never reused for another process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return f"{pid}:{stat.rsplit(')', 1)[1].split()[19]}"  # field 22, counted after the command name


async def shut_down_agent(
    channel: GuestChannel, resume: Callable[[], Awaitable[None]] | None, timeout: float = 10.0
) -> None:
    """Best effort, before a sandbox is stopped: the agent kills its commands, syncs and unmounts volumes,
    so what the guest wrote is on the host's disk. A paused sandbox is resumed first (pass its `resume`)."""
    with contextlib.suppress(Exception):  # the guest may already be gone
        if resume is not None:
            await resume()
        await channel.request("shutdown", timeout=timeout)


class BoundedLog:
    """A pipe a sandbox process writes its log to (a guest-driven console, a runtime's stderr), drained into a
    file that never grows past `limit`: when full it is rotated to `<name>.1` (the older half is dropped), so
    the host keeps at most twice the limit and the latest lines are always in the file. Draining never stops,
    so the writer is never blocked by the host."""

    def __init__(self, path: Path, limit: int | None = None) -> None:
        self.path = path
        self._limit = limit or LOG_LIMIT
        self._read_fd, self.write_fd = os.pipe2(os.O_CLOEXEC)
        os.set_blocking(self._read_fd, False)
        self._file = open(path, "wb", buffering=0)  # noqa: SIM115  # closed by close(), at EOF or by the owner
        self._written = 0
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self._read_fd, self._drain)

    @property
    def drained(self) -> bool:
        """True once every writer is gone and everything they wrote is in the file."""
        return self._read_fd < 0

    def child_started(self) -> None:
        """Close this process's copy of the write end (the child has its own), so EOF means the child is gone."""
        if self.write_fd >= 0:
            os.close(self.write_fd)
            self.write_fd = -1

    def _drain(self) -> None:
        try:
            data = os.read(self._read_fd, 1 << 16)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self.close()
            return
        if self._written + len(data) > self._limit:
            self._file.close()
            os.replace(self.path, self.path.with_name(self.path.name + ".1"))
            self._file = open(self.path, "wb", buffering=0)  # noqa: SIM115
            self._file.write(ROTATED_MARK)
            self._written = len(ROTATED_MARK)
            data = data[-(self._limit - self._written) :]
        self._file.write(data)
        self._written += len(data)

    def close(self) -> None:
        if self._read_fd >= 0:
            self._loop.remove_reader(self._read_fd)
            os.close(self._read_fd)
            self._read_fd = -1
            self._file.close()
        self.child_started()


def tail(path: Path) -> str:
    """The last LOG_TAIL bytes of a log, or '' if it cannot be read."""
    try:
        with open(path, "rb") as file:
            file.seek(0, os.SEEK_END)
            file.seek(max(0, file.tell() - LOG_TAIL))
            return file.read().decode(errors="replace").strip()
    except OSError:
        return ""


async def layer_disk(run_dir: Path, size_mib: int) -> Path:
    """A VM's writable layer: a sparse ext4 disk (no journal: it dies with the pod) that the guest's init lays
    over the read-only root with overlayfs."""
    layer = run_dir / "layer.ext4"
    await asyncio.to_thread(make_ext4, layer, size_mib, "podbay-layer", journal=False)
    return layer


def disk_device(index: int) -> str:
    """A VM's block devices appear in the order they are attached: vda, vdb, ..."""
    return "/dev/vd" + chr(ord("a") + index)


def volume_mounts(config: SandboxConfig) -> list[dict[str, Any]]:
    """What the agent mounts in a VM: the volume disks, attached after the root (vda) and the layer (vdb)."""
    first = 2 if config.layer is not None else 1
    return [
        {"source": disk_device(first + index), "target": volume.target, "fstype": "ext4"}
        for index, volume in enumerate(config.volumes)
    ]
