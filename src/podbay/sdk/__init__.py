"""The client of `podbay serve`: `AsyncClient` (asyncio core, httpx) and `Client` (its blocking wrapper)."""

from podbay.sdk.admin import Admin, AsyncAdmin
from podbay.sdk.client import AsyncClient, AsyncRemoteFiles, AsyncRemotePod, AsyncRemoteProcess
from podbay.sdk.fields import PodFields
from podbay.sdk.sync import Client, RemoteFiles, RemotePod, RemoteProcess

__all__ = [
    "Admin",
    "AsyncAdmin",
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
