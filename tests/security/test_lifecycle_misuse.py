"""A careless caller: operations out of order on every backend get Conflict (naming the pod and its state),
never a hang, a crash of the agent or an error outside the PodbayError tree."""

from __future__ import annotations

import pytest

from podbay import Conflict, Platform, PodState
from tests.integration.conftest import ALL_BACKENDS, skip_unless_available

pytestmark = [pytest.mark.integration, pytest.mark.security]


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_operations_out_of_order_are_conflicts(platform: Platform, backend: str) -> None:
    skip_unless_available(platform, backend)
    pod = platform.create_agent(backend=backend)
    with pytest.raises(Conflict, match="not paused"):
        pod.resume()
    pod.pause()
    for call in (lambda: pod.exec(["true"]), lambda: pod.files.read("/etc/hostname"), pod.pause):
        with pytest.raises(Conflict, match=f"{pod.id} is paused"):
            call()
    pod.resume()
    assert pod.exec(["echo", "resumed"]).stdout == "resumed\n"
    pod.destroy()
    pod.destroy()  # twice is fine
    assert pod.info().state is PodState.DESTROYED
    for call in (lambda: pod.exec(["true"]), lambda: pod.files.write("/tmp/x", b"x"), pod.pause, pod.resume):
        with pytest.raises(Conflict, match=pod.id):
            call()
