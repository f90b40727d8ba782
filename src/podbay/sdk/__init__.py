"""The client of `podbay serve`: `AsyncClient` (asyncio core, httpx) and `Client` (its blocking wrapper)."""

from podbay.sdk.client import AsyncClient, AsyncRemoteFiles, AsyncRemotePod, AsyncRemoteProcess
from podbay.sdk.fields import PodFields
from podbay.sdk.sync import Client, RemoteFiles, RemotePod, RemoteProcess

__all__ = [
    "AsyncClient",
    "AsyncRemoteFiles",
    "AsyncRemotePod",
    "AsyncRemoteProcess",
    "Client",
    "PodFields",
    "RemoteFiles",
    "RemotePod",
    "RemoteProcess",
]
