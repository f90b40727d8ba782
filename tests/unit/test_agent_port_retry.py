"""How often the guest agent looks for a host that went away: soon at first, rarely once it stays away."""

from __future__ import annotations

import os

from podbay.guest.agent import PORT_RETRY_MAX_S, PORT_RETRY_MIN_S, Agent, Port


def test_the_agent_looks_for_a_lost_host_within_a_tenth_of_its_absence() -> None:
    read_fd, write_fd = os.pipe()
    try:
        agent = Agent(Port(read_fd, write_fd, reconnects=True))
        assert agent.retry_delay(100.0) == PORT_RETRY_MIN_S, "a host just lost: look again at once"
        agent.host_lost_at = 100.0
        assert agent.retry_delay(100.05) == PORT_RETRY_MIN_S
        assert abs(agent.retry_delay(103.0) - 0.3) < 1e-9
        assert agent.retry_delay(200.0) == PORT_RETRY_MAX_S, "a pod left alone wakes once a second, not 100 times"
    finally:
        os.close(read_fd)
        os.close(write_fd)
