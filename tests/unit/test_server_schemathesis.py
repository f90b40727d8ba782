"""Schemathesis over the committed OpenAPI document (docs/openapi.json), against the app in-process.

The app runs over the local test double (no VM) in a private state root, with a valid token for a tenant made
through the registry. Every operation gets a bounded number of generated requests; the checks: no 5xx, every
response's status, content type and body conform to the document.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.python.asgi import get_client, shutdown_lifespans
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from podbay.paths import PodbayPaths
from podbay.server.registry import Registry
from tests.unit.server_double import assert_no_pods_left, local_app

COMMITTED = Path(__file__).resolve().parents[2] / "docs" / "openapi.json"
# Operations also sent, every other time, to a pod that exists (not exec or files: the test double runs
# commands and writes files on this host; not snapshot or fork: it has neither, and answers 501). A created
# pod's fuzzed spec may kill it at once (its env is the host process's), so these use a plain pod of their own.
ON_LIVE_PODS = {
    ("GET", "/pods/{pod_id}"),
    ("POST", "/pods/{pod_id}/pause"),
    ("POST", "/pods/{pod_id}/resume"),
    ("DELETE", "/pods/{pod_id}"),
}
TURNS = itertools.count()
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]

schema = schemathesis.openapi.from_path(COMMITTED)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[FastAPI, str, str]]:
    """The app over the test double in a private state root, a valid token of one tenant and an admin token."""
    root = tmp_path_factory.mktemp("schemathesis")
    paths = PodbayPaths(cache=root / "cache", state=root / "state")
    servers = pytest.MonkeyPatch()  # /databases must not list (or start) this host's database servers
    servers.setenv("PODBAY_DB_DIR", str(root / "db-servers"))
    for kind in ("POSTGRES", "REDIS"):
        servers.delenv(f"PODBAY_{kind}_URL", raising=False)
    registry = Registry(paths.state / "server.db")
    token, _ = registry.create_token("acme")
    admin_token, _ = registry.create_admin_token()
    registry.close()
    app = local_app(paths)
    with get_client(app):  # starts the app's lifespan on schemathesis's own event loop, until shutdown_lifespans
        pass
    yield app, token, admin_token
    shutdown_lifespans()  # the app's shutdown: its pods are destroyed, its platform closed
    servers.undo()
    assert_no_pods_left(paths)


@schema.parametrize()
@settings(
    max_examples=20,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.filter_too_much],
)
def test_the_api_conforms_to_its_document(case: Any, served: tuple[FastAPI, str, str]) -> None:
    app, token, admin_token = served
    if (case.method, case.path) == ("POST", "/pods") and isinstance(case.body, dict):
        case.body = {**case.body, "backend": "local"}  # the only backend here: real pods, the other fields fuzzed
        if case.body.get("db") is not None:  # a real provider would start Postgres/Redis: test_server_databases.py
            case.body = {**case.body, "db": None, "db_template": None, "db_retain": False}
    if (case.method, case.path) == ("POST", "/volumes") and isinstance(case.body, dict):
        case.body = {**case.body, "size_mib": 16}  # each is a real ext4 image: the other fields fuzzed
    if case.path.startswith("/admin/") and (case.method, case.path) != ("PUT", "/admin/pools"):
        token = admin_token  # (a pool would start members: with a tenant's token it answers 403)
    if (case.method, case.path) == ("POST", "/admin/db/templates/{name}"):
        return  # it loads the dump into a real Postgres: test_server_databases.py and tests/integration have it
    if (case.method, case.path) in ON_LIVE_PODS and next(TURNS) % 2:
        case.path_parameters = {**(case.path_parameters or {}), "pod_id": plain_pod(app, token)}
    case.call_and_validate(app=app, headers={"Authorization": f"Bearer {token}"}, checks=CHECKS)


def plain_pod(app: FastAPI, token: str) -> str:
    with get_client(app) as client:
        made = client.post("/pods", json={"backend": "local"}, headers={"Authorization": f"Bearer {token}"})
    assert made.status_code == 201, made.text
    pod_id: str = made.json()["id"]
    return pod_id
