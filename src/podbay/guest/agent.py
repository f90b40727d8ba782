#!/usr/bin/python3 -I -S
"""podbay guest agent: PID 1 inside a microVM (or the container's first process), stdlib only.

It serves framed, multiplexed requests from the host over one byte stream (see protocol.py and
docs/guest-protocol.md): exec with streamed output, stdin, signals and timeouts; file write/read/list/stat;
environment and task-context injection; volume mounts; health. One thread and one selector: children are
reaped on SIGCHLD (as PID 1 it also reaps orphans), so nothing here blocks for long.
"""

from __future__ import annotations

import errno
import os
import selectors
import stat
import sys
import time

# Typing-only imports: importing typing costs ~60 ms of every cold boot under TCG (mypy honours this flag).
TYPE_CHECKING = False
if TYPE_CHECKING:
    import socket
    from collections.abc import Callable
    from typing import Any

    Header = dict[str, Any]
    import signal
else:  # the C module behind `signal`, without its enum wrappers: ~0.1 s less of a cold boot under TCG
    import _signal as signal

if __package__:
    from . import protocol
else:  # run as a script inside the guest, beside protocol.py (-I leaves the script's folder off sys.path)
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import protocol  # type: ignore[import-not-found,no-redef]

BASE_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME": "/root",
    "LANG": "C.UTF-8",
    "PYTHONUNBUFFERED": "1",
}
DEFAULT_CWD = "/work"
MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_NOATIME, MS_MOVE = 2, 4, 8, 1024, 8192
STATE_DIR = "/run/podbay"  # per-boot, in memory (tmpfs): injected context lives here, never in the image
# A restored clone (podbay.isolation.qemu.template) starts with its template's kernel state: `reseed` and the
# `size` of a mount make it its own machine with its own disks.
RNDRESEEDCRNG = 0x5207  # _IO('R', 0x07): reseed the kernel's CRNG from its input pool now (CAP_SYS_ADMIN)
BLKFLSBUF = 0x1261  # _IO(0x12, 97): write back and drop a block device's cached blocks
MIN_SEED = 32  # bytes of host randomness a reseed needs, at least
MAX_HOSTNAME = 64  # bytes (the kernel's __NEW_UTS_LEN)
DISK_WAIT_S = 5.0  # for a restored clone's kernel to see a volume's real size
# `freeze`/`thaw` quiesce the pod's disks for a snapshot (podbay.isolation.qemu.snapshot).
FIFREEZE = 0xC0045877  # _IOWR('X', 119, int): flush a filesystem and block every write to it
FITHAW = 0xC0045878  # _IOWR('X', 120, int)
FREEZE_LIMIT_S = 30.0  # a freeze the host never undoes (it died mid-snapshot) thaws itself after this


MAX_LIST_PAGE = 1000  # entries in one file_list answer, at most
# Bytes of entries one file_list answer may carry: a page stops early rather than break MAX_HEADER, whatever the
# names (a 255-byte name of control characters is 1.5 KiB of JSON escapes).
LIST_PAGE_BYTES = protocol.MAX_HEADER - (64 << 10)
MAX_OFFSET = 2**63 - 1  # a file offset (off_t)
MAX_MESSAGE = 2000  # characters of an error message: they quote what the host sent, which may be huge
MAX_WAIT_S = 3600.0  # the longest single sleep of the main loop (epoll refuses ~25 days and more)
PORT_RETRY_MIN_S = 0.01  # while no host is connected, look for one this often at first ...
PORT_RETRY_MAX_S = 1.0  # ... and at least this often however long it stays away (see Agent.retry_delay)
FILE_TYPES = {stat.S_IFREG: "file", stat.S_IFDIR: "dir", stat.S_IFLNK: "symlink"}
FILE_KINDS = {
    stat.S_IFDIR: "a directory",
    stat.S_IFIFO: "a FIFO",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFSOCK: "a socket",
    stat.S_IFLNK: "a symlink",
}


class RequestError(Exception):
    """Refuse one request; the host sees `kind`, `message` (and `field`, `fix`) and the agent carries on."""

    def __init__(self, kind: str, message: str, field: str | None = None, fix: str | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.field = field
        self.fix = fix


def invalid(field: str, problem: str, fix: str) -> RequestError:
    """A request the agent will not try: the host raises InvalidSpec(field, problem, fix)."""
    return RequestError("invalid", problem, field, fix)


def error_frame(
    request_id: object, kind: str, message: str, field: str | None = None, fix: str | None = None
) -> Header:
    if len(message) > MAX_MESSAGE:
        message = message[: MAX_MESSAGE - 3] + "..."
    frame: Header = {"id": request_id if _is_int(request_id) else 0, "event": "error", "error": kind}
    frame["message"] = message
    if field is not None:
        frame["field"] = field
    if fix is not None:
        frame["fix"] = fix
    return frame


class Port:
    """The byte stream to the host. A virtio-serial port reads EOF while no host is connected: wait, retry."""

    def __init__(self, read_fd: int, write_fd: int, reconnects: bool) -> None:
        self.read_fd = read_fd
        self.write_fd = write_fd
        self.reconnects = reconnects

    def send(self, header: Header, payload: bytes = b"") -> None:
        """Send one frame. Never raises: an answer too large for a frame becomes a `too_large` error for its id."""
        try:
            frame = protocol.encode(header, payload)
        except protocol.FrameError as exc:
            frame = protocol.encode(
                error_frame(
                    header.get("id"),
                    "too_large",
                    f"the answer does not fit in a frame ({exc})",
                    "request",
                    "ask for less at once: a ranged file_read (offset, length) or a smaller file_list page (limit)",
                )
            )
        except (TypeError, ValueError) as exc:  # nothing the agent builds should hit this: report, carry on
            message = f"the answer cannot be encoded: {type(exc).__name__}: {exc}"
            frame = protocol.encode(error_frame(header.get("id"), "internal", message))
        data = memoryview(frame)
        while data:
            try:
                data = data[os.write(self.write_fd, data) :]
            except BlockingIOError:
                _wait_writable(self.write_fd)  # the host reads on (credit bounds what is queued): no spinning
            except OSError:
                return  # host went away; the next read sees it too

    def hang_up(self) -> None:
        """The host went away. A virtio-serial port stays open: the same fd reads again once a host is back."""

    def reopen(self) -> bool:
        """Ready to read again? A virtio-serial port always is (it reads EOF again while no host is there)."""
        return True


class ListeningPort(Port):
    """A listening socket (AF_VSOCK under Firecracker): one host connection at a time; when it closes, the next."""

    def __init__(self, listener: socket.socket) -> None:
        self.listener = listener
        self.connection, _ = self.listener.accept()  # blocking: there is nothing to serve before the host comes
        self.listener.setblocking(False)  # later connections are polled for, so children are still served
        fd = self.connection.fileno()
        super().__init__(fd, fd, reconnects=True)

    def hang_up(self) -> None:
        self.connection.close()
        self.read_fd = self.write_fd = -1  # sends while no host is connected fail (EBADF), never reach a reused fd

    def reopen(self) -> bool:
        try:
            self.connection, _ = self.listener.accept()
        except BlockingIOError:
            return False
        self.connection.setblocking(True)
        self.read_fd = self.write_fd = self.connection.fileno()
        return True


class Process:
    """One exec: a child in its own session with piped stdio."""

    def __init__(self, request_id: int, pid: int, stdin_fd: int | None, deadline: float | None) -> None:
        self.request_id = request_id
        self.pid = pid
        self.stdin_fd = stdin_fd
        self.stdin_pending = bytearray()
        self.stdin_eof = False
        self.deadline = deadline
        self.with_stdin = stdin_fd is not None
        self.timed_out = False
        self.started = time.monotonic()
        self.output_fds: dict[int, str] = {}
        # Flow control (None: a host without credit windows, so unbounded as before protocol 2).
        self.credit: int | None = None  # output bytes the host still accepts
        self.window: int | None = None  # stdin bytes the host may have unacknowledged
        self.status: int | None = None  # wait status once reaped; `exit` waits for the output to drain


class Listener:
    """A TCP listener on the guest's loopback: each connection becomes a guest-opened stream to `service`."""

    def __init__(self, sock: socket.socket, service: str) -> None:
        self.sock = sock
        self.service = service


# A stream's receiver credits the sender once this much is written on: the sender still holds 3/4 of its
# window then, so it never waits on a batch (it blocks only with a whole window unacknowledged, which is past it).
GRANT_BATCH = protocol.WINDOW // 4


class Stream:
    """A guest-opened stream: one TCP connection forwarded to a host service, with credit both ways."""

    def __init__(self, stream_id: int, sock: socket.socket, service: str) -> None:
        self.id = stream_id
        self.sock = sock
        self.fd = sock.fileno()
        self.service = service
        self.accepted = False
        self.credit = 0  # bytes the host still accepts from us (its window, granted at `accept`)
        self.ungranted = 0  # bytes of the host's written on to the connection and not yet credited back
        self.pending = bytearray()  # bytes from the host not yet written to the socket (at most WINDOW)
        self.read_eof = False  # the connection sent EOF (and so did we, to the host)
        self.write_eof = False  # the host sent EOF: shut our write side once `pending` is out
        self.shut_wr = False


class Agent:
    def __init__(
        self, port: Port, state_dir: str = STATE_DIR, workdir: str = DEFAULT_CWD, layer_fd: int | None = None
    ) -> None:
        self.port = port
        # The writable layer's ext4, mounted outside the chroot: vminit keeps a descriptor of it for `freeze`.
        self.layer_fd = layer_fd
        self.frozen: list[tuple[str, int | None]] = []  # (name, descriptor or None: open the mount by name)
        self.thaw_at: float | None = None
        self.state_dir = state_dir
        self.workdir = workdir
        self.selector = selectors.DefaultSelector()
        self.env: dict[str, str] = dict(BASE_ENV)
        self.processes: dict[int, Process] = {}  # by pid
        self.execs: dict[int, Process] = {}  # by request id, until `exit` is sent (output may still drain)
        self.streams: dict[int, Stream] = {}  # guest-opened streams, by their (negative) id
        self.listeners: dict[int, Listener] = {}  # by fd
        self.last_stream_id = 0
        self.mounts: list[str] = []
        self.booted = time.monotonic()
        self.decoder = protocol.FrameDecoder()
        self.retry_port_at: float | None = None
        self.host_lost_at: float | None = None  # since when no host has been connected (None: one is)
        self.ops: dict[str, Callable[[Header, bytes], None]] = {
            "health": self.op_health,
            "init": self.op_init,
            "exec": self.op_exec,
            "stdin": self.op_stdin,
            "signal": self.op_signal,
            "file_write": self.op_file_write,
            "file_read": self.op_file_read,
            "file_list": self.op_file_list,
            "file_stat": self.op_file_stat,
            "shutdown": self.op_shutdown,
            "reseed": self.op_reseed,
            "freeze": self.op_freeze,
            "thaw": self.op_thaw,
            "credit": self.op_credit,
            "listen": self.op_listen,
            "unlisten": self.op_unlisten,
            "accept": self.op_accept,
            "refuse": self.op_refuse,
            "send": self.op_send,
            "eof": self.op_eof,
            "close": self.op_close,
        }

    # ---- main loop -------------------------------------------------------------------------------------

    def serve(self) -> None:
        wake_read, wake_write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(wake_write)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        self.selector.register(wake_read, selectors.EVENT_READ, ("wakeup", None))
        self.selector.register(self.port.read_fd, selectors.EVENT_READ, ("port", None))
        while True:
            for key, events in self.selector.select(self.next_timeout()):
                try:
                    self.dispatch(key, events)
                except Exception as exc:  # never let one stream's failure take the agent (and the pod) down
                    self.drop_stream(key, exc)
            self.housekeeping()

    def housekeeping(self) -> None:
        """After each wake-up: deadlines, exits, a freeze left too long, a lost port.

        Deadlines come before reaping, so a command whose deadline passed before the agent saw it exit is
        reported timed out whether or not it happened to exit before this pass. Reaping first made an
        already-expired deadline (timeout=1e-9) a race: a fast command won it or lost it by microseconds."""
        self.enforce_deadlines()
        self.reap()
        if self.thaw_at is not None and time.monotonic() >= self.thaw_at:
            self.thaw_all()
        self.maybe_retry_port()

    def dispatch(self, key: selectors.SelectorKey, events: int) -> None:
        kind, process = key.data
        if kind == "wakeup":
            _drain(key.fd)
        elif kind == "port":
            self.read_port()
        elif kind == "output":
            if process.status is None:
                self.read_output(process, key.fd)
            else:
                self.drain_exited(process)
        elif kind == "stdin":
            self.flush_stdin(process)
        elif kind == "listener":
            self.accept_connections(process)
        elif kind == "stream":
            if events & selectors.EVENT_WRITE:
                self.flush_stream(process)
            if events & selectors.EVENT_READ and process.id in self.streams:
                self.read_stream(process)

    def drop_stream(self, key: selectors.SelectorKey, exc: Exception) -> None:
        """Something failed that should not have: forget the host's half-read frames, or stop watching a child's
        pipe (the exec still reports its exit). The agent carries on either way."""
        problem = f"{type(exc).__name__}: {exc}"
        print(f"podbay agent: fd {key.fd}: {problem}", file=sys.stderr)
        kind, process = key.data
        if kind == "port":
            self.decoder = protocol.FrameDecoder()
            self.port.send(error_frame(0, "protocol", problem))
        elif kind == "output" and key.fd in process.output_fds:
            self.close_output(process, key.fd)
        elif kind == "stdin" and process.stdin_fd == key.fd:
            self.selector.unregister(key.fd)
            os.close(key.fd)
            process.stdin_fd = None
            process.stdin_pending.clear()
        elif kind == "stream" and process.id in self.streams:
            self.abort_stream(process, problem)
        elif kind == "listener" and key.fd in self.listeners:
            self.selector.unregister(key.fd)
            self.listeners.pop(key.fd).sock.close()

    def next_timeout(self) -> float | None:
        moments = [p.deadline for p in self.processes.values() if p.deadline and not p.timed_out]
        if self.retry_port_at is not None:
            moments.append(self.retry_port_at)
        if self.thaw_at is not None:
            moments.append(self.thaw_at)
        return min(MAX_WAIT_S, max(0.0, min(moments) - time.monotonic())) if moments else None

    def read_port(self) -> None:
        try:
            data = os.read(self.port.read_fd, protocol.CHUNK)
        except BlockingIOError:
            return
        except OSError:  # ECONNRESET: a vsock whose transport was reset (snapshot restore) lost its host too
            data = b""
        if not data:
            if not self.port.reconnects:
                sys.exit(0)  # stdio/socket transport: the host is gone, so is the sandbox
            self.selector.unregister(self.port.read_fd)
            self.port.hang_up()
            for stream in list(self.streams.values()):  # their host ends went with the host
                self.abort_stream(stream, None)
            self.decoder = protocol.FrameDecoder()  # the next host starts a fresh stream
            now = time.monotonic()
            self.host_lost_at = self.host_lost_at if self.host_lost_at is not None else now
            self.retry_port_at = now + self.retry_delay(now)
            return
        self.host_lost_at = None
        try:
            frames = self.decoder.feed(data)
        except protocol.FrameError as exc:  # a prefix past the limits: no frame boundary can be trusted after it
            self.decoder = protocol.FrameDecoder()
            self.port.send(error_frame(0, "protocol", str(exc)))
            return
        for problem in self.decoder.errors:  # frames dropped alone (a header that is not a JSON object)
            self.port.send(error_frame(0, "protocol", problem))
        self.decoder.errors.clear()
        for header, payload in frames:
            self.handle(header, payload)

    def maybe_retry_port(self) -> None:
        if self.retry_port_at is None or time.monotonic() < self.retry_port_at:
            return
        if not self.port.reopen():
            now = time.monotonic()
            self.retry_port_at = now + self.retry_delay(now)
            return
        self.retry_port_at = None
        self.selector.register(self.port.read_fd, selectors.EVENT_READ, ("port", None))

    def retry_delay(self, now: float) -> float:
        """How long to wait before looking for a host again: a tenth of the time it has been away, from
        PORT_RETRY_MIN_S to PORT_RETRY_MAX_S. A host that comes back is seen within 10 % of its absence, and a
        pod left without one wakes once a second rather than 100 times (under TCG, that polling alone cost ~16 %
        of a host core per idle pod: podbay.bench.density)."""
        away = now - (self.host_lost_at if self.host_lost_at is not None else now)
        return min(PORT_RETRY_MAX_S, max(PORT_RETRY_MIN_S, away / 10))

    def handle(self, header: Header, payload: bytes) -> None:
        """Serve one request. Whatever it holds, the answer is a frame for its id and the agent carries on."""
        request_id = header.get("id")
        name = header.get("op")
        try:
            if not _is_int(request_id):
                raise invalid("id", f"every request needs an integer id, got {_show(request_id)}", "send an integer id")
            op = self.ops.get(name) if isinstance(name, str) else None
            if op is None:
                raise invalid("op", f"unknown op {_show(name)}", f"use one of {', '.join(sorted(self.ops))}")
            op(header, payload)
        except RequestError as exc:
            self.port.send(error_frame(request_id, exc.kind, str(exc), exc.field, exc.fix))
        except OSError as exc:
            kind = "not_found" if exc.errno == errno.ENOENT else "os"
            self.port.send(error_frame(request_id, kind, str(exc)))
        except Exception as exc:  # a bug, or input nobody foresaw: report it, keep serving (never SystemExit)
            self.port.send(error_frame(request_id, "internal", f"{type(exc).__name__}: {exc}"))

    def result(self, request: Header, payload: bytes = b"", **fields: Any) -> None:
        self.port.send({"id": request["id"], "event": "result", **fields}, payload)

    # ---- lifecycle ops ---------------------------------------------------------------------------------

    def op_health(self, request: Header, _: bytes) -> None:
        self.result(
            request,
            version=protocol.PROTOCOL_VERSION,
            pid=os.getpid(),
            uptime=time.monotonic() - self.booted,
            system_uptime=time.clock_gettime(time.CLOCK_BOOTTIME),
            running=len(self.processes),
        )

    def op_init(self, request: Header, _: bytes) -> None:
        """Inject environment, task context and volume mounts: everything secret arrives here, at start."""
        self.refuse_if_frozen()
        clock = _number(request, "clock", "pass the host's time.time()")
        env = _env(request)
        mounts = _mounts(request)
        if clock is not None and abs(time.time() - clock) > 1:  # microVMs have no RTC: take the host's
            try:
                time.clock_settime(time.CLOCK_REALTIME, clock)
            except PermissionError:
                pass  # a container shares the host's clock anyway
        for source, target, fstype, size in mounts:
            if size is not None:
                _refresh_disk(source, size)
            self.mount(source, target, fstype)
        self.env.update(env)
        context = request.get("context")
        if context is not None:
            os.makedirs(self.state_dir, mode=0o700, exist_ok=True)
            context_file = os.path.join(self.state_dir, "context.json")
            _write_atomic(context_file, protocol.dumps(context).encode(), 0o600)
            self.env["PODBAY_CONTEXT_FILE"] = context_file
            self.env["PODBAY_CONTEXT"] = protocol.dumps(context)
        os.makedirs(self.workdir, exist_ok=True)
        self.result(request)

    def mount(self, source: str, target: str, fstype: str) -> None:
        os.makedirs(target, exist_ok=True)
        try:
            mount(source, target, fstype, MS_NOATIME)
        except OSError as exc:
            raise RequestError("mount", str(exc)) from None
        self.mounts.append(target)

    def op_reseed(self, request: Header, payload: bytes) -> None:
        """A restored clone starts with its template's RNG state, clock and name: make it its own machine.

        The payload (host randomness) is written to /dev/urandom, which mixes it into the input pool without
        crediting it; RNDRESEEDCRNG then rekeys the CRNG from that pool at once (a write alone would reach
        getrandom() only at the next scheduled reseed, up to a minute later). The boot id is made by the kernel
        on its first read, so reading it after the reseed gives this clone its own."""
        if len(payload) < MIN_SEED:
            raise invalid("payload", f"{len(payload)} bytes of randomness, at least {MIN_SEED} needed", "send more")
        clock = _number(request, "clock", "pass the host's time.time()")
        hostname = _optional_text(request, "hostname", f"pass a name of 1 to {MAX_HOSTNAME} bytes")
        if hostname is not None and not 0 < len(os.fsencode(hostname)) <= MAX_HOSTNAME:
            raise invalid("hostname", f"{_show(hostname)} is not 1 to {MAX_HOSTNAME} bytes", "pass a shorter name")
        reseeded, why = _reseed(payload)
        if clock is not None:
            try:
                time.clock_settime(time.CLOCK_REALTIME, clock)
            except PermissionError:
                pass  # a container shares the host's clock anyway
        if hostname is not None:
            with open("/proc/sys/kernel/hostname", "w") as file:
                file.write(hostname)
        try:
            with open("/proc/sys/kernel/random/boot_id") as file:
                boot_id: str | None = file.read().strip()
        except OSError:
            boot_id = None
        self.result(request, reseeded=reseeded, why=why, boot_id=boot_id)

    def op_freeze(self, request: Header, _: bytes) -> None:
        """Quiesce the disks for a snapshot: sync, then FIFREEZE the writable layer and every volume, so their
        images on the host are consistent filesystems and nothing writes them until `thaw`. A freeze that fails
        half-way thaws what it froze; one the host never undoes thaws itself after `timeout` seconds."""
        timeout = _seconds(request, "timeout") or FREEZE_LIMIT_S
        if self.frozen:
            raise invalid("op", "the filesystems are already frozen", "send thaw first")
        import fcntl

        os.sync()
        targets: list[tuple[str, int | None]] = [("layer", self.layer_fd)] if self.layer_fd is not None else []
        targets += [(target, None) for target in self.mounts]
        try:
            for name, fd in targets:
                _on_mount(name, fd, lambda descriptor: fcntl.ioctl(descriptor, FIFREEZE, 0))
                self.frozen.append((name, fd))
        except OSError:
            self.thaw_all()
            raise
        self.thaw_at = time.monotonic() + timeout
        self.result(request, frozen=[name for name, _ in self.frozen])

    def op_thaw(self, request: Header, _: bytes) -> None:
        thawed, failed = self.thaw_all()
        if failed:
            raise RequestError("os", "thaw failed: " + "; ".join(failed))
        self.result(request, thawed=thawed)

    def thaw_all(self) -> tuple[list[str], list[str]]:
        """FITHAW whatever is frozen, newest first: (thawed names, failures). A filesystem that is no longer
        frozen (EINVAL) counts as thawed."""
        import fcntl

        thawed: list[str] = []
        failed: list[str] = []
        while self.frozen:
            name, fd = self.frozen.pop()
            try:
                _on_mount(name, fd, lambda descriptor: fcntl.ioctl(descriptor, FITHAW, 0))
            except OSError as exc:
                if exc.errno != errno.EINVAL:
                    failed.append(f"{name}: {exc}")
                    continue
            thawed.append(name)
        self.thaw_at = None
        return thawed, failed

    def refuse_if_frozen(self) -> None:
        """The agent's own writes to a frozen filesystem would block its only thread, and with it `thaw`."""
        if self.frozen:
            raise invalid("op", "the disks are frozen for a snapshot", "send thaw first, or retry in a moment")

    def op_shutdown(self, request: Header, _: bytes) -> None:
        """Make volumes consistent before the host stops the sandbox: stop children, sync, unmount."""
        self.thaw_all()
        for pid in list(self.processes):
            _killpg(pid, signal.SIGKILL)
        os.sync()
        for target in reversed(self.mounts):
            try:
                unmount(target)
            except OSError:
                pass  # busy: the sync above already put the data on the disk
        self.mounts.clear()
        self.result(request)

    # ---- exec ------------------------------------------------------------------------------------------

    def op_exec(self, request: Header, _: bytes) -> None:
        argv = _argv(request)
        env = {**self.env, **_env(request)}
        cwd = _optional_text(request, "cwd", 'pass a directory such as "/work", or leave it out') or self.workdir
        timeout = _seconds(request, "timeout")
        with_stdin = _flag(request, "stdin", False)
        window = _window(request)
        deadline = time.monotonic() + timeout if timeout is not None else None
        process = self.spawn(request["id"], argv, env, cwd, with_stdin, deadline)
        process.credit = process.window = window
        self.processes[process.pid] = process
        self.execs[process.request_id] = process
        started: Header = {"id": request["id"], "event": "started", "pid": process.pid}
        if window is not None:  # says to the host that this agent honours (and grants) credit
            started["window"] = window
        self.port.send(started)

    def spawn(
        self,
        request_id: int,
        argv: list[str],
        env: dict[str, str],
        cwd: str,
        with_stdin: bool,
        deadline: float | None,
    ) -> Process:
        out_r, out_w = os.pipe2(os.O_CLOEXEC)
        err_r, err_w = os.pipe2(os.O_CLOEXEC)
        in_r, in_w = os.pipe2(os.O_CLOEXEC) if with_stdin else (os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC), -1)
        try:
            pid = _spawn(argv, env, cwd, (in_r, out_w, err_w))
        except BaseException:
            for fd in (out_r, err_r, in_w):
                if fd >= 0:
                    os.close(fd)
            raise
        finally:
            for fd in (in_r, out_w, err_w):
                os.close(fd)
        process = Process(request_id, pid, in_w if with_stdin else None, deadline)
        for fd, name in ((out_r, "stdout"), (err_r, "stderr")):
            os.set_blocking(fd, False)
            process.output_fds[fd] = name
            self.selector.register(fd, selectors.EVENT_READ, ("output", process))
        if process.stdin_fd is not None:
            os.set_blocking(process.stdin_fd, False)
        return process

    def read_output(self, process: Process, fd: int) -> None:
        """One chunk of a child's output, within the host's credit. Without credit the pipes are not polled
        (the child blocks on a full pipe: back-pressure) until a `credit` frame comes."""
        size = protocol.CHUNK if process.credit is None else min(protocol.CHUNK, process.credit)
        if size == 0:
            self.watch_output(process, False)
            return
        try:
            data = os.read(fd, size)
        except BlockingIOError:
            return
        if not data:
            self.close_output(process, fd)
            return
        self.port.send({"id": process.request_id, "event": process.output_fds[fd]}, data)
        if process.credit is not None:
            process.credit -= len(data)
            if process.credit == 0:
                self.watch_output(process, False)

    def watch_output(self, process: Process, watch: bool) -> None:
        """Poll the child's pipes (there is credit) or stop (there is none: no spinning on a blocked stream)."""
        registered = self.selector.get_map()
        for fd in process.output_fds:
            if watch and fd not in registered:
                self.selector.register(fd, selectors.EVENT_READ, ("output", process))
            elif not watch and fd in registered:
                self.selector.unregister(fd)

    def close_output(self, process: Process, fd: int) -> None:
        if fd in self.selector.get_map():
            self.selector.unregister(fd)
        os.close(fd)
        del process.output_fds[fd]

    def op_credit(self, request: Header, _: bytes) -> None:
        """The host took `bytes` of an exec's output or a stream's data: that much more may be sent."""
        amount = _count(request, "bytes", MAX_OFFSET)
        if not amount:
            raise invalid("bytes", f"must be an integer above zero, got {_show(request.get('bytes'))}", "e.g. 65536")
        target = _target(request)
        stream = self.streams.get(target)
        if stream is not None:
            stream.credit += amount
            self.update_interest(stream)
            return
        process = self.execs.get(target)
        if process is None:
            raise RequestError("not_found", f"no exec or stream with id {_show(request.get('target'))}")
        if process.credit is None:
            return  # started without a window: nothing is counted
        process.credit += amount
        if process.status is None:
            self.watch_output(process, True)
        else:
            self.drain_exited(process)

    def find_process(self, request: Header) -> Process:
        target = request.get("target")
        if not _is_int(target):
            raise invalid("target", f"must be the integer id of an exec, got {_show(target)}", "pass the exec's id")
        process = self.execs.get(_target(request))
        if process is None or process.status is not None:  # reaped: its pid may be reused, never signal it
            raise RequestError("not_found", f"no running exec with id {target!r}")
        return process

    def op_stdin(self, request: Header, payload: bytes) -> None:
        eof = _flag(request, "eof", False)
        process = self.find_process(request)
        if process.stdin_fd is None:
            if not process.with_stdin:
                raise invalid("stdin", "this exec was started without stdin", "start it with stdin=True")
            raise invalid("eof", "this exec's stdin is already closed", "send no more stdin after eof")
        if process.window is not None and len(process.stdin_pending) + len(payload) > process.window:
            raise invalid(
                "stdin",
                f"{len(payload)} more bytes would pass the window of {process.window} unacknowledged bytes",
                "wait for the agent's credit frames before sending more",
            )
        process.stdin_pending += payload
        process.stdin_eof = process.stdin_eof or eof
        self.flush_stdin(process)

    def flush_stdin(self, process: Process) -> None:
        fd = process.stdin_fd
        if fd is None:
            return
        before = len(process.stdin_pending)
        try:
            while process.stdin_pending:
                del process.stdin_pending[: os.write(fd, process.stdin_pending)]
        except BlockingIOError:
            pass
        except BrokenPipeError:
            process.stdin_pending.clear()  # dropped bytes are credited too: the host's writer must not wait
            process.stdin_eof = True
        taken = before - len(process.stdin_pending)
        if taken and process.window is not None:
            self.port.send({"id": process.request_id, "event": "credit", "bytes": taken})
        registered = fd in self.selector.get_map()
        if process.stdin_pending and not registered:
            self.selector.register(fd, selectors.EVENT_WRITE, ("stdin", process))
        elif not process.stdin_pending:
            if registered:
                self.selector.unregister(fd)
            if process.stdin_eof:
                os.close(fd)
                process.stdin_fd = None

    def op_signal(self, request: Header, _: bytes) -> None:
        signum = request.get("signal", signal.SIGTERM)
        if not _is_int(signum) or not 1 <= signum <= 64:
            raise invalid("signal", f"must be a signal number from 1 to 64, got {_show(signum)}", "e.g. 15 (SIGTERM)")
        process = self.find_process(request)
        _killpg(process.pid, signum)
        self.result(request)

    # ---- guest-opened streams: the TCP forwarder -----------------------------------------------------------

    def op_listen(self, request: Header, _: bytes) -> None:
        """Listen on the guest's loopback at `port` (0: any free port) and open a stream to the host's `service`
        for each connection. The answer says the port."""
        import socket  # only a pod with a tunnel needs it: keep it off every cold boot

        port = _count(request, "port", 65535)
        if port is None:
            raise invalid("port", "is missing", "pass a TCP port from 1 to 65535 (0: any free port)")
        service = _check_text(request.get("service"), "service", 'pass a service name, e.g. "db"')
        if not 0 < len(service) <= 64:
            raise invalid("service", f"{_show(service)} is not a name of 1 to 64 characters", 'e.g. "db"')
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(("127.0.0.1", port))
            except OSError as exc:
                if exc.errno != errno.EADDRNOTAVAIL:
                    raise
                _loopback_up(sock)  # a VM boots with `lo` down (no network device, nothing configures it)
                sock.bind(("127.0.0.1", port))
            sock.listen(64)
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        self.listeners[sock.fileno()] = Listener(sock, service)
        self.selector.register(sock.fileno(), selectors.EVENT_READ, ("listener", self.listeners[sock.fileno()]))
        self.result(request, port=sock.getsockname()[1])

    def op_unlisten(self, request: Header, _: bytes) -> None:
        """Stop listening on `port`: new connections are refused by the guest's kernel; open streams go on."""
        port = _count(request, "port", 65535)
        for fd, listener in list(self.listeners.items()):
            if listener.sock.getsockname()[1] == port:
                self.selector.unregister(fd)
                del self.listeners[fd]
                listener.sock.close()
                self.result(request)
                return
        raise RequestError("not_found", f"no listener on port {_show(request.get('port'))}")

    def accept_connections(self, listener: Listener) -> None:
        """Each new connection is a stream the host must accept before a byte of it is read."""
        while True:
            try:
                sock, _ = listener.sock.accept()
            except BlockingIOError:
                return
            sock.setblocking(False)
            self.last_stream_id -= 1  # guest-chosen ids are negative: they never meet the host's
            stream = Stream(self.last_stream_id, sock, listener.service)
            self.streams[stream.id] = stream
            self.port.send({"id": stream.id, "event": "open", "service": stream.service, "window": protocol.WINDOW})

    def find_stream(self, request: Header) -> Stream:
        stream = self.streams.get(_target(request))
        if stream is None:
            raise RequestError("not_found", f"no open stream with id {_show(request.get('target'))}")
        return stream

    def op_accept(self, request: Header, _: bytes) -> None:
        stream = self.find_stream(request)
        window = _window(request)
        stream.accepted = True
        stream.credit = protocol.WINDOW if window is None else window
        self.update_interest(stream)

    def op_refuse(self, request: Header, _: bytes) -> None:
        """The host will not connect this stream (an unknown service, or it could not reach it): hang up."""
        self.abort_stream(self.find_stream(request), None)

    def op_close(self, request: Header, _: bytes) -> None:
        """The host's end failed: drop the connection at once, whatever is pending."""
        self.abort_stream(self.find_stream(request), None)

    def op_send(self, request: Header, payload: bytes) -> None:
        stream = self.find_stream(request)
        if stream.write_eof:
            raise invalid("eof", "this stream's host side already sent eof", "send no data after eof")
        if len(stream.pending) + len(payload) > protocol.WINDOW:
            self.abort_stream(stream, "the host sent past its credit window")
            raise invalid("payload", f"passes the window of {protocol.WINDOW} bytes", "wait for credit frames")
        stream.pending += payload
        self.flush_stream(stream)

    def op_eof(self, request: Header, _: bytes) -> None:
        stream = self.find_stream(request)
        stream.write_eof = True
        self.flush_stream(stream)

    def flush_stream(self, stream: Stream) -> None:
        """Write what the host sent to the connection; credit the host with what the connection took."""
        taken = 0
        try:
            while stream.pending:
                written = stream.sock.send(stream.pending)
                del stream.pending[:written]
                taken += written
        except BlockingIOError:
            pass
        except OSError as exc:
            self.abort_stream(stream, f"the connection failed: {exc}")
            return
        stream.ungranted += taken
        if stream.ungranted >= GRANT_BATCH:  # batched: a request/response protocol pays no credit frame per reply
            self.port.send({"id": stream.id, "event": "credit", "bytes": stream.ungranted})
            stream.ungranted = 0
        if stream.write_eof and not stream.pending and not stream.shut_wr:
            import socket

            stream.shut_wr = True
            try:
                stream.sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass  # the peer is gone: its read side reports that
        self.update_interest(stream)

    def read_stream(self, stream: Stream) -> None:
        size = min(protocol.CHUNK, stream.credit)
        if size:
            try:
                data = stream.sock.recv(size)
            except BlockingIOError:
                return
            except OSError as exc:
                self.abort_stream(stream, f"the connection failed: {exc}")
                return
            if data:
                stream.credit -= len(data)
                self.port.send({"id": stream.id, "event": "data"}, data)
            else:
                stream.read_eof = True
                self.port.send({"id": stream.id, "event": "eof"})
        self.update_interest(stream)

    def update_interest(self, stream: Stream) -> None:
        """Poll the connection for reading only while the host has granted credit, for writing only while
        something is pending; a stream done both ways is closed."""
        if stream.read_eof and stream.shut_wr:
            self.abort_stream(stream, None)
            return
        events = 0
        if stream.accepted and stream.credit > 0 and not stream.read_eof:
            events |= selectors.EVENT_READ
        if stream.pending:
            events |= selectors.EVENT_WRITE
        key = self.selector.get_map().get(stream.fd)
        if events and key is None:
            self.selector.register(stream.fd, events, ("stream", stream))
        elif events and key is not None and key.events != events:
            self.selector.modify(stream.fd, events, ("stream", stream))
        elif not events and key is not None:
            self.selector.unregister(stream.fd)

    def abort_stream(self, stream: Stream, why: str | None) -> None:
        """Close the connection and forget the stream; tell the host why unless it asked for this itself."""
        if self.streams.pop(stream.id, None) is None:
            return
        if stream.fd in self.selector.get_map():
            self.selector.unregister(stream.fd)
        stream.sock.close()
        if why is not None:
            self.port.send({"id": stream.id, "event": "close", "message": why})

    def enforce_deadlines(self) -> None:
        now = time.monotonic()
        for process in self.processes.values():
            if process.deadline is not None and not process.timed_out and now >= process.deadline:
                process.timed_out = True
                _killpg(process.pid, signal.SIGKILL)

    def reap(self) -> None:
        """Collect every exited child; as PID 1 this also reaps orphans that were reparented to us."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            process = self.processes.pop(pid, None)
            if process is not None:
                self.finish(process, status)

    def finish(self, process: Process, status: int) -> None:
        process.status = status
        if process.stdin_fd is not None:
            if process.stdin_fd in self.selector.get_map():
                self.selector.unregister(process.stdin_fd)
            os.close(process.stdin_fd)
            process.stdin_fd = None
        self.drain_exited(process)

    def drain_exited(self, process: Process) -> None:
        """The child is gone, so whatever it wrote is already in the pipes: drain them (as far as the host's
        credit goes; the rest on its next grant), then report the exit. A pipe a grandchild keeps open but
        leaves empty is closed, not waited for."""
        for fd in list(process.output_fds):
            while fd in process.output_fds and process.credit != 0:
                self.read_output(process, fd)
                if fd in process.output_fds and not _readable(fd):
                    self.close_output(process, fd)
        if process.output_fds or process.status is None:
            return
        status = process.status
        del self.execs[process.request_id]
        signum = os.WTERMSIG(status) if os.WIFSIGNALED(status) else None
        code = 128 + signum if signum is not None else os.WEXITSTATUS(status)
        self.port.send(
            {
                "id": process.request_id,
                "event": "exit",
                "exit_code": code,
                "signal": signum,
                "timed_out": process.timed_out,
                "duration": time.monotonic() - process.started,
            }
        )

    # ---- files -----------------------------------------------------------------------------------------

    def op_file_write(self, request: Header, payload: bytes) -> None:
        self.refuse_if_frozen()
        path = _absolute(request)
        mode = _mode(request)
        parents = _flag(request, "parents", True)
        try:
            existing = os.lstat(path)
        except FileNotFoundError:
            pass
        else:  # a symlink is replaced (rename does not follow it); a FIFO, device, socket or directory is refused
            kind = stat.S_IFMT(existing.st_mode)
            if kind not in (stat.S_IFREG, stat.S_IFLNK):
                raise invalid("path", f"{_show(path)} is {FILE_KINDS.get(kind, 'not a regular file')}", _FILES_ONLY)
        if parents:
            os.makedirs(os.path.dirname(path), exist_ok=True)
        _write_atomic(path, payload, mode)
        self.result(request, size=len(payload))

    def op_file_read(self, request: Header, _: bytes) -> None:
        """A regular file's content (or a range of it): never blocks, never reads past MAX_PAYLOAD + 1 bytes."""
        path = _absolute(request)
        offset = _count(request, "offset", MAX_OFFSET) or 0
        length = _count(request, "length", protocol.MAX_PAYLOAD)
        _refuse_irregular(path, os.stat(path).st_mode)  # spares a device the open; the fstat below decides
        # O_NONBLOCK: a FIFO swapped in after the stat opens without waiting for a writer, and files that would
        # block a read (/proc/kmsg) fail it instead.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
        try:
            _refuse_irregular(path, os.fstat(fd).st_mode)
            wanted = protocol.MAX_PAYLOAD if length is None else length
            data = _read_at_most(fd, offset, wanted + 1)  # never trust st_size: /proc files report 0
        except BlockingIOError:
            raise invalid("path", f"reading {_show(path)} would block", _FILES_ONLY) from None
        finally:
            os.close(fd)
        if len(data) > wanted and length is None:
            raise RequestError(
                "too_large",
                f"{_show(path)} holds more than {protocol.MAX_PAYLOAD} bytes",
                "path",
                "read it in ranges (offset, length), or copy it out with an exec",
            )
        eof = len(data) <= wanted
        self.result(request, data if eof else data[:wanted], offset=offset, eof=eof)

    def op_file_list(self, request: Header, _: bytes) -> None:
        """One page of a directory, sorted by name: `limit` entries from `offset` (fewer if they would not fit)."""
        path = _absolute(request)
        offset = _count(request, "offset", MAX_OFFSET) or 0
        limit = _count(request, "limit", MAX_OFFSET)
        if limit == 0:
            raise invalid("limit", "must be at least 1", f"pass 1 to {MAX_LIST_PAGE}, or leave it out")
        limit = min(limit or MAX_LIST_PAGE, MAX_LIST_PAGE)  # more is asked for than one page holds: one page
        try:
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NONBLOCK | os.O_CLOEXEC)
        except NotADirectoryError:
            raise invalid("path", f"{_show(path)} is not a directory", "list a directory; stat a file") from None
        try:
            names = sorted(os.listdir(fd))
            entries: list[Header] = []
            used = 0
            for name in names[offset : offset + limit]:
                entry = {"name": _display_name(name), **_describe_at(fd, name)}
                used += len(protocol.dumps(entry)) + 1
                if used > LIST_PAGE_BYTES and entries:
                    break
                entries.append(entry)
        finally:
            os.close(fd)
        following = offset + len(entries)
        next_offset = following if following < len(names) else None
        self.result(request, entries=entries, total=len(names), next_offset=next_offset)

    def op_file_stat(self, request: Header, _: bytes) -> None:
        path = _absolute(request)
        self.result(request, path=path, **_describe(os.stat(path, follow_symlinks=False)))


# ---- helpers ---------------------------------------------------------------------------------------------


def _spawn(argv: list[str], env: dict[str, str], cwd: str, stdio: tuple[int, int, int]) -> int:
    """Start a command in its own session (so a timeout or signal reaches its children too).

    posix_spawn, not fork: it does not copy the agent's page tables, which is slow under TCG. Python 3.11 has
    no chdir action for it, so the agent (single-threaded) steps into `cwd` around the call.
    """
    program = _which(argv[0], env.get("PATH", BASE_ENV["PATH"]))
    try:
        previous = os.getcwd()
        os.chdir(cwd)
    except OSError as exc:
        message = f"cannot run {_show(argv[0])}: working directory {_show(cwd)}: {exc.strerror}"
        if exc.errno == errno.ENOENT:
            raise RequestError("not_found", message) from None
        if exc.errno == errno.ENOTDIR:
            raise invalid("cwd", message, "pass a directory") from None
        raise RequestError("os", message) from None
    try:
        return os.posix_spawn(
            program,
            argv,
            env,
            file_actions=[(os.POSIX_SPAWN_DUP2, fd, target) for target, fd in enumerate(stdio)],
            setsid=True,
            setsigdef=(signal.SIGPIPE, signal.SIGXFSZ, signal.SIGCHLD),  # Python ignores SIGPIPE; children must not
        )
    except OSError as exc:
        kind = "not_found" if exc.errno == errno.ENOENT else "exec"
        raise RequestError(kind, f"cannot run {_show(argv[0])}: {exc.strerror}") from None
    finally:
        os.chdir(previous)


def _which(name: str, path: str) -> str:
    """The program to run, searched in the command's own PATH (posix_spawnp would use the agent's)."""
    if "/" in name:
        return name
    for directory in path.split(":"):
        candidate = os.path.join(directory or ".", name)
        if os.access(candidate, os.X_OK) and not os.path.isdir(candidate):
            return candidate
    raise RequestError("not_found", f"cannot run {_show(name)}: not found in PATH {_show(path)}")


def _reseed(seed: bytes) -> tuple[bool, str | None]:
    """Mix `seed` into the kernel's input pool and rekey the CRNG from it: (reseeded, why not)."""
    import fcntl  # a C module, loaded only by a clone's first request

    fd = os.open("/dev/urandom", os.O_WRONLY | os.O_CLOEXEC)
    try:
        view = memoryview(seed)
        while view:
            view = view[os.write(fd, view) :]
        try:
            fcntl.ioctl(fd, RNDRESEEDCRNG)
        except OSError as exc:  # EPERM: no CAP_SYS_ADMIN (a container); ENODATA: the CRNG is not ready yet
            return False, f"RNDRESEEDCRNG: {exc.strerror}"
    finally:
        os.close(fd)
    return True, None


def _on_mount(target: str, fd: int | None, call: Callable[[int], object]) -> None:
    """`call` with a descriptor of the filesystem: `fd` itself, or the mount point `target` opened for it."""
    if fd is not None:
        call(fd)
        return
    own = os.open(target, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        call(own)
    finally:
        os.close(own)


def _loopback_up(sock: socket.socket) -> None:
    """Bring `lo` up (SIOCGIFFLAGS, then SIOCSIFFLAGS with IFF_UP): the kernel gives it 127.0.0.1/8 itself."""
    import fcntl
    import struct

    siocgifflags, siocsifflags, iff_up = 0x8913, 0x8914, 0x1
    request = struct.pack("16sh14x", b"lo", 0)
    flags = struct.unpack("16sh14x", fcntl.ioctl(sock.fileno(), siocgifflags, request))[1]
    fcntl.ioctl(sock.fileno(), siocsifflags, struct.pack("16sh14x", b"lo", flags | iff_up))


def _refresh_disk(source: str, size: int) -> None:
    """Before mounting a disk a restored clone got in place of its template's placeholder: wait until the kernel
    reports the disk's real size (the host signals the change), then drop the blocks it cached of the old one."""
    import fcntl

    name = os.path.basename(os.path.realpath(source))
    deadline = time.monotonic() + DISK_WAIT_S
    while True:
        try:
            with open(f"/sys/class/block/{name}/size") as file:
                sectors = int(file.read())
        except (OSError, ValueError) as exc:
            raise RequestError("mount", f"cannot read the size of {source}: {exc}") from None
        if sectors == size // 512:
            break
        if time.monotonic() > deadline:
            raise RequestError(
                "mount", f"{source} still reports {sectors * 512} bytes after {DISK_WAIT_S} s, not {size}"
            )
        time.sleep(0.002)
    fd = os.open(source, os.O_RDONLY | os.O_CLOEXEC)
    try:
        fcntl.ioctl(fd, BLKFLSBUF)
    finally:
        os.close(fd)


def mount(source: str, target: str, fstype: str, flags: int = 0, data: str = "", busy_ok: bool = False) -> None:
    """mount(2) itself: under TCG a fork+exec of the `mount` binary costs 0.1-0.2 s."""
    result = _libc().mount(source.encode(), target.encode(), fstype.encode(), flags, data.encode() or None)
    if result != 0:
        _raise_errno(f"mount {fstype} {source} on {target}", ok=(errno.EBUSY,) if busy_ok else ())


def unmount(target: str) -> None:
    if _libc().umount2(target.encode(), 0) != 0:
        _raise_errno(f"umount {target}")


def _raise_errno(what: str, ok: tuple[int, ...] = ()) -> None:
    import ctypes

    code = ctypes.get_errno()
    if code not in ok:  # EBUSY, when asked: already mounted (by the kernel or an initramfs)
        raise OSError(code, f"{what}: {os.strerror(code)}")


_LIBC: Any = None


def _libc() -> Any:
    """libc through ctypes, loaded on first use: only VMs mount anything, and a container's boot skips it."""
    global _LIBC
    if _LIBC is None:
        import ctypes

        _LIBC = ctypes.CDLL(None, use_errno=True)
    return _LIBC


def _killpg(pid: int, signum: int) -> None:
    try:
        os.killpg(pid, signum)
    except ProcessLookupError:
        pass


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 4096):
            pass
    except BlockingIOError:
        pass


def _wait_writable(fd: int) -> None:
    """Sleep until `fd` takes more bytes (or a second passes: the caller retries, and sees an error then)."""
    poller = selectors.DefaultSelector()
    try:
        poller.register(fd, selectors.EVENT_WRITE)
        poller.select(1.0)
    except (OSError, ValueError):
        pass  # a closed descriptor: the write that follows reports it
    finally:
        poller.close()


def _readable(fd: int) -> bool:
    selector = selectors.DefaultSelector()
    selector.register(fd, selectors.EVENT_READ)
    ready = bool(selector.select(0))
    selector.close()
    return ready


# ---- request validation: every field's type and range, before anything touches the system ----------------

_FILES_ONLY = "only regular files are read or written here; use an exec for anything else"


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)  # JSON true is no number


def _show(value: object, limit: int = 80) -> str:
    """A short repr of what the host sent, for messages: it may be megabytes long."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _check_text(value: object, field: str, fix: str) -> str:
    """A string the kernel can take: no NUL (C strings end there), and encodable as a file-system name."""
    if not isinstance(value, str):
        raise invalid(field, f"must be a string, got {_show(value)}", fix)
    if "\0" in value:
        raise invalid(field, f"contains a NUL byte: {_show(value)}", "remove the NUL (\\0) characters")
    try:
        os.fsencode(value)
    except UnicodeEncodeError:  # a lone surrogate outside the surrogateescape range
        raise invalid(field, f"is not valid Unicode: {_show(value)}", "send valid UTF-8 text") from None
    return value


def _optional_text(request: Header, field: str, fix: str) -> str | None:
    value = request.get(field)
    return None if value is None else _check_text(value, field, fix)


def _argv(request: Header) -> list[str]:
    argv = request.get("argv")
    fix = 'pass e.g. ["python3", "-c", "print(1)"]'
    if not isinstance(argv, list) or not argv:
        raise invalid("argv", f"must be a non-empty list of strings, got {_show(argv)}", fix)
    for arg in argv:
        _check_text(arg, "argv", fix)
    if not argv[0]:
        raise invalid("argv", "the program (argv[0]) is empty", fix)
    return argv


def _is_env_name(name: str) -> bool:
    """[A-Za-z_][A-Za-z0-9_]*, without `re` (a cold boot's import)."""
    return bool(name) and name.isascii() and not name[0].isdigit() and name.replace("_", "a").isalnum()


def _env(request: Header) -> dict[str, str]:
    env = request.get("env")
    if env is None:
        return {}
    fix = 'pass e.g. {"LANG": "C.UTF-8"}: names of letters, digits and _, not starting with a digit'
    if not isinstance(env, dict):
        raise invalid("env", f"must be an object of strings, got {_show(env)}", fix)
    for name, value in env.items():
        if not _is_env_name(name):
            raise invalid("env", f"{_show(name)} is not a variable name", fix)
        _check_text(value, "env", fix)
    return env


def _number(request: Header, field: str, fix: str) -> float | None:
    """None, or a finite number (JSON's 1e999 decodes to infinity)."""
    value = request.get(field)
    if value is None:
        return None
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise invalid(field, f"must be a number, got {_show(value)}", fix)
    try:
        number = float(value)
    except OverflowError:
        raise invalid(field, f"{_show(value)} is too large", fix) from None
    if number - number != 0.0:  # NaN or an infinity, without importing math
        raise invalid(field, f"{_show(value)} is not a finite number", fix)
    return number


def _seconds(request: Header, field: str) -> float | None:
    fix = "pass e.g. 30, or leave it out (null) for no limit"
    seconds = _number(request, field, fix)
    if seconds is not None and seconds <= 0:
        raise invalid(field, f"{_show(request.get(field))} is not a number of seconds above zero", fix)
    return seconds


def _flag(request: Header, field: str, default: bool) -> bool:
    value = request.get(field)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise invalid(field, f"must be true or false, got {_show(value)}", "pass a boolean")
    return value


def _count(request: Header, field: str, maximum: int) -> int | None:
    """None (left out), or an integer from 0 to `maximum`."""
    value = request.get(field)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= maximum:
        raise invalid(field, f"must be an integer from 0 to {maximum}, got {_show(value)}", "pass e.g. 0")
    return value


def _window(request: Header) -> int | None:
    """A credit window in bytes (at least one chunk), or None: the host does not count credit."""
    window = request.get("window")
    if window is None:
        return None
    if not _is_int(window) or not protocol.CHUNK <= window <= protocol.MAX_PAYLOAD:
        fix = f"pass e.g. {protocol.WINDOW}, or leave it out"
        raise invalid("window", f"must be an integer from {protocol.CHUNK} to {protocol.MAX_PAYLOAD}", fix)
    return int(window)


def _target(request: Header) -> int:
    """The exec or stream a control frame is for; 0 (never an id) when it is no integer."""
    target = request.get("target")
    return target if isinstance(target, int) and not isinstance(target, bool) else 0


def _mode(request: Header) -> int:
    mode = request.get("mode")
    if mode is None:
        return 0o644
    if not isinstance(mode, int) or isinstance(mode, bool) or not 0 <= mode <= 0o7777:
        raise invalid("mode", f"must be permission bits from 0 to 0o7777, got {_show(mode)}", "pass e.g. 0o644")
    return mode


def _mounts(request: Header) -> list[tuple[str, str, str, int | None]]:
    mounts = request.get("mounts")
    fix = 'pass e.g. [{"source": "/dev/vdb", "target": "/data", "fstype": "ext4"}]'
    if mounts is None:
        return []
    if not isinstance(mounts, list) or not all(isinstance(mount, dict) for mount in mounts):
        raise invalid("mounts", f"must be a list of objects, got {_show(mounts)}", fix)
    found = []
    for mount in mounts:
        source = _check_text(mount.get("source"), "mounts", fix)
        target = _check_text(mount.get("target"), "mounts", fix)
        fstype = _check_text(mount.get("fstype", "ext4"), "mounts", fix)
        if not target.startswith("/"):
            raise invalid("mounts", f"target {_show(target)} is not an absolute path", fix)
        size = mount.get("size")  # a restored clone's volume: its size, see _refresh_disk
        if size is not None and (not _is_int(size) or not 0 < size <= MAX_OFFSET):
            raise invalid("mounts", f"size {_show(size)} is not a number of bytes above zero", fix)
        found.append((source, target, fstype, size))
    return found


def _absolute(request: Header) -> str:
    fix = 'pass an absolute path such as "/work/notes.txt"'
    path = _check_text(request.get("path"), "path", fix)
    if not path.startswith("/"):
        raise invalid("path", f"must be an absolute path, got {_show(path)}", fix)
    return os.path.normpath(path)


# ---- files -------------------------------------------------------------------------------------------------


def _refuse_irregular(path: str, mode: int) -> None:
    """Only regular files are read: a FIFO's open or read blocks, a device (/dev/zero) never ends."""
    if not stat.S_ISREG(mode):
        kind = FILE_KINDS.get(stat.S_IFMT(mode), "not a regular file")
        raise invalid("path", f"{_show(path)} is {kind}", _FILES_ONLY)


def _read_at_most(fd: int, offset: int, limit: int) -> bytes:
    """Up to `limit` bytes from `offset`, in bounded reads, until end of file."""
    chunks = []
    remaining = limit
    while remaining > 0:
        data = os.pread(fd, min(remaining, 1 << 20), offset)
        if not data:
            break
        chunks.append(data)
        offset += len(data)
        remaining -= len(data)
    return b"".join(chunks)


def _display_name(name: str) -> str:
    """A directory entry's name as text: bytes that are not UTF-8 show as \\xNN (backslashreplace), so any name
    encodes as JSON; such a name is for display only and will not find the file again."""
    if name.isascii():
        return name
    try:
        name.encode()
    except UnicodeEncodeError:  # os.listdir surrogate-escaped the undecodable bytes
        return os.fsencode(name).decode("utf-8", "backslashreplace")
    return name


def _describe_at(directory_fd: int, name: str) -> dict[str, Any]:
    try:
        return _describe(os.stat(name, dir_fd=directory_fd, follow_symlinks=False))
    except OSError:  # gone (or unreadable) since the listing: still listed, with nothing known about it
        return {"type": "other", "size": 0, "mode": 0, "mtime": 0.0}


def _write_atomic(path: str, data: bytes, mode: int) -> None:
    """Write a temporary file beside `path` and rename it over `path`: readers never see half a file.

    The temporary file is created with O_EXCL | O_NOFOLLOW, so nothing planted at its name (a symlink to
    somewhere else, a FIFO) is followed or opened: a name that is taken is skipped for a random one.
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    temporary = f"{path}.podbay-{os.getpid()}.tmp"
    for attempt in range(8):
        try:
            fd = os.open(temporary, flags, 0o600)
            break
        except OSError as exc:  # taken (EEXIST), or `path` plus the suffix is too long a name
            if exc.errno not in (errno.EEXIST, errno.ELOOP, errno.ENAMETOOLONG) or attempt == 7:
                raise
        # Random only now: os.urandom can wait for the kernel's entropy early in a VM's boot (init writes here).
        temporary = os.path.join(os.path.dirname(path), f".podbay-{os.urandom(8).hex()}.tmp")
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fchmod(fd, mode)  # on the fd, not the name: the name could be swapped for a symlink meanwhile
        finally:
            os.close(fd)
        os.replace(temporary, path)
    except BaseException:
        try:
            os.unlink(temporary)
        except OSError:
            pass
        raise


def _describe(st: os.stat_result) -> dict[str, Any]:
    return {
        "type": FILE_TYPES.get(stat.S_IFMT(st.st_mode), "other"),
        "size": st.st_size,
        "mode": stat.S_IMODE(st.st_mode),
        "mtime": st.st_mtime,
    }


def _find_virtio_port(name: str, wait_seconds: float = 10.0) -> str:
    deadline = time.monotonic() + wait_seconds
    while True:
        try:
            for entry in os.listdir("/sys/class/virtio-ports"):
                with open(f"/sys/class/virtio-ports/{entry}/name") as file:
                    if file.read().strip() == name:
                        return f"/dev/{entry}"
        except FileNotFoundError:
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"podbay agent: no virtio-serial port named {name}")
        time.sleep(0.01)


def vsock_port_number(transport: str) -> int:
    """`vsock:PORT` -> PORT, a listening port (1 .. 2**32 - 2; the top value means "any port")."""
    number = transport.removeprefix("vsock:")
    if not number.isdigit() or not 0 < int(number) < 2**32 - 1:
        raise SystemExit(f"podbay agent: bad vsock port in {transport!r}; expected vsock:PORT, e.g. vsock:1024")
    return int(number)


def open_port(transport: str) -> Port:
    if transport == "virtio-serial":
        fd = os.open(_find_virtio_port(protocol.PORT_NAME), os.O_RDWR | os.O_CLOEXEC)
        return Port(fd, fd, reconnects=True)
    if transport == "stdio":
        return Port(os.dup(0), os.dup(1), reconnects=False)
    if transport.startswith("fd:"):
        fd = int(transport[3:])
        return Port(fd, fd, reconnects=False)
    if transport.startswith("vsock:"):
        import socket  # only Firecracker's vsock needs it: keep it off the other boots

        listener = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
        listener.bind((socket.VMADDR_CID_ANY, vsock_port_number(transport)))
        listener.listen(1)
        return ListeningPort(listener)
    raise SystemExit(f"podbay agent: unknown transport {transport!r}")


def main(argv: list[str]) -> None:
    options = {"transport": "virtio-serial", "state-dir": STATE_DIR, "workdir": DEFAULT_CWD, "layer-fd": ""}
    for arg in argv:
        name, _, value = arg.removeprefix("--").partition("=")
        if name not in options:
            raise SystemExit(f"podbay agent: unknown option {arg!r}; known: {sorted(options)}")
        options[name] = value
    transport = options["transport"]
    port = open_port(transport)
    if transport == "stdio":  # keep stray prints of children off the channel
        null = os.open(os.devnull, os.O_RDWR)
        os.dup2(null, 0)
        os.dup2(null, 1)
    layer_fd = int(options["layer-fd"]) if options["layer-fd"] else None
    Agent(port, options["state-dir"], options["workdir"], layer_fd).serve()


if __name__ == "__main__":
    main(sys.argv[1:])
