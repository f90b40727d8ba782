"""What every VM sandbox shares, written once: the VMM process, the agent's channel, start-error translation,
pause bookkeeping and an ordered, fail-closed destroy.

A VMM (QEMU, Firecracker) subclasses `VmSandbox` and says only what differs: how to pause and resume its
vCPUs, how to stop and disconnect from its process, what to release afterwards, and where its logs are.
Clones, snapshots and restores build on the same class, so they stop and fail the same way.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any, TypeVar

from podbay.channel import GuestChannel
from podbay.errors import GuestError, PodbayError, Timeout
from podbay.isolation.base import SandboxConfig
from podbay.isolation.supervise import ProcessExited, VmmProcess, shut_down_agent, unless_exited, volume_mounts
from podbay.models import SandboxInfo

T = TypeVar("T")


class VmSandbox:
    vmm = "the VMM"  # how messages name the process, e.g. "QEMU"
    # Seconds a failed step waits for the VMM to exit: its exit status says more than the broken pipe.
    exit_grace_s = 1.0

    def __init__(self, info: SandboxInfo, process: VmmProcess, config: SandboxConfig) -> None:
        self.info = info
        self._process = process
        self._channel: GuestChannel | None = None
        self._paused = False
        self._destroyed = False
        self.guest_mounts: list[dict[str, Any]] = volume_mounts(config)

    @property
    def channel(self) -> GuestChannel:
        if self._channel is None:
            raise GuestError("the sandbox is not connected")
        return self._channel

    @property
    def alive(self) -> bool:
        """The VMM still runs (a pool checks this before handing a member out)."""
        return self._process.returncode is None and not self._destroyed

    async def until_answer(self, work: Awaitable[T], timeout: float, what: str) -> T:
        """Run a start step; if the VMM exits or the step fails, raise an error in the VMM's own words."""
        try:
            return await unless_exited(self._process, work, timeout, grace=self.exit_grace_s)
        except ProcessExited as exited:
            raise self.exited_error(exited.status, what) from None
        except Timeout:
            raise Timeout(f"waited {timeout} s for {what}; {self.vmm} still runs.\n{self.diagnostics()}") from None
        except Exception as exc:
            if isinstance(exc, self.passthrough_errors()) or not isinstance(
                exc, (GuestError, OSError, *self.wrapped_errors())
            ):
                raise
            raise GuestError(f"{exc}\n{self.diagnostics()}") from None

    def exited_error(self, status: int, what: str) -> PodbayError:
        return GuestError(f"{self.vmm} exited with status {status} while waiting for {what}.\n{self.diagnostics()}")

    def passthrough_errors(self) -> tuple[type[BaseException], ...]:
        """Errors that already explain themselves (e.g. the VMM's own refusal of a request)."""
        return ()

    def wrapped_errors(self) -> tuple[type[BaseException], ...]:
        """Errors of the VMM's control library, reported as GuestError with the diagnostics."""
        return ()

    def diagnostics(self) -> str:
        raise NotImplementedError

    async def pause(self) -> None:
        await self._pause_vcpus()
        self._paused = True

    async def resume(self) -> None:
        await self._resume_vcpus()
        self._paused = False

    async def destroy(self) -> None:
        """Ask the agent to sync and unmount, stop the VMM, then release what it held; safe to call twice.

        A subclass's `_release` raises if anything may still run (the caller then keeps the pod's volume held)."""
        if self._destroyed:
            return
        self._destroyed = True
        try:
            if self._channel is not None and self._process.returncode is None:
                await shut_down_agent(self._channel, self.resume if self._paused else None)
            await self._stop_vmm()
        finally:
            if self._channel is not None:
                await self._channel.close()
            await self._disconnect()
        await self._release()

    async def detach(self) -> None:
        """Let go of the sandbox without stopping it, for a later process to re-attach (`podbay serve
        --keep-pods`): close the channel and the control connection; the VMM keeps running, and keeps the locks
        it inherited. This object is unusable afterwards."""
        if self._destroyed:
            return
        self._destroyed = True
        if self._channel is not None:
            await self._channel.close()
            self._channel = None
        await self._disconnect()
        await self._let_go()

    async def _let_go(self) -> None:
        """What this process held for a VMM it leaves running (log readers, its copy of the uid lock)."""

    async def _pause_vcpus(self) -> None:
        raise NotImplementedError

    async def _resume_vcpus(self) -> None:
        raise NotImplementedError

    async def _stop_vmm(self) -> None:
        raise NotImplementedError

    async def _disconnect(self) -> None:
        """Close the control connection (QMP, the REST API); never raises."""

    async def _release(self) -> None:
        """What the VMM held once it is gone: its uid, its logs, its jail."""
