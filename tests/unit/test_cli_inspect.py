"""`podbay logs | trace | postmortem ls|show | debug` over post-mortems in PODBAY_STATE (no pod runs)."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from podbay.cli.main import app
from podbay.models import Phase
from podbay.paths import PodbayPaths
from podbay.postmortem import PostMortem, PostMortemStore

POD = "pod-0123456789ab"


@pytest.fixture
def kept(paths: PodbayPaths, monkeypatch: pytest.MonkeyPatch) -> PostMortem:
    monkeypatch.setenv("PODBAY_STATE", str(paths.state))
    monkeypatch.setenv("COLUMNS", "300")
    postmortem = PostMortem(
        pod_id=POD, failed=True, reason="timeout after 5 s", spec={"backend": "runc"}, backend="runc",
        created_at=1.0, ended_at=2.0, expires_at=4e9,
        trace=[Phase(name="cold boot", start_s=0.0, end_s=0.25)],
        snapshot_note="no snapshot: runc cannot snapshot",
    )  # fmt: skip
    PostMortemStore(paths.state / "postmortems").write(postmortem, b"boot...\nkernel panic\n")
    return postmortem


def test_the_commands_show_what_a_pod_left(kept: PostMortem) -> None:
    runner = CliRunner()
    listed = runner.invoke(app, ["postmortem", "ls"])
    assert listed.exit_code == 0 and POD in listed.output and "timeout after 5 s" in listed.output
    shown = runner.invoke(app, ["postmortem", "show", POD])
    assert shown.exit_code == 0 and json.loads(shown.output)["reason"] == "timeout after 5 s"
    logs = runner.invoke(app, ["logs", POD, "--tail", "13"])
    assert (logs.exit_code, logs.output) == (0, "kernel panic\n")
    traced = runner.invoke(app, ["trace", POD])
    assert traced.exit_code == 0 and "cold boot" in traced.output and "250.0" in traced.output


def test_debug_says_why_there_is_nothing_to_restore(kept: PostMortem) -> None:
    answer = CliRunner().invoke(app, ["debug", POD])
    assert answer.exit_code == 2
    assert "left no snapshot to debug: no snapshot: runc cannot snapshot" in " ".join(answer.output.split())


def test_an_unknown_pod_is_a_clear_error(kept: PostMortem) -> None:
    for command in (["postmortem", "show", "pod-ffffffffffff"], ["logs", "../x"], ["trace", "nope"]):
        answer = CliRunner().invoke(app, command)
        assert answer.exit_code == 2 and "NotFound" in answer.output, command
