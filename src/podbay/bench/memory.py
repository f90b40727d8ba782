"""Host memory of a sandbox: USS (its private pages) and PSS (shared pages split among sharers), summed over
the sandbox's process and all its descendants (a container runtime forks several), from /proc."""

from __future__ import annotations

from pathlib import Path


def descendants(pid: int) -> list[int]:
    """`pid` and every process below it."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])  # field 4, after the parenthesised command name
        children.setdefault(parent, []).append(int(entry.name))
    found, queue = [], [pid]
    while queue:
        current = queue.pop()
        found.append(current)
        queue.extend(children.get(current, []))
    return found


def uss_pss_kib(pid: int) -> tuple[int, int]:
    """USS and PSS in KiB of one process."""
    fields: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        name, _, rest = line.partition(":")
        parts = rest.split()
        if len(parts) == 2 and parts[1] == "kB":
            fields[name] = int(parts[0])
    return fields.get("Private_Clean", 0) + fields.get("Private_Dirty", 0), fields.get("Pss", 0)


def tree_uss_pss_kib(pid: int) -> tuple[int, int]:
    uss = pss = 0
    for member in descendants(pid):
        try:
            member_uss, member_pss = uss_pss_kib(member)
        except OSError:
            continue  # exited meanwhile
        uss += member_uss
        pss += member_pss
    return uss, pss
