"""The SDK mirrors the embedded platform: create_agent's typed keywords (PodFields) are PodSpec's fields with the
same types as the embedded create_agent's, and remote pods and processes offer what embedded ones do."""

from __future__ import annotations

import inspect
import typing
from typing import Any

import pytest

from podbay import AsyncClient, AsyncPlatform, AsyncPod, AsyncRemotePod, Client, Platform, Pod, PodSpec, RemotePod
from podbay.sdk import AsyncRemoteProcess, PodFields, RemoteProcess
from podbay.sdk.admin import Admin, AsyncAdmin, PoolFields
from podbay.sync import Process


def test_pod_fields_are_pod_specs_fields_in_order() -> None:
    assert list(typing.get_type_hints(PodFields)) == list(PodSpec.model_fields)


@pytest.mark.parametrize("embedded", [Platform.create_agent, AsyncPlatform.create_agent])
def test_pod_fields_have_the_embedded_create_agents_types(embedded: Any) -> None:
    hints = typing.get_type_hints(embedded)
    assert typing.get_type_hints(PodFields) == {name: hints[name] for name in PodSpec.model_fields}


@pytest.mark.parametrize("create_agent", [Client.create_agent, AsyncClient.create_agent])
def test_the_sdks_create_agent_takes_pod_fields(create_agent: Any) -> None:
    (fields,) = [p for p in inspect.signature(create_agent).parameters.values() if p.kind is p.VAR_KEYWORD]
    assert typing.get_type_hints(create_agent)[fields.name] == typing.Unpack[PodFields]


def _public(cls: type) -> set[str]:
    return {name for name in dir(cls) if not name.startswith("_")}


@pytest.mark.parametrize(
    ("embedded", "remote"),
    [(AsyncPod, AsyncRemotePod), (Pod, RemotePod), (Process, RemoteProcess)],
)
def test_remote_handles_offer_the_embedded_methods(embedded: type, remote: type) -> None:
    # Embedded-only by nature: the sandbox object and the pool origin are host details.
    missing = _public(embedded) - _public(remote) - {"sandbox", "origin", "pid"}
    assert not missing, f"{remote.__name__} lacks {sorted(missing)}"


def test_async_remote_process_mirrors_the_blocking_one() -> None:
    assert _public(RemoteProcess) - _public(AsyncRemoteProcess) == set()


def test_the_blocking_ensure_pool_takes_the_async_ones_keywords() -> None:
    asynchronous = inspect.signature(AsyncAdmin.ensure_pool).parameters.values()
    keywords = [p.name for p in asynchronous if p.kind is p.KEYWORD_ONLY]
    hints = typing.get_type_hints(AsyncAdmin.ensure_pool)
    assert typing.get_type_hints(PoolFields) == {name: hints[name] for name in keywords}
    assert typing.get_type_hints(Admin.ensure_pool)["shape"] == typing.Unpack[PoolFields]
