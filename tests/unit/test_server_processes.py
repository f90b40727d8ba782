"""Long-running processes over REST (server/processes.py) and the SDK's handles, in-process over the local test
double: stdin echo through `cat`, eof, signals, replayed output, another tenant's pod or process answering 404,
the files listing, a remote pod's usage."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable

import pytest

from podbay import AsyncClient, Conflict, InvalidSpec, NotFound, PodbayError
from podbay.paths import PodbayPaths
from podbay.server.registry import Registry
from tests.unit.server_double import assert_no_pods_left, loopback_server

Scenario = Callable[[str, str, str], Awaitable[None]]


def serve(paths: PodbayPaths, scenario: Scenario) -> None:
    """The app under uvicorn on a loopback port of this process (httpx's ASGI transport holds a streamed
    response until it ends, which a long-running process's output never does while the test feeds it)."""
    registry = Registry(paths.state / "server.db")
    token_a, _ = registry.create_token("acme")
    token_b, _ = registry.create_token("globex")

    async def main() -> None:
        server, url = loopback_server(paths)
        running = asyncio.create_task(server.serve())
        while not server.started:
            assert not running.done(), "the server did not start"
            await asyncio.sleep(0.01)
        try:
            await asyncio.wait_for(scenario(url, token_a, token_b), 60)
        finally:
            server.should_exit = True
            await running

    asyncio.run(main())
    assert_no_pods_left(paths)


def test_stdin_reaches_a_long_running_cat_until_eof(paths: PodbayPaths) -> None:
    async def scenario(url: str, token: str, _: str) -> None:
        async with AsyncClient(url, token) as client:
            pod = await client.create_agent(backend="local")
            seen: list[bytes] = []
            process = await pod.start_process(["cat"], stdin=True, on_stdout=seen.append)
            assert (await process.info()).state == "running"
            await process.write_stdin(b"first\n")
            events = process.events()
            first = await anext(events)  # the echo arrives while cat still runs
            assert (first.kind, first.data) == ("stdout", b"first\n")
            await events.aclose()  # a reader leaving does not end the process
            assert (await process.info()).state == "running"
            await process.write_stdin(b"second\n", eof=True)
            result = await process.wait()
            assert (result.exit_code, result.stdout) == (0, "first\nsecond\n")
            assert b"".join(seen) == b"first\nsecond\n"
            info = await process.info()
            assert (info.state, info.stdin_open, info.result) == ("exited", False, result)
            replay = [event async for event in process.events()]  # any later reader gets it all again
            assert [event.kind for event in replay] == ["stdout", "stdout", "exit"]
            with pytest.raises(Conflict, match="ended"):
                await process.write_stdin(b"late")
            await pod.destroy()

    serve(paths, scenario)


def test_stdin_is_refused_when_not_asked_for_and_after_eof(paths: PodbayPaths) -> None:
    async def scenario(url: str, token: str, _: str) -> None:
        async with AsyncClient(url, token) as client:
            pod = await client.create_agent(backend="local")
            without = await pod.start_process(["sleep", "30"])
            with pytest.raises(Conflict, match="without stdin"):
                await without.write_stdin(b"x")
            await without.signal(signal.SIGKILL)
            assert (await without.wait()).signal == signal.SIGKILL
            reader = await pod.start_process(["sh", "-c", "cat; sleep 30"], stdin=True)
            await reader.close_stdin()
            with pytest.raises(Conflict):
                await reader.write_stdin(b"after eof")
            await reader.signal(signal.SIGTERM)
            result = await reader.wait()
            assert (result.signal, result.exit_code) == (signal.SIGTERM, 128 + signal.SIGTERM)
            with pytest.raises(InvalidSpec) as bad:
                await reader.signal(0)
            assert bad.value.field == "signal"
            await pod.destroy()

    serve(paths, scenario)


def test_another_tenants_pod_and_process_answer_404(paths: PodbayPaths) -> None:
    async def scenario(url: str, token_a: str, token_b: str) -> None:
        async with (
            AsyncClient(url, token_a) as a,
            AsyncClient(url, token_b) as b,
        ):
            pod = await a.create_agent(backend="local")
            process = await pod.start_process(["sleep", "30"], stdin=True)
            other = await b.create_agent(backend="local")
            base = f"/pods/{pod.id}/processes/{process.id}"
            for method, url in [
                ("GET", base),
                ("GET", f"{base}/output"),
                ("POST", f"{base}/stdin"),
                ("GET", f"/pods/{pod.id}/processes"),
                ("GET", f"/pods/{pod.id}/files/list?path=/"),
            ]:
                with pytest.raises(NotFound):
                    await b._request(method, url)
            with pytest.raises(NotFound):  # the right process id under the wrong pod is no process either
                await b._request("GET", f"/pods/{other.id}/processes/{process.id}")
            with pytest.raises(NotFound):
                await b._request("POST", f"{base}/signal", content='{"signal": 9}')
            assert (await process.info()).state == "running", "the other tenant's signal never reached it"
            await pod.destroy()  # the pod's end ends its processes' records too
            with pytest.raises(NotFound):
                await process.info()
            await other.destroy()

    serve(paths, scenario)


def test_files_list_and_a_remote_pods_usage(paths: PodbayPaths) -> None:
    async def scenario(url: str, token: str, _: str) -> None:
        async with AsyncClient(url, token) as client:
            pod = await client.create_agent(backend="local", memory_mib=128)
            async with pod:  # leaving it destroys the pod
                work = (await pod.exec(["pwd"])).stdout.strip()
                await pod.files.write(f"{work}/b.txt", "bb")
                await pod.files.write(f"{work}/a.txt", "a")
                entries = await pod.files.list(work)
                assert [(entry.name, entry.size) for entry in entries if entry.name.endswith(".txt")] == [
                    ("a.txt", 1),
                    ("b.txt", 2),
                ]
                usage = await pod.usage()
                assert (usage.pod_id, usage.memory_mib) == (pod.id, 128)
            assert await client.list() == []

    serve(paths, scenario)


def test_leaving_a_process_context_kills_it_and_a_pods_end_ends_its_readers(paths: PodbayPaths) -> None:
    async def scenario(url: str, token: str, _: str) -> None:
        async with AsyncClient(url, token) as client:
            pod = await client.create_agent(backend="local")
            async with await pod.start_process(["sleep", "30"]) as sleeper:
                pass
            assert (await sleeper.wait()).signal == signal.SIGKILL
            reader = await pod.start_process(["sleep", "30"])
            following = asyncio.create_task(reader.wait())
            await asyncio.sleep(0)  # let the reader connect (it replays and follows whenever it does)
            await pod.destroy()
            with pytest.raises(PodbayError):  # NotFound, or the guest's error if it saw the end first
                await following

    serve(paths, scenario)
