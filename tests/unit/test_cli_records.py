"""`podbay logs | trace | postmortem ls|show | debug` and `podbay snapshot ls|rm` against a server
(PODBAY_SERVER/PODBAY_TOKEN): the tenant's own records through the REST API, the same commands as on this host's
PODBAY_STATE (test_cli_inspect.py)."""

from __future__ import annotations

import json

from podbay.paths import PodbayPaths
from podbay.server.registry import Registry
from tests.unit.test_cli_remote import env, podbay
from tests.unit.test_server_snapshots import saved

__all__ = ["env"]  # the fixture: a server in a thread, for tenant acme


def test_what_a_pod_left_is_read_from_the_server(env: dict[str, str]) -> None:
    code, pod, _ = podbay(env, "create", "--backend", "local")
    pod = pod.strip()
    assert code == 0
    code, out, err = podbay(env, "trace", pod)  # a live pod's, from the server
    assert code == 0 and "prepare" in out, err
    assert podbay(env, "destroy", pod)[0] == 0
    code, out, err = podbay(env, "postmortem", "ls")
    assert code == 0 and pod in out and "destroyed" in out, err
    code, out, _ = podbay(env, "postmortem", "show", pod)
    assert code == 0 and json.loads(out)["pod_id"] == pod and json.loads(out)["reason"] == "destroyed"
    assert podbay(env, "trace", pod)[0] == 0
    assert podbay(env, "logs", pod)[0] == 0
    code, _, err = podbay(env, "debug", pod)
    assert code == 2 and f"pod {pod} left no snapshot to debug" in " ".join(err.split())


def test_another_tenants_records_are_not_found(env: dict[str, str], paths: PodbayPaths) -> None:
    code, pod, _ = podbay(env, "create", "--backend", "local")
    assert code == 0 and podbay(env, "destroy", pod.strip())[0] == 0
    token, _ = Registry(paths.state / "server.db").create_token("globex")
    intruder = {**env, "PODBAY_TOKEN": token}
    for command in (["postmortem", "show"], ["trace"], ["logs"]):
        code, _, err = podbay(intruder, *command, pod.strip())
        assert code == 2 and "NotFound" in err, command
    assert pod.strip() not in podbay(intruder, "postmortem", "ls")[1]


def test_snapshot_ls_and_rm_go_to_the_server(env: dict[str, str], paths: PodbayPaths) -> None:
    registry = Registry(paths.state / "server.db")
    registry.create_token("globex")
    saved(paths, "acme-snap", "acme", registry)
    saved(paths, "globex-snap", "globex", registry)
    code, out, _ = podbay(env, "snapshot", "ls", "--json")
    assert code == 0 and [info["name"] for info in json.loads(out)] == ["acme-snap"]
    assert json.loads(out)[0]["path"] == ""
    code, _, err = podbay(env, "snapshot", "rm", "globex-snap")
    assert code == 2 and "no snapshot 'globex-snap'" in err
    code, out, _ = podbay(env, "snapshot", "rm", "acme-snap")
    assert code == 0 and "removed acme-snap" in out
    assert not (paths.state / "snapshots" / "acme-snap").exists()
    assert (paths.state / "snapshots" / "globex-snap").exists()
