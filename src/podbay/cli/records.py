"""The seam between the commands about what pods left (`podbay logs | trace | postmortem | debug`, `podbay snapshot
ls | rm`) and where it lives: `Records`, which both the server's `Client` and `LocalRecords` (this host's
PODBAY_STATE) satisfy (mypy checks both at `open_records`), so each command is written once.

With PODBAY_SERVER (or `--server`) the commands read the tenant's own records through the REST API with
PODBAY_TOKEN; without it, the post-mortems and snapshots of the embedded platform in PODBAY_STATE.
"""

from __future__ import annotations

import builtins
from typing import Protocol

from podbay.cli.remote import CliPod
from podbay.models import Phase, SnapshotInfo
from podbay.paths import PodbayPaths
from podbay.postmortem import CONSOLE_KEPT, POD_ID, PostMortem, PostMortemStore, read_tail
from podbay.snapshots import SnapshotStore
from podbay.sync import Platform


class Records(Protocol):
    """Where post-mortems, console logs and snapshots are read: a server (the tenant's own) or this host."""

    def console(self, pod_id: str, tail: int | None = None) -> str: ...

    def trace(self, pod_id: str) -> builtins.list[Phase]: ...

    def postmortems(self) -> builtins.list[PostMortem]: ...

    def postmortem(self, pod_id: str) -> PostMortem: ...

    def snapshots(self) -> builtins.list[SnapshotInfo]: ...

    def delete_snapshot(self, name: str) -> None: ...

    def restore(self, name: str) -> CliPod: ...

    def close(self) -> None: ...


class LocalRecords:
    """What pods of the embedded platform left in PODBAY_STATE; a restore makes a Platform (closed by close())."""

    def __init__(self, paths: PodbayPaths | None = None) -> None:
        self.paths = paths or PodbayPaths.from_env()
        self.store = PostMortemStore(self.paths.state / "postmortems")
        self.snapshot_store = SnapshotStore(self.paths.state / "snapshots")
        self._platform: Platform | None = None

    def console(self, pod_id: str, tail: int | None = None) -> str:
        """A live pod's console log (a VM's, in its run directory), else its post-mortem's."""
        tail = tail or CONSOLE_KEPT
        data = None
        if POD_ID.match(pod_id):
            live = self.paths.pods / pod_id / "console.log"
            if live.exists():
                data = read_tail(live, tail)
        if data is None:
            data = self.store.console(pod_id)[-tail:]
        return data.decode(errors="replace")

    def trace(self, pod_id: str) -> builtins.list[Phase]:
        return self.store.load(pod_id).trace

    def postmortems(self) -> builtins.list[PostMortem]:
        return self.store.list()

    def postmortem(self, pod_id: str) -> PostMortem:
        return self.store.load(pod_id)

    def snapshots(self) -> builtins.list[SnapshotInfo]:
        return self.snapshot_store.list()

    def delete_snapshot(self, name: str) -> None:
        self.snapshot_store.remove(name)

    def restore(self, name: str) -> CliPod:
        if self._platform is None:
            self._platform = Platform(self.paths)
        return self._platform.restore(name)

    def close(self) -> None:
        platform, self._platform = self._platform, None
        if platform is not None:
            platform.close()


def open_records(server: str | None, token: str | None) -> Records:
    """The server's client if a server is named, else this host's records (the caller closes either)."""
    if server:
        from podbay.sdk import Client

        client: Records = Client(server, token)
        return client
    local: Records = LocalRecords()
    return local
