"""One pod's redis-server: its directory, configuration, process and the admin connection podbay keeps to it.

Layout of `<root>/<name>/` (0700, owned by the server's account; root reaches it):

    redis.conf     the configuration (owned by the server's account, 0600); passwords only as SHA-256 hashes
    admin.secret   the admin user's password, for podbay alone (owned by podbay's user, 0600)
    meta.json      pod id, retain policy, state, times (owned by podbay's user): what a later process reads
    redis.sock     the only way in (no TCP: `port 0`)
    redis.log      the server's log (its tail is quoted when it will not start)
    dump.rdb       the data, written only by an explicit SAVE (a retained pod's end, a fork, a snapshot, export)

The directory belongs to the server's account, so everything podbay reads back from it is opened without
following links and checked to be a regular file (podbay's own files: owned by podbay's user), because a
compromised server could put a link to a host file there.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import pwd
import re
import secrets
import shutil
import signal
import stat
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Literal

from podbay.errors import DatabaseUnavailable, HostError, InvalidSpec
from podbay.isolation.supervise import command_lines_mentioning, is_gone, process_identity

MAXMEMORY = 64 * 1024 * 1024  # the pod's data; clients' buffers have their own cap (maxmemory-clients)
START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 10.0
SHUTDOWN_TIMEOUT_S = 2.0  # a server busy with a pod's endless script answers no one for 5 s: it is killed instead
ADMIN_TIMEOUT_S = 60.0  # a SAVE of a full instance takes well under a second; this is for a loaded host
LOG_TAIL = 2000
ADMIN_USER = "podbay"
SOCKET_PATH_MAX = 107  # sun_path holds 108 bytes with the NUL
# The pod's user: every data command (FLUSHDB, KEYS, SORT and SWAPDB are "dangerous" only for a shared server)
# but nothing that administers the server, reaches the network (MIGRATE), feeds it crafted payloads (RESTORE,
# DEBUG), shows host paths (INFO) or lets a client escape the limits (CLIENT NO-EVICT).
POD_COMMANDS = "+@all -@admin -@dangerous +flushdb +flushall +swapdb +sort +sort_ro +keys"
_NAME = re.compile(r"^pod_[a-z0-9_]{1,64}$")
_POD_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
_STARTED_PID = re.compile(rb"pid=(\d+), just started")

State = Literal["starting", "running", "retained"]


def instance_name(pod_id: str) -> str:
    """`pod_<id>` for a pod id such as `pod-1a2b3c`: lower-case letters, digits and `_` only."""
    if not _POD_ID.fullmatch(pod_id):
        raise InvalidSpec("pod_id", f"{pod_id!r} cannot name a Redis instance", "use letters, digits, '-' and '_'")
    body = pod_id.lower().removeprefix("pod-").replace("-", "_")
    return f"pod_{body}"


def check_name(name: str) -> str:
    """`name` if it is one `instance_name` makes (so it cannot lead out of the root), else InvalidSpec."""
    if not _NAME.fullmatch(name):
        raise InvalidSpec("name", f"{name!r} is not a Redis instance of podbay", "pass the grant podbay made")
    return name


@dataclass(frozen=True)
class Meta:
    pod_id: str
    name: str
    retain: bool
    created: float  # wall-clock seconds
    state: State
    retained_at: float | None = None


@dataclass(frozen=True)
class Account:
    """Who the server runs as: the `redis` account when podbay is root, else podbay's own user."""

    uid: int
    gid: int
    name: str

    @classmethod
    def for_server(cls, name: str) -> Account:
        if os.geteuid() != 0:
            return cls(os.geteuid(), os.getegid(), pwd.getpwuid(os.geteuid()).pw_name)
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            raise DatabaseUnavailable(
                f"the {name!r} account does not exist, and redis-server must not run as root; "
                "install it with `apt install redis-server` (or run scripts/setup)"
            ) from None
        if entry.pw_uid == 0:
            raise DatabaseUnavailable(f"the {name!r} account is root: redis-server must run as an unprivileged one")
        return cls(entry.pw_uid, entry.pw_gid, name)

    def command(self, argv: Sequence[str]) -> list[str]:
        if os.geteuid() != self.uid:
            return ["setpriv", f"--reuid={self.uid}", f"--regid={self.gid}", "--init-groups", "--", *argv]
        return list(argv)


class Instance:
    """The files and process of one instance directory (nothing here knows which provider call runs)."""

    def __init__(self, root: Path, name: str) -> None:
        self.name = check_name(name)
        self.dir = root / name

    @property
    def socket(self) -> Path:
        return self.dir / "redis.sock"

    @property
    def config(self) -> Path:
        return self.dir / "redis.conf"

    @property
    def rdb(self) -> Path:
        return self.dir / "dump.rdb"

    # ---- podbay's own files -----------------------------------------------------------------------------------

    def read_meta(self) -> Meta | None:
        """The instance's meta.json, or None if it has none (half made, or not one of podbay's)."""
        raw = read_own_file(self.dir / "meta.json")
        if raw is None:
            return None
        try:
            found = json.loads(raw)
            known = {field.name for field in fields(Meta)}  # an older podbay wrote more (creator, template)
            return Meta(**{key: value for key, value in found.items() if key in known})
        except (ValueError, TypeError, AttributeError):
            return None

    def write_meta(self, meta: Meta) -> None:
        write_own_file(self.dir / "meta.json", json.dumps(asdict(meta)).encode())

    def admin_secret(self) -> str | None:
        raw = read_own_file(self.dir / "admin.secret")
        return raw.decode() if raw else None

    # ---- the configuration ------------------------------------------------------------------------------------

    def write_config(self, secret: str, admin_secret: str, account: Account, extra: Sequence[str]) -> None:
        directory = quote(self.dir)
        if len(str(self.socket).encode()) > SOCKET_PATH_MAX:
            raise DatabaseUnavailable(
                f"the Redis socket path {self.socket} is longer than {SOCKET_PATH_MAX} bytes; "
                "point PODBAY_DB_DIR at a shorter directory"
            )
        lines = [
            "# podbay: one pod's private Redis (podbay.state.redis). Passwords are stored as SHA-256 hashes.",
            "daemonize yes",
            "port 0",
            f"unixsocket {quote(self.socket)}",
            "unixsocketperm 700",
            f"dir {directory}",
            "dbfilename dump.rdb",
            f"logfile {quote(self.dir / 'redis.log')}",
            f"pidfile {quote(self.dir / 'redis.pid')}",
            'save ""',
            "appendonly no",
            f"maxmemory {MAXMEMORY}",
            "maxmemory-policy noeviction",
            "maxmemory-clients 16mb",
            "maxclients 320",  # more than a channel's streams (podbay.tunnel.MAX_STREAMS): room for podbay's own
            "client-output-buffer-limit normal 16mb 8mb 30",
            "client-output-buffer-limit pubsub 8mb 2mb 60",
            "client-query-buffer-limit 16mb",
            "proto-max-bulk-len 16mb",
            "io-threads 1",
            "always-show-logo no",
            "set-proc-title yes",
            'proc-title-template "{title} {config-file}"',  # so its processes are found by their directory
            "sanitize-dump-payload yes",  # a payload the pod crafted (FUNCTION RESTORE) is checked in depth
            "enable-debug-command no",
            "enable-module-command no",
            "enable-protected-configs no",
            f"user default reset on #{sha256(secret)} ~* &* {POD_COMMANDS}",
            f"user {ADMIN_USER} reset on #{sha256(admin_secret)} ~* &* +@all",
            *extra,
        ]
        write_own_file(self.dir / "admin.secret", admin_secret.encode())
        write_own_file(self.config, ("\n".join(lines) + "\n").encode())
        os.chown(self.config, account.uid, account.gid)

    # ---- the process ------------------------------------------------------------------------------------------

    async def launch(self, server: str, account: Account) -> None:
        """Start the server (it daemonizes into its own session, so it outlives podbay) and wait until it
        answers the admin user's PING. DatabaseUnavailable with the server's own words if it does not."""
        argv = account.command([server, str(self.config)])
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C"}  # none of podbay's secrets
        try:
            process = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        except OSError as exc:
            raise DatabaseUnavailable(f"cannot run {server}: {exc}; `apt install redis-server`") from None
        try:
            async with asyncio.timeout(START_TIMEOUT_S):
                output, _ = await process.communicate()
        except TimeoutError:
            raise DatabaseUnavailable(f"redis-server did not daemonize within {START_TIMEOUT_S} s") from None
        finally:
            if process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await process.wait()
        if process.returncode != 0:
            raise DatabaseUnavailable(
                f"redis-server would not start (exit {process.returncode}): {tail(output)}{self._log_tail()}"
                f"{self._reach_hint(account)}"
            )
        await self._wait_ready()

    async def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            pid = self._started_pid()
            if pid is not None and is_gone(pid):
                raise DatabaseUnavailable(f"redis-server exited while starting: {self._log_tail()}")
            with contextlib.suppress(OSError, AdminError, TimeoutError):
                if await self.admin("PING") == "PONG":
                    return
            await asyncio.sleep(0.01)
        raise DatabaseUnavailable(f"redis-server did not answer within {START_TIMEOUT_S} s: {self._log_tail()}")

    def _started_pid(self) -> int | None:
        raw = read_regular(self.dir / "redis.log", limit=1 << 16)
        found = _STARTED_PID.search(raw or b"")
        return int(found.group(1)) if found else None

    def _log_tail(self) -> str:
        raw = read_regular(self.dir / "redis.log", limit=1 << 20)
        return f" (its log: {tail(raw)})" if raw else ""

    def _reach_hint(self, account: Account) -> str:
        if account.uid == os.geteuid():
            return ""
        return f"; the {account.name!r} account must be able to reach {self.dir} (each parent directory 0755)"

    def pids(self, account: Account) -> list[int]:
        """This instance's server processes: their title names its configuration file, and they run as the
        server's account (a process of another user is never taken for one, whatever it calls itself)."""
        found = []
        for pid in command_lines_mentioning(self.config):
            with contextlib.suppress(OSError):
                if os.stat(f"/proc/{pid}").st_uid == account.uid and not is_gone(pid):
                    found.append(pid)
        return found

    def processes(self, account: Account) -> dict[int, str]:
        """`pids` with each one's identity (pid and start time), to follow them without looking again."""
        return {pid: identity for pid in self.pids(account) if (identity := process_identity(pid)) is not None}

    async def admin(self, *command: str, timeout: float = ADMIN_TIMEOUT_S) -> object:
        """One command as podbay's admin user over the instance's socket."""
        secret = self.admin_secret()
        if secret is None:
            raise AdminError("the instance has no admin secret")
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_unix_connection(self.socket)
            try:
                writer.write(encode("AUTH", ADMIN_USER, secret) + encode(*command))
                await writer.drain()
                await read_reply(reader)
                return await read_reply(reader)
            finally:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()

    async def save(self) -> None:
        """SAVE now: dump.rdb then holds the data of this instant. DatabaseUnavailable if it cannot."""
        try:
            await self.admin("SAVE")
        except (OSError, AdminError, TimeoutError) as exc:
            raise DatabaseUnavailable(
                f"Redis instance {self.name} could not save its data: {describe(exc)}{self._log_tail()}"
            ) from None

    async def revoke(self) -> None:
        """The pod's login ends now: its user is switched off and its connections closed (podbay's own admin
        connection is another user's), so nothing the pod writes after this point is lost by a SAVE."""
        with contextlib.suppress(OSError, AdminError, TimeoutError, asyncio.IncompleteReadError):
            await self.admin("ACL", "SETUSER", "default", "off", "resetpass", timeout=SHUTDOWN_TIMEOUT_S)
            await self.admin("CLIENT", "KILL", "USER", "default", timeout=SHUTDOWN_TIMEOUT_S)

    async def stop(self, account: Account, processes: dict[int, str] | None = None) -> None:
        """Stop the server without saving: SHUTDOWN NOSAVE as the admin user, or SIGKILL at once if it will not
        take the command (busy, out of reach), or after STOP_TIMEOUT_S. Returns once no process of it is left.
        Its processes are found once (`processes` if the caller has just looked), then followed by identity: a
        pid reused meanwhile by another process is never waited for nor killed."""
        running = _still_running(self.processes(account) if processes is None else processes)
        if not running:
            return
        try:
            await self.admin("SHUTDOWN", "NOSAVE", timeout=SHUTDOWN_TIMEOUT_S)
        except (asyncio.IncompleteReadError, ConnectionResetError):
            pass  # it hung up: what a server that shuts down does
        except (OSError, AdminError, TimeoutError):
            _kill(running)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while running := _still_running(running):
            if time.monotonic() > deadline:
                _kill(running)
            if time.monotonic() > deadline + STOP_TIMEOUT_S:
                raise HostError(
                    f"Redis instance {self.name} survived SIGKILL (pids {sorted(running)}); kill them by hand"
                )
            await asyncio.sleep(0.01)

    def remove(self) -> None:
        try:
            shutil.rmtree(self.dir)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise HostError(f"cannot remove the Redis instance directory {self.dir}: {exc}") from None

    def forget_server_files(self) -> None:
        """A retained instance keeps dump.rdb, its log and meta.json: the rest served a process now gone."""
        for leftover in ("redis.sock", "redis.conf", "redis.pid", "admin.secret"):
            with contextlib.suppress(FileNotFoundError):
                (self.dir / leftover).unlink()

    def size_on_disk(self) -> int:
        with contextlib.suppress(OSError):
            info = os.lstat(self.rdb)
            if stat.S_ISREG(info.st_mode):
                return info.st_size
        return 0


def _still_running(processes: dict[int, str]) -> dict[int, str]:
    """Those of `processes` (pid: identity) that are the same processes still, and not yet gone."""
    return {
        pid: identity for pid, identity in processes.items() if process_identity(pid) == identity and not is_gone(pid)
    }


def _kill(processes: dict[int, str]) -> None:
    for pid in _still_running(processes):
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)


class AdminError(Exception):
    """The server answered the admin connection with an error (not a PodbayError: always caught here)."""


# ---- a minimal RESP client: podbay sends a handful of admin commands, no more --------------------------------


def encode(*parts: str) -> bytes:
    out = [f"*{len(parts)}\r\n".encode()]
    for part in parts:
        data = part.encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


async def read_reply(reader: asyncio.StreamReader) -> object:
    line = (await reader.readuntil(b"\r\n"))[:-2]
    kind, body = line[:1], line[1:].decode(errors="replace")
    if kind == b"+":
        return body
    if kind == b"-":
        raise AdminError(body)
    if kind == b":":
        return int(body)
    if kind == b"$":
        size = int(body)
        return None if size < 0 else (await reader.readexactly(size + 2))[:-2]
    if kind == b"*":
        return [await read_reply(reader) for _ in range(max(int(body), 0))]
    raise AdminError(f"unexpected reply {line[:40]!r}")


# ---- files in a directory the server's account owns ----------------------------------------------------------


def read_regular(path: Path, limit: int) -> bytes | None:
    """The last `limit` bytes of `path` if it is a regular file (never through a link), else None."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as file:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            return None
        file.seek(max(info.st_size - limit, 0))
        return file.read(limit)


def read_own_file(path: Path) -> bytes | None:
    """A small file podbay wrote itself: a regular file owned by podbay's user, else None."""
    with contextlib.suppress(OSError):
        if os.lstat(path).st_uid != os.geteuid():
            return None
    return read_regular(path, limit=1 << 16)


def write_own_file(path: Path, data: bytes) -> None:
    """Write `path` atomically (a fresh temporary file of an unguessable name, renamed over it), 0600."""
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    try:
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(fd)
        os.replace(temporary, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            temporary.unlink()
        raise HostError(f"cannot write {path}: {exc}") from None


def copy_regular(source: Path, dest: Path) -> None:
    """Copy `source` (a regular file, never through a link) to `dest` atomically; HostError if it cannot."""
    temporary = dest.with_name(f".{dest.name}.{secrets.token_hex(8)}.tmp")
    try:
        fd = os.open(source, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
        with os.fdopen(fd, "rb") as reading:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise HostError(f"{source} is not a regular file")
            out = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            with os.fdopen(out, "wb") as writing:
                shutil.copyfileobj(reading, writing, 1 << 20)
                writing.flush()
                os.fsync(out)
        os.replace(temporary, dest)
    except OSError as exc:
        with contextlib.suppress(OSError):
            temporary.unlink()
        raise HostError(f"cannot copy {source} to {dest}: {exc}") from None


def quote(path: Path) -> str:
    text = str(path)
    if any(char in text for char in '"\\\n\r') or not text.isprintable():
        raise HostError(f"the path {text!r} cannot go into a Redis configuration; use a plainer PODBAY_DB_DIR")
    return f'"{text}"'


def sha256(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def tail(raw: bytes | None) -> str:
    return (raw or b"").decode(errors="replace")[-LOG_TAIL:].strip()


def describe(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__
