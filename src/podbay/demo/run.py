"""Run the case study: each frustrated chat gets a fresh pod with that customer's private database."""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

from podbay.demo.chats import CHATS, Chat, frustration, needs_intervention
from podbay.sync import Platform

AGENT_SCRIPT = Path(__file__).with_name("agent_script.py")
GUEST_SCRIPT = "/work/agent.py"


@dataclass
class Intervention:
    chat: Chat
    pod_id: str
    create_ms: float
    boot_ms: float
    attach_ms: float
    exec_ms: float
    destroy_ms: float
    outcome: dict[str, object]
    accelerator: str


def run_demo(platform: Platform, console: Console, chats: list[Chat] | None = None) -> list[Intervention]:
    script = AGENT_SCRIPT.read_bytes()
    done: list[Intervention] = []
    for chat in chats or CHATS:
        score = frustration(chat.text)
        if not needs_intervention(chat):
            console.print(f"[dim]customer {chat.customer:>3}  score {score}  ok          {chat.text}[/]")
            continue
        console.print(f"[bold yellow]customer {chat.customer:>3}  score {score}  INTERVENE[/]   {chat.text}")
        done.append(_intervene(platform, chat, script))
        _print_timeline(console, done[-1])
    _print_summary(console, done)
    return done


def _intervene(platform: Platform, chat: Chat, script: bytes) -> Intervention:
    started = time.monotonic()
    pod = platform.create_agent(
        memory_db=True,
        volume=f"customer-{chat.customer}",
        env={"TASK": "support"},
        context={"customer": chat.customer, "message": chat.text},
    )
    created = time.monotonic()
    try:
        pod.files.write(GUEST_SCRIPT, script)
        result = pod.exec(["python3", GUEST_SCRIPT], timeout=60)
        executed = time.monotonic()
        if result.exit_code != 0:
            raise RuntimeError(f"the agent failed in pod {pod.id} (exit {result.exit_code}): {result.stderr}")
        phases = {phase.name: phase.duration_ms for phase in pod.info().trace}
        sandbox = pod.info().sandbox
        accelerator = sandbox.accelerator if sandbox else "?"
    finally:
        pod.destroy()
    return Intervention(
        chat=chat,
        pod_id=pod.id,
        create_ms=(created - started) * 1000,
        boot_ms=phases.get("boot", 0.0),
        attach_ms=phases.get("attach+inject", 0.0),
        exec_ms=(executed - created) * 1000,
        destroy_ms=(time.monotonic() - executed) * 1000,
        outcome=json.loads(result.stdout),
        accelerator=accelerator,
    )


def _print_timeline(console: Console, item: Intervention) -> None:
    console.print(
        f"    {item.pod_id}: create {item.create_ms:.0f} ms (boot {item.boot_ms:.0f}, DB attach "
        f"{item.attach_ms:.0f}) → exec {item.exec_ms:.0f} ms → destroy {item.destroy_ms:.0f} ms"
    )
    seeded = " (database seeded on first use)" if item.outcome.get("seeded") else ""
    console.print(
        f"    [green]→ {item.outcome['resolution']}[/]{seeded}; "
        f"{item.outcome['interventions_so_far']} intervention(s) on record for this customer"
    )


def _print_summary(console: Console, done: list[Intervention]) -> None:
    if not done:
        console.print("no chat needed an intervention")
        return
    table = Table("customer", "create ms", "exec ms", "destroy ms", "resolution", title="Interventions")
    for item in done:
        table.add_row(
            str(item.chat.customer),
            f"{item.create_ms:.0f}",
            f"{item.exec_ms:.0f}",
            f"{item.destroy_ms:.0f}",
            str(item.outcome["resolution"]),
        )
    console.print(table)
    console.print(
        f"{len(done)} interventions, each in a fresh {done[0].accelerator.upper()} microVM with its customer's "
        f"own SQLite volume; median create {statistics.median(i.create_ms for i in done):.0f} ms, "
        f"median exec {statistics.median(i.exec_ms for i in done):.0f} ms."
    )
