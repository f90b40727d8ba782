"""The client of `podbay serve`: `AsyncClient` (asyncio core, httpx) and `Client` (its blocking wrapper)."""

from podbay.sdk.admin import Admin, AsyncAdmin
from podbay.sdk.client import AsyncClient, AsyncRemoteFiles, AsyncRemotePod
from podbay.sdk.sync import Client, RemoteFiles, RemotePod

__all__ = [
    "Admin",
    "AsyncAdmin",
    "AsyncClient",
    "AsyncRemoteFiles",
    "AsyncRemotePod",
    "Client",
    "RemoteFiles",
    "RemotePod",
]
