"""Host memory of a process, from /proc/PID/smaps_rollup: USS (private pages) and PSS (shared pages split)."""

from __future__ import annotations

from pathlib import Path


def uss_pss_kib(pid: int) -> tuple[int, int]:
    fields: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        name, _, rest = line.partition(":")
        parts = rest.split()
        if len(parts) == 2 and parts[1] == "kB":
            fields[name] = int(parts[0])
    uss = fields.get("Private_Clean", 0) + fields.get("Private_Dirty", 0)
    return uss, fields.get("Pss", 0)
