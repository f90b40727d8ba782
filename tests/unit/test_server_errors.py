"""The error mapping (one place, one JSON shape) and the tokens' registry, without any VM."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from podbay import errors
from podbay.errors import (
    BackendUnavailable,
    Conflict,
    DatabaseUnavailable,
    Forbidden,
    GuestError,
    HostError,
    ImageMissing,
    InvalidSpec,
    NotFound,
    PodbayError,
    QuotaExceeded,
    Timeout,
    Unauthorized,
    Unsupported,
)
from podbay.server.errors import status_of
from podbay.server.registry import Registry, hash_token
from podbay.wire import error_body, error_from_body

EXAMPLES: list[tuple[PodbayError, int]] = [
    (InvalidSpec("vcpus", "is -1", "use 1 to 16"), 422),
    (Unauthorized("no token"), 401),
    (Forbidden("an admin token on a tenant's route"), 403),
    (NotFound("no pod 'x'"), 404),
    (ImageMissing("run podbay images build"), 503),
    (Conflict("pod is paused"), 409),
    (BackendUnavailable("firecracker: no KVM"), 501),
    (Unsupported("runc", "snapshot a pod", "use qemu"), 501),
    (DatabaseUnavailable("postgres: the server does not start"), 503),
    (QuotaExceeded("10 pods"), 429),
    (GuestError("agent died"), 502),
    (Timeout("too slow"), 504),
    (HostError("disk full"), 500),
    (PodbayError("bare"), 500),
]


@pytest.mark.parametrize(("error", "status"), EXAMPLES, ids=[type(e).__name__ for e, _ in EXAMPLES])
def test_every_error_has_its_status_and_comes_back_as_itself(error: PodbayError, status: int) -> None:
    assert status_of(error) == status
    body = error_body(error, pod_id="pod-1")
    assert set(body["error"]) == {"type", "message", "field", "pod_id", "request_id"}
    assert body["error"]["pod_id"] == "pod-1"
    again = error_from_body(status, body)
    assert type(again) is type(error)
    assert str(again) == str(error)
    assert again.pod_id == "pod-1"
    if isinstance(error, InvalidSpec):
        assert isinstance(again, InvalidSpec)
        assert again.field == "vcpus" == body["error"]["field"]


def test_every_class_of_the_tree_is_mapped_and_rebuildable() -> None:
    classes = [cls for cls in vars(errors).values() if isinstance(cls, type) and issubclass(cls, PodbayError)]
    mapped = {type(error) for error, _ in EXAMPLES}
    assert set(classes) == mapped


def test_a_foreign_body_or_unknown_type_is_still_a_podbay_error() -> None:
    assert type(error_from_body(502, "<html>bad gateway</html>")) is HostError  # a proxy answered, not podbay
    unknown = error_from_body(418, {"error": {"type": "Teapot", "message": "short and stout"}})
    assert type(unknown) is PodbayError
    assert str(unknown) == "short and stout"


def test_tokens_are_stored_only_as_hashes_and_revocation_is_immediate(tmp_path: Path) -> None:
    registry = Registry(tmp_path / "server.db")
    token, record = registry.create_token("acme")
    assert token.startswith("pb_") and len(token) > 40
    assert registry.tenant_of(token) == "acme"
    with sqlite3.connect(tmp_path / "server.db") as db:
        dump = "\n".join(db.iterdump())
    assert token not in dump
    assert hash_token(token) in dump
    other = Registry(tmp_path / "server.db")  # the CLI, another connection
    other.revoke(record.id)
    with pytest.raises(Unauthorized, match="revoked"):
        registry.tenant_of(token)
    with pytest.raises(Unauthorized, match="unknown"):
        registry.tenant_of("pb_" + "x" * 43)


def test_a_token_can_be_revoked_by_its_value_and_tenant_names_are_checked(tmp_path: Path) -> None:
    registry = Registry(tmp_path / "server.db")
    token, record = registry.create_token("acme")
    assert registry.revoke(token).id == record.id
    with pytest.raises(NotFound):
        registry.revoke("tok_nope")
    with pytest.raises(InvalidSpec, match="tenant"):
        registry.create_token("../Evil")


def test_the_registry_is_in_wal_mode(tmp_path: Path) -> None:
    Registry(tmp_path / "server.db")
    with sqlite3.connect(tmp_path / "server.db") as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
