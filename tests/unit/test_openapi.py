"""The committed OpenAPI document (docs/openapi.json) is what the code generates, and says what clients need."""

from __future__ import annotations

import difflib
import json
from pathlib import Path
from typing import Any

from podbay.server.openapi import REGENERATE, document, render

COMMITTED = Path(__file__).resolve().parents[2] / "docs" / "openapi.json"


def test_the_committed_document_matches_the_code() -> None:
    committed = COMMITTED.read_text(encoding="utf-8") if COMMITTED.exists() else ""
    generated = render()
    if committed != generated:
        diff = "".join(
            list(
                difflib.unified_diff(
                    committed.splitlines(keepends=True),
                    generated.splitlines(keepends=True),
                    "docs/openapi.json (committed)",
                    "docs/openapi.json (from the code)",
                )
            )[:60]
        )
        raise AssertionError(
            f"docs/openapi.json is out of date with the code: run `{REGENERATE}` from the repository root "
            f"and commit it.\n{diff}"
        )


def _operations(doc: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(method, path, op) for path, ops in doc["paths"].items() for method, op in ops.items()]


def test_every_error_status_answers_in_the_one_error_shape() -> None:
    doc = document()
    shape = doc["components"]["schemas"]["ErrorDetail"]
    assert {"type", "message", "field", "pod_id"} <= set(shape["properties"])
    assert "HTTPValidationError" not in doc["components"]["schemas"], "FastAPI's own 422 shape is never answered"
    for method, path, op in _operations(doc):
        errors = {status: answer for status, answer in op["responses"].items() if int(status) >= 400}
        if path not in TOKENLESS:
            assert {"401", "500"} <= set(errors), (method, path)
        for status, answer in errors.items():
            schema = answer["content"]["application/json"]["schema"]
            assert schema == {"$ref": "#/components/schemas/ErrorBody"}, (method, path, status)


# /healthz answers anyone; /metrics answers loopback clients or PODBAY_METRICS_TOKEN's holder, never by tenant
TOKENLESS = {"/healthz", "/metrics"}


def test_every_route_but_healthz_and_metrics_needs_the_bearer_token() -> None:
    doc = document()
    schemes = doc["components"]["securitySchemes"]
    assert set(schemes) == {"token", "admin_token"}
    assert all(scheme["type"] == "http" and scheme["scheme"] == "bearer" for scheme in schemes.values())
    for method, path, op in _operations(doc):
        if path in TOKENLESS:
            expected = None
        else:
            expected = [{"admin_token": []}] if path.startswith("/admin/") else [{"token": []}]
        assert op.get("security") == expected, (method, path)
        if path.startswith("/admin/"):
            assert "403" in op["responses"], (method, path)


def test_the_raw_byte_routes_say_so() -> None:
    paths = document()["paths"]
    binary = {"schema": {"type": "string", "format": "binary"}}
    assert paths["/pods/{pod_id}/files"]["get"]["responses"]["200"]["content"] == {"application/octet-stream": binary}
    assert paths["/pods/{pod_id}/files"]["put"]["requestBody"]["content"] == {"application/octet-stream": binary}
    assert "application/x-ndjson" in paths["/pods/{pod_id}/exec/stream"]["post"]["responses"]["200"]["content"]


def test_the_document_is_stable_json() -> None:
    text = render()
    assert text.endswith("}\n") and json.loads(text) == document()
    assert render() == text
