"""Where podbay keeps things on the host.

Two roots, both outside the repository: the *cache* holds build artefacts addressed by the hash of their
inputs (kernel, rootfs), so it can be wiped and rebuilt; the *state* root holds what users own (volumes) and
the run directories of live pods.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class PodbayPaths:
    cache: Path
    state: Path

    @classmethod
    def from_env(cls) -> PodbayPaths:
        home = Path.home()
        cache = Path(os.environ.get("PODBAY_CACHE", home / ".cache" / "podbay"))
        state = Path(os.environ.get("PODBAY_STATE", home / ".local" / "share" / "podbay"))
        return cls(cache=cache, state=state)

    @property
    def images(self) -> Path:
        return self.cache / "images"

    @property
    def volumes(self) -> Path:
        return self.state / "volumes"

    @property
    def pods(self) -> Path:
        return self.state / "pods"

    @property
    def databases(self) -> Path:
        """Where podbay's own database servers keep their data and sockets: a managed Postgres cluster
        (`postgres/`) and one Redis instance per pod (`redis/<name>/`). PODBAY_DB_DIR overrides it.

        The servers never run as root (Postgres refuses to), so when podbay runs as root they run as the
        `postgres` and `redis` accounts, which cannot pass root's 0700 home: the directory is then host-wide,
        /var/lib/podbay/db, as /run/podbay is for uid leases. Otherwise it is under the state directory."""
        configured = os.environ.get("PODBAY_DB_DIR")
        if configured:
            return Path(configured)
        return Path("/var/lib/podbay/db") if os.geteuid() == 0 else self.state / "db"
