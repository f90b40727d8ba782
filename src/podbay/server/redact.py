"""What a tenant may not learn about the server's host, removed in this one place: every PodInfo and
SnapshotInfo a tenant route answers goes through `pod_info` / `snapshot_info`, and every error message through
`text` (errors.py), so no host path, pid, uid or host-side volume name reaches a tenant.

- `SandboxInfo.pid` and `.console_log` (the VMM's pid, a file in the pod's run directory): dropped.
- Paths under the server's state and cache roots and its database servers' directory (run directories,
  volume images, snapshots, images, Postgres/Redis sockets and data) in any free text (errors, a phase's
  detail, a note, why a pod ended): replaced by `<host path>`.
- `pid N`, `uid N`, `gid N` in free text: the number goes; a volume's host name (`tv-...`) too.
- `DatabaseInfo` / `TemplateInfo` (server databases): no secret or path by construction; names scrubbed anyway.
- `PodInfo.volume` and `spec.volume`: the tenant's own name for its volume (the host's `tv-...` name never);
  a pod's anonymous database volume is not named at all (`db_url` says where the database is in the pod).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path

from podbay.errors import PodbayError
from podbay.models import Phase, PodInfo, SnapshotInfo
from podbay.state.servers import DatabaseInfo, TemplateInfo

HIDDEN_PATH = "<host path>"
_HOST_IDS = re.compile(r"\b(pid|uid|gid)[ =:]+\d+")
_HOST_VOLUMES = re.compile(r"\btv-[0-9a-f]{20}\b")  # registry.HOST_VOLUME_PREFIX: the last net, see tenant_volumes


class Redactor:
    """Scrubs text and models of the host's details; `roots` are the server's state, cache and database
    servers' directories."""

    def __init__(self, roots: Iterable[Path]) -> None:
        spelled = {str(root) for root in roots} | {str(root.resolve()) for root in roots}
        alternatives = "|".join(re.escape(root.rstrip("/")) for root in sorted(spelled, key=len, reverse=True))
        self._paths = re.compile(rf"(?:{alternatives})(?:/[^\s'\"(),;:]*)?") if alternatives else None

    def text(self, text: str) -> str:
        if self._paths is not None:
            text = self._paths.sub(HIDDEN_PATH, text)
        return _HOST_VOLUMES.sub("(a volume)", _HOST_IDS.sub(r"\1 (hidden)", text))

    def optional(self, text: str | None) -> str | None:
        return None if text is None else self.text(text)

    def pod_info(self, info: PodInfo, volume_name: str | None) -> PodInfo:
        """`info` as its tenant may see it; `volume_name` is the tenant's name for the pod's volume (None if the
        pod has none of the tenant's)."""
        sandbox = info.sandbox
        if sandbox is not None:
            sandbox = sandbox.model_copy(update={"pid": None, "console_log": None, "note": self.text(sandbox.note)})
        spec = info.spec.model_copy(update={"volume": volume_name})
        return info.model_copy(
            update={
                "spec": spec,
                "sandbox": sandbox,
                "volume": volume_name,
                "trace": [self.phase(phase) for phase in info.trace],
                "error": self.optional(info.error),
                "ended_reason": self.optional(info.ended_reason),
                "origin": self.optional(info.origin),
            }
        )

    def phase(self, phase: Phase) -> Phase:
        return phase.model_copy(update={"detail": self.text(phase.detail)})

    def snapshot_info(self, info: SnapshotInfo) -> SnapshotInfo:
        return info.model_copy(update={"path": "", "volumes": [self.text(volume) for volume in info.volumes]})

    def database_info(self, info: DatabaseInfo) -> DatabaseInfo:
        """A server database as a tenant sees it (it holds no secret or path: the free text is scrubbed anyway)."""
        return replace(info, name=self.text(info.name), template=self.optional(info.template))

    def template_info(self, info: TemplateInfo) -> TemplateInfo:
        return replace(info, name=self.text(info.name))

    def error(self, exc: PodbayError) -> PodbayError:
        """Scrub `exc`'s message in place (the wire carries `str(exc)`); returns it."""
        exc.args = tuple(self.text(arg) if isinstance(arg, str) else arg for arg in exc.args)
        return exc
