"""`podbay demo`: the support-chat case study, one fresh pod per intervention."""

from __future__ import annotations

from podbay.cli.common import console, reported_errors
from podbay.demo.run import run_demo
from podbay.sync import Platform


def demo() -> None:
    """Stream support chats; each frustrated customer gets an agent in a fresh pod with their own database."""
    with reported_errors(), Platform() as platform:
        run_demo(platform, console)
