"""The command line, as a user runs it: `podbay run`, `volume export`, `demo`, `doctor`, `templates`, `snapshot`."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from podbay.paths import PodbayPaths

from .conftest import cli_env

pytestmark = pytest.mark.integration
PODBAY = [sys.executable, "-m", "podbay.cli"]


def podbay(paths: PodbayPaths, *args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([*PODBAY, *args], input=stdin, capture_output=True, env=cli_env(paths), timeout=300)


def test_run_passes_output_and_exit_status_through(vm_paths: PodbayPaths) -> None:
    result = podbay(vm_paths, "run", "--", "sh", "-c", "echo to-out; echo to-err >&2; exit 5")
    assert result.returncode == 5
    assert result.stdout == b"to-out\n"
    assert b"to-err\n" in result.stderr


def test_run_forwards_stdin(vm_paths: PodbayPaths) -> None:
    assert podbay(vm_paths, "run", "-i", "--", "wc", "-c", stdin=b"12345").stdout.strip() == b"5"
    assert podbay(vm_paths, "run", "--", "wc", "-c", stdin=b"12345").stdout.strip() == b"0", "no -i, no stdin"


def test_run_with_a_volume_then_export_the_database(vm_paths: PodbayPaths, tmp_path: Path) -> None:
    script = "import os,sqlite3; d=sqlite3.connect(os.environ['PODBAY_DB_PATH']); d.execute('create table t(x)'); d.execute('insert into t values (42)'); d.commit()"  # noqa: E501
    assert podbay(vm_paths, "run", "--volume", "cli-vol", "--", "python3", "-c", script).returncode == 0
    output = tmp_path / "out.db"
    exported = podbay(vm_paths, "volume", "export", "cli-vol", "--output", str(output))
    assert exported.returncode == 0, exported.stderr
    assert sqlite3.connect(output).execute("SELECT x FROM t").fetchall() == [(42,)]


def test_errors_are_one_clear_line(vm_paths: PodbayPaths) -> None:
    result = podbay(vm_paths, "run", "--volume", "BAD NAME", "--", "true")
    assert result.returncode == 2
    assert b"InvalidSpec: volume" in result.stderr and b"Traceback" not in result.stderr


def test_doctor_lists_every_backend_and_says_tcg_is_no_boundary(vm_paths: PodbayPaths) -> None:
    result = podbay(vm_paths, "doctor")
    assert result.returncode == 0, result.stdout
    text = " ".join(result.stdout.decode().split())
    for backend in ("qemu", "qemu-q35", "firecracker", "gvisor", "runc"):
        assert f"│ {backend} " in text
    if "│ tcg " in text:
        assert "does not treat TCG as a security boundary" in text


def test_demo_intervenes_in_fresh_pods_and_logs_to_each_customers_database(vm_paths: PodbayPaths) -> None:
    result = podbay(vm_paths, "demo")
    assert result.returncode == 0, result.stderr
    text = result.stdout.decode()
    assert text.count("INTERVENE") == 4
    assert "refund duplicate charge" in text and "already refunded" in text
    assert "reship order" in text and "escalate to a human" in text
    assert "interventions" in text.lower()
    volumes = sorted(path.stem for path in vm_paths.volumes.glob("*.ext4"))
    assert volumes == ["customer-19", "customer-23", "customer-7"]


def test_doctor_json_is_one_document_on_stdout(vm_paths: PodbayPaths) -> None:
    result = podbay(vm_paths, "doctor", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert {row["name"] for row in report["backends"]} == {"qemu", "qemu-q35", "firecracker", "gvisor", "runc"}
    assert report["ready"] is True and report["images"]["error"] is None
    assert b"backend" in result.stderr, "the human tables go to stderr"


def test_run_says_nothing_of_how_it_started_and_cold_boots_on_request(vm_paths: PodbayPaths) -> None:
    for flags in ([], ["--cold"]):
        result = podbay(vm_paths, "run", *flags, "--", "echo", "ok")
        assert (result.returncode, result.stdout) == (0, b"ok\n"), result.stderr


def test_templates_ls_json_lists_the_current_template_and_rm_refuses_unknown_keys(vm_paths: PodbayPaths) -> None:
    assert podbay(vm_paths, "run", "--", "true").returncode == 0  # builds the default shape's template if needed
    listed = podbay(vm_paths, "templates", "ls", "--json")
    assert listed.returncode == 0, listed.stderr
    rows = json.loads(listed.stdout)  # one JSON document on stdout: the table went to stderr
    default = {"vcpus": 1, "memory_mib": 256, "layer_mib": 1024, "volume_slots": 1}
    assert any(row["current"] and row["shape"] == default for row in rows)
    refused = podbay(vm_paths, "templates", "rm", "no-such-key")
    assert refused.returncode == 2 and b"NotFound: no template no-such-key" in refused.stderr


def test_doctor_json_lists_each_backends_capabilities(vm_paths: PodbayPaths) -> None:
    report = json.loads(podbay(vm_paths, "doctor", "--json").stdout)
    capabilities = {row["name"]: row["capabilities"] for row in report["backends"]}
    assert capabilities["qemu"] == {
        "template_clone": True,
        "pool": True,
        "attach_after_start": True,
        "snapshot": True,
        "fork": True,
        "reattach": True,
    }
    assert not capabilities["runc"]["snapshot"] and capabilities["runc"]["pool"]
    assert not capabilities["runc"]["reattach"], "a container's agent exits with its controller"


def test_snapshot_commands_refuse_unknown_names_clearly(vm_paths: PodbayPaths) -> None:
    listed = podbay(vm_paths, "snapshot", "ls", "--json")
    assert listed.returncode == 0 and json.loads(listed.stdout) == []
    for args in (("snapshot", "rm", "nope"), ("run", "--from-snapshot", "nope", "--", "true")):
        result = podbay(vm_paths, *args)
        assert result.returncode == 2 and b"NotFound: no snapshot 'nope'" in result.stderr, result.stderr
