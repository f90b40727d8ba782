"""The client of `podbay serve`: `AsyncClient` (asyncio core, httpx) and `Client` (its blocking wrapper)."""

from podbay.sdk.client import AsyncClient, AsyncRemoteFiles, AsyncRemotePod
from podbay.sdk.sync import Client, RemoteFiles, RemotePod

__all__ = ["AsyncClient", "AsyncRemoteFiles", "AsyncRemotePod", "Client", "RemoteFiles", "RemotePod"]
