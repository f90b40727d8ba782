"""A test double for unit tests: the real guest agent as a plain host process on a socketpair.

It is NOT isolation: commands run on the host as the calling user. It exists so the protocol, channel and
platform logic can be tested in milliseconds without a VM; it is never registered by default.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import sys
from pathlib import Path
from typing import Any

from podbay.channel import GuestChannel
from podbay.errors import GuestError
from podbay.guest import agent
from podbay.isolation.base import Availability, Capabilities, SandboxConfig
from podbay.isolation.supervise import kill_processes_mentioning
from podbay.models import SandboxInfo


class LocalProcessBackend:
    name = "local"
    mounts_volumes_on_host = False
    capabilities = Capabilities()

    def availability(self) -> Availability:
        return Availability(True, "test double: the agent runs on the host, unisolated")

    def describe(self) -> SandboxInfo:
        return SandboxInfo(
            backend=self.name, isolation="none (test double)", accelerator="none", security_boundary=False
        )

    async def reap(self, run_dir: Path) -> None:
        kill_processes_mentioning(run_dir)

    async def prepare_layer(self, run_dir: Path, size_mib: int) -> None:
        return None  # the test double writes straight into its run directory

    async def start(self, config: SandboxConfig) -> LocalSandbox:
        host_end, agent_end = socket.socketpair()
        workdir = config.run_dir / "work"
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-I",
            "-S",
            agent.__file__,
            f"--transport=fd:{agent_end.fileno()}",
            f"--state-dir={config.run_dir / 'state'}",
            f"--workdir={workdir}",
            pass_fds=[agent_end.fileno()],
            start_new_session=True,
        )
        agent_end.close()
        reader, writer = await asyncio.open_unix_connection(sock=host_end)
        info = self.describe().model_copy(update={"pid": process.pid})
        sandbox = LocalSandbox(info, GuestChannel(reader, writer), process, config.run_dir)
        await sandbox.channel.request("health", timeout=10)
        return sandbox


class LocalSandbox:
    def __init__(
        self, info: SandboxInfo, channel: GuestChannel, process: asyncio.subprocess.Process, run_dir: Path
    ) -> None:
        self.info = info
        self.channel = channel
        self.guest_mounts: list[dict[str, Any]] = []
        self._process = process
        self._run_dir = run_dir

    @property
    def alive(self) -> bool:
        return self._process.returncode is None

    async def pause(self) -> None:
        self._process.send_signal(19)  # SIGSTOP

    async def resume(self) -> None:
        self._process.send_signal(18)  # SIGCONT

    async def destroy(self) -> None:
        await self.channel.close()
        with contextlib.suppress(ProcessLookupError):
            self._process.kill()
        await self._process.wait()
        shutil.rmtree(self._run_dir / "work", ignore_errors=True)


class ReattachableLocalBackend(LocalProcessBackend):
    """The test double with `Capabilities.reattach`, for the platform's and the server's recovery logic.

    Its agents speak over socketpairs, which no second process can reach, so "re-attaching" hands back the
    sandbox this backend object started under that run directory, if its agent still runs: a test passes one
    backend to the platform that dies and to the one that takes over (both in the test's process).
    """

    capabilities = Capabilities(reattach=True)

    def __init__(self) -> None:
        self.started: dict[Path, ReattachableLocalSandbox] = {}

    async def start(self, config: SandboxConfig) -> ReattachableLocalSandbox:
        plain = await super().start(config)
        sandbox = ReattachableLocalSandbox(plain.info, plain.channel, plain._process, config.run_dir)
        self.started[config.run_dir] = sandbox
        return sandbox

    async def reattach(self, run_dir: Path, record: dict[str, Any], *, paused: bool) -> LocalSandbox:
        sandbox = self.started.get(run_dir)
        if sandbox is None or sandbox.info.pid != record.get("pid") or not sandbox.alive:
            raise GuestError(f"its agent (pid {record.get('pid')}) is gone")
        await sandbox.resume()
        await sandbox.channel.request("health", timeout=10)
        if paused:
            await sandbox.pause()
        return sandbox


class ReattachableLocalSandbox(LocalSandbox):
    def record(self) -> dict[str, Any]:
        return {"pid": self.info.pid}

    async def detach(self) -> None:
        """Nothing to close: the same object is handed back by `reattach`."""
