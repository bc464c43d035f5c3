"""Real networking software on the stock loop (the oracle) and on ferroloop.

aiohttp's web server and client, uvicorn serving a plain ASGI app, httpx's client, anyio's
TCP streams, task groups and threads, and a websockets server and client run unchanged on
the loop under test (the `loop` fixture: every test runs once per loop, and fails if the
loop leaked file descriptors). Everything listens on 127.0.0.1 with a port the kernel
picks; nothing leaves the machine. Every payload is checked in full, byte for byte, and
every test also fails if anything reached the loop's exception handler (an unclosed
session or transport, a task's lost exception).

aiohttp, uvicorn, httpx, anyio and websockets come from requirements/net.txt: without them
this module fails to import (a collection error), it never skips.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hashlib
import json
import random
import re
import signal
import socket
import sys
import textwrap
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path
from typing import Any, TypeVar

import ferroloop
import pytest

try:
    import aiohttp
    import anyio
    import anyio.abc
    import httpx
    import uvicorn
    import websockets
    from aiohttp import web
    from websockets.asyncio.client import connect as ws_connect
    from websockets.asyncio.server import serve as ws_serve
except ImportError as exc:  # fail loudly: the test command installs requirements/net.txt
    raise ImportError(f"{exc}; install them: pip install -r requirements/net.txt") from exc

T = TypeVar("T")

TIMEOUT = 20.0  # seconds for one test's coroutine; each takes well under one
MIB = 1 << 20

# The loop a uvicorn process runs on, per loop under test: `--loop` value, expected class.
UVICORN_LOOPS = {
    "asyncio": ("asyncio", "asyncio.unix_events._UnixSelectorEventLoop"),
    "ferroloop": ("ferroloop:new_event_loop", "ferroloop._loop.Loop"),
}


def ferroloop_bug(reason: str, condition: bool = True) -> pytest.MarkDecorator:
    """Strict xfail on the ferroloop param only (where `condition`); the stock loop must pass."""
    return pytest.mark.parametrize(
        "loop_factory",
        [
            "asyncio",
            pytest.param(
                "ferroloop",
                marks=pytest.mark.xfail(condition, strict=True, reason=f"ferroloop bug: {reason}"),
            ),
        ],
        indirect=True,
    )


def _loop_name(loop: asyncio.AbstractEventLoop) -> str:
    return f"{type(loop).__module__}.{type(loop).__qualname__}"


def run(loop: asyncio.AbstractEventLoop, main: Awaitable[T]) -> T:
    """Run `main` on `loop` as asyncio.run() would; fail on anything the handler got."""
    problems: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, context: problems.append(context))
    try:
        result = loop.run_until_complete(asyncio.wait_for(main, TIMEOUT))
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.run_until_complete(loop.shutdown_default_executor())
    gc.collect()  # unclosed sessions and transports report when they are collected
    assert problems == [], f"the loop's exception handler was called: {problems}"
    return result


@contextlib.asynccontextmanager
async def serving(app: web.Application) -> AsyncIterator[str]:
    """Serve an aiohttp app on 127.0.0.1 (ephemeral port); yields its base URL."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    # The test owns the listening socket, so that it is closed even when the loop fails
    # to close the server (then the test fails with that error, not a leaked-fd teardown).
    listener = socket.create_server(("127.0.0.1", 0))
    try:
        site = web.SockSite(runner, listener)
        await site.start()
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        try:
            await runner.cleanup()
        finally:
            listener.close()


def _random_bytes(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


# --- aiohttp: server and client --------------------------------------------------------


def test_aiohttp_json(loop: asyncio.AbstractEventLoop) -> None:
    peers: set[Any] = set()

    async def item(request: web.Request) -> web.Response:
        peers.add(request.transport.get_extra_info("peername") if request.transport else None)
        n = int(request.match_info["n"])
        return web.json_response(
            {"id": n, "name": f"café ☕ {n}", "squares": [i * i for i in range(n % 7)],
             "even": n % 2 == 0, "half": n / 2, "none": None},
            headers={"X-Request-Id": request.headers.get("X-Request-Id", "")},
        )

    async def total(request: web.Request) -> web.Response:
        payload = await request.json()
        return web.json_response(
            {"sum": sum(payload["numbers"]), "count": len(payload["numbers"]), "echo": payload},
            status=201,
        )

    app = web.Application()
    app.router.add_get("/items/{n}", item)
    app.router.add_post("/sum", total)

    async def main() -> None:
        async with serving(app) as base:
            connector = aiohttp.TCPConnector(limit=10)
            async with aiohttp.ClientSession(base, connector=connector) as session:

                async def get(n: int) -> tuple[int, str, Any]:
                    async with session.get(f"/items/{n}", headers={"X-Request-Id": f"r{n}"}) as r:
                        assert r.content_type == "application/json"
                        return r.status, r.headers["X-Request-Id"], await r.json()

                results = await asyncio.gather(*(get(n) for n in range(100)))
                for n, (status, request_id, data) in enumerate(results):
                    assert status == 200
                    assert request_id == f"r{n}"
                    assert data == {
                        "id": n, "name": f"café ☕ {n}", "squares": [i * i for i in range(n % 7)],
                        "even": n % 2 == 0, "half": n / 2, "none": None,
                    }

                payload = {"numbers": list(range(-50, 1000)), "nested": {"a": [1, {"b": "ü"}]}}
                async with session.post("/sum", json=payload) as r:
                    assert r.status == 201
                    assert await r.json() == {"sum": sum(range(-50, 1000)), "count": 1050,
                                              "echo": payload}

                async with session.get("/no/such/path") as r:
                    assert r.status == 404
                    assert await r.text() == "404: Not Found"

        # 100 requests, at most 10 connections at once: keep-alive connections were reused.
        assert 1 <= len(peers) <= 10, peers

    run(loop, main())


def test_aiohttp_post_1mib_echo(loop: asyncio.AbstractEventLoop) -> None:
    body = _random_bytes(MIB, seed=1)

    async def echo(request: web.Request) -> web.Response:
        data = await request.read()
        return web.Response(
            body=data,
            content_type="application/octet-stream",
            headers={"X-Length": str(len(data)), "X-SHA256": hashlib.sha256(data).hexdigest(),
                     "X-Chunked": str(request.headers.get("Transfer-Encoding") == "chunked")},
        )

    app = web.Application(client_max_size=4 * MIB)
    app.router.add_post("/echo", echo)

    async def pieces() -> AsyncIterator[bytes]:
        for i in range(0, len(body), 64 * 1024):
            yield body[i : i + 64 * 1024]
            await asyncio.sleep(0)

    async def main() -> None:
        async with serving(app) as base, aiohttp.ClientSession(base) as session:
            # With a Content-Length, then streamed from an async generator (chunked).
            for data, chunked in ((body, "False"), (pieces(), "True")):
                async with session.post("/echo", data=data) as r:
                    assert r.status == 200
                    assert r.headers["X-Chunked"] == chunked
                    assert r.headers["X-Length"] == str(MIB)
                    assert r.headers["X-SHA256"] == hashlib.sha256(body).hexdigest()
                    got = await r.read()
                assert len(got) == MIB
                assert got == body

    run(loop, main())


def test_aiohttp_streamed_response(loop: asyncio.AbstractEventLoop) -> None:
    first = b"first chunk\n"
    chunks = [_random_bytes(64 * 1024, seed=i) for i in range(128)]  # 8 MiB after it
    client_saw_first = asyncio.Event()
    server_done: list[bool] = []

    async def stream(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        await resp.write(first)
        # Streaming, not buffering: the client reads the first chunk while the handler is
        # still running (a response sent whole would wait here until the timeout).
        await asyncio.wait_for(client_saw_first.wait(), 10)
        for chunk in chunks:
            await resp.write(chunk)
        await resp.write_eof()
        server_done.append(True)
        return resp

    app = web.Application()
    app.router.add_get("/stream", stream)

    async def main() -> None:
        async with (
            serving(app) as base,
            aiohttp.ClientSession(base) as session,
            session.get("/stream") as r,
        ):
            assert r.status == 200
            assert r.headers["Transfer-Encoding"] == "chunked"
            assert await r.content.readexactly(len(first)) == first
            assert server_done == []
            client_saw_first.set()
            received = bytearray()
            reads = 0
            async for piece in r.content.iter_chunked(64 * 1024):
                received += piece
                reads += 1
            assert server_done == [True]
        assert reads >= 128
        assert len(received) == 128 * 64 * 1024
        assert bytes(received) == b"".join(chunks)

    run(loop, main())


def test_aiohttp_websocket_echo(loop: asyncio.AbstractEventLoop) -> None:
    server_saw: list[Any] = []

    async def ws_echo(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for msg in ws:
            server_saw.append(msg.type)
            if msg.type == aiohttp.WSMsgType.TEXT:
                await ws.send_str(msg.data)
            elif msg.type == aiohttp.WSMsgType.BINARY:
                await ws.send_bytes(msg.data)
        server_saw.append(("closed", ws.close_code))
        return ws

    app = web.Application()
    app.router.add_get("/ws", ws_echo)

    def message(i: int) -> str | bytes:
        if i % 2:
            return _random_bytes(1 + i * 997, seed=i)  # up to ~100 KB
        return f"message {i}: {'✓' * i}"

    async def main() -> None:
        async with (
            serving(app) as base,
            aiohttp.ClientSession(base) as session,
            session.ws_connect("/ws") as ws,
        ):
            # 100 messages one at a time, each echo checked ...
            for i in range(100):
                sent = message(i)
                if isinstance(sent, str):
                    await ws.send_str(sent)
                else:
                    await ws.send_bytes(sent)
                msg = await ws.receive(timeout=5)
                assert msg.data == sent, i
                assert msg.type == (aiohttp.WSMsgType.TEXT if isinstance(sent, str)
                                    else aiohttp.WSMsgType.BINARY)
            # ... then 100 sent back to back before reading any echo.
            for i in range(100):
                await ws.send_str(f"burst {i}")
            for i in range(100):
                msg = await ws.receive(timeout=5)
                assert (msg.type, msg.data) == (aiohttp.WSMsgType.TEXT, f"burst {i}")
            await ws.close()
            assert ws.closed
            assert ws.close_code == aiohttp.WSCloseCode.OK
        kinds = server_saw[:-1]
        assert kinds.count(aiohttp.WSMsgType.TEXT) == 150
        assert kinds.count(aiohttp.WSMsgType.BINARY) == 50
        assert server_saw[-1] == ("closed", aiohttp.WSCloseCode.OK)

    run(loop, main())


# --- uvicorn -----------------------------------------------------------------------------


async def asgi_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """A plain ASGI app: GET / answers JSON, POST /echo echoes the body."""
    assert scope["type"] == "http"
    if scope["method"] == "GET" and scope["path"] == "/":
        loop = asyncio.get_running_loop()
        status, ctype = 200, b"application/json"
        body = json.dumps(
            {"hello": "world", "loop": _loop_name(loop), "query": scope["query_string"].decode(),
             "http_version": scope["http_version"]}
        ).encode()
    elif scope["method"] == "POST" and scope["path"] == "/echo":
        parts = []
        while True:
            message = await receive()
            assert message["type"] == "http.request"
            parts.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        status, body = 200, b"".join(parts)
        ctype = dict(scope["headers"]).get(b"content-type", b"application/octet-stream")
    else:
        status, ctype, body = 404, b"text/plain", b"not found"
    headers = [(b"content-type", ctype), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


@pytest.mark.parametrize("http", ["h11", "httptools"])
def test_uvicorn_in_process(loop: asyncio.AbstractEventLoop, http: str) -> None:
    config = uvicorn.Config(
        asgi_app, host="127.0.0.1", port=0, loop="none", http=http, lifespan="off",
        log_config=None, access_log=False,
    )
    server = uvicorn.Server(config)
    body = _random_bytes(256 * 1024, seed=7)

    async def main() -> None:
        serve = asyncio.ensure_future(server.serve())
        while not server.started:  # bounded by run()'s timeout
            assert not serve.done(), serve.exception()
            await asyncio.sleep(0.01)
        port = server.servers[0].sockets[0].getsockname()[1]
        # The listening sockets, to close should the loop fail to (asyncio.Server keeps
        # them in `_sockets` and shows only wrappers without close()).
        listening.extend(sock for srv in server.servers for sock in srv._sockets or ())
        async with aiohttp.ClientSession(f"http://127.0.0.1:{port}") as session:

            async def hello(i: int) -> Any:
                async with session.get("/", params={"i": str(i)}) as r:
                    assert r.status == 200
                    return await r.json()

            results = await asyncio.gather(*(hello(i) for i in range(20)))
            assert results == [
                {"hello": "world", "loop": _loop_name(loop), "query": f"i={i}",
                 "http_version": "1.1"}
                for i in range(20)
            ]

            async def two_parts() -> AsyncIterator[bytes]:
                yield body[:100_000]
                yield body[100_000:]

            for payload in (body, two_parts()):  # with a Content-Length, then chunked
                async with session.post("/echo", data=payload,
                                        headers={"Content-Type": "application/x-test"}) as r:
                    assert r.status == 200
                    assert r.headers["Content-Type"] == "application/x-test"
                    assert await r.read() == body

            async with session.get("/nope") as r:
                assert (r.status, await r.text()) == (404, "not found")

        server.should_exit = True
        await asyncio.wait_for(serve, 5)
        assert serve.result() is None
        assert all(not s.is_serving() for s in server.servers)
        with pytest.raises(OSError):  # nothing listens there any more
            await asyncio.open_connection("127.0.0.1", port)

    listening: list[socket.socket] = []
    try:
        run(loop, main())
    finally:
        for sock in listening:
            sock.close()  # a no-op after a clean shutdown


def test_uvicorn_loop_option_resolves_ferroloop() -> None:
    # uvicorn >= 0.36 takes `--loop module:attr` as the loop factory itself.
    config = uvicorn.Config(asgi_app, loop="ferroloop:new_event_loop")
    assert config.get_loop_factory() is ferroloop.new_event_loop


_WHICH_LOOP_APP = textwrap.dedent(
    """\
    import asyncio
    import json


    async def app(scope, receive, send):
        loop = asyncio.get_running_loop()
        body = json.dumps({"loop": f"{type(loop).__module__}.{type(loop).__qualname__}"})
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": body.encode()})
    """
)


def test_uvicorn_cli_loop_option(
    loop: asyncio.AbstractEventLoop, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """`uvicorn --loop ferroloop:new_event_loop app:app` serves on ferroloop (README's claim);
    on the stock-loop param the same server runs with `--loop asyncio`, as the oracle."""
    option, expected = UVICORN_LOOPS[request.node.callspec.params["loop_factory"]]
    (tmp_path / "which_loop.py").write_text(_WHICH_LOOP_APP)

    async def main() -> tuple[int | None, str]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "uvicorn", "which_loop:app", "--app-dir", str(tmp_path),
            "--host", "127.0.0.1", "--port", "0", "--loop", option, "--lifespan", "off",
            "--no-access-log",
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        assert proc.stderr is not None
        log = []
        try:
            while True:  # bounded by run()'s timeout
                line = (await proc.stderr.readline()).decode()
                log.append(line)
                assert line, f"uvicorn exited before serving:\n{''.join(log)}"
                started = re.search(r"Uvicorn running on http://127\.0\.0\.1:(\d+)", line)
                if started:
                    break
            url = f"http://127.0.0.1:{started.group(1)}/"
            async with aiohttp.ClientSession() as session, session.get(url) as r:
                assert r.status == 200
                assert await r.json() == {"loop": expected}
        finally:
            if proc.returncode is None:
                proc.send_signal(signal.SIGINT)  # uvicorn's Ctrl+C: a clean shutdown
            log.append((await proc.stderr.read()).decode())
            await proc.wait()
        return proc.returncode, "".join(log)

    returncode, log = run(loop, main())
    assert returncode == 0, log
    assert "Shutting down" in log and "Finished server process" in log, log


# --- httpx and anyio --------------------------------------------------------------------


def test_httpx_client(loop: asyncio.AbstractEventLoop) -> None:
    """httpx's AsyncClient (over anyio and httpcore) against a local aiohttp server."""
    async def echo(request: web.Request) -> web.Response:
        data = await request.read()
        return web.json_response(
            {"method": request.method, "len": len(data), "sha": hashlib.sha256(data).hexdigest(),
             "q": request.query.get("q")}
        )

    app = web.Application(client_max_size=4 * MIB)
    app.router.add_route("*", "/echo", echo)
    body = _random_bytes(MIB, seed=7)

    async def main() -> None:
        async with serving(app) as base, httpx.AsyncClient(base_url=base) as client:
            r = await client.get("/echo", params={"q": "ß"})
            assert r.status_code == 200
            assert r.json() == {"method": "GET", "len": 0, "sha": hashlib.sha256().hexdigest(),
                                "q": "ß"}
            r = await client.post("/echo", content=body)
            assert r.json()["len"] == MIB
            assert r.json()["sha"] == hashlib.sha256(body).hexdigest()
            many = await asyncio.gather(*(client.get("/echo", params={"q": str(i)})
                                          for i in range(50)))
            assert [m.json()["q"] for m in many] == [str(i) for i in range(50)]
            with pytest.raises(httpx.ConnectError):
                with socket.socket() as probe:
                    probe.bind(("127.0.0.1", 0))
                    port = probe.getsockname()[1]
                await client.get(f"http://127.0.0.1:{port}/")

    run(loop, main())


def test_anyio_tcp_streams_and_threads(loop: asyncio.AbstractEventLoop) -> None:
    """anyio's asyncio backend on the running loop: a TCP listener and clients in a task
    group, a cancel scope with a deadline, and a worker thread."""
    payload = _random_bytes(256 * 1024, seed=3)

    async def handle(stream: Any) -> None:
        async with stream:
            got = b""
            while len(got) < len(payload):
                got += await stream.receive()
            await stream.send(hashlib.sha256(got).digest())

    async def main() -> None:
        listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
        port = listener.extra(anyio.abc.SocketAttribute.local_port)
        async with listener, anyio.create_task_group() as tg:
            tg.start_soon(listener.serve, handle)

            async def client() -> bytes:
                async with await anyio.connect_tcp("127.0.0.1", port) as stream:
                    await stream.send(payload)
                    return await stream.receive()

            digests = await asyncio.gather(*(client() for _ in range(8)))
            assert digests == [hashlib.sha256(payload).digest()] * 8

            with anyio.move_on_after(0.05) as scope:
                await anyio.sleep(10)
            assert scope.cancelled_caught
            assert await anyio.to_thread.run_sync(sum, range(10)) == 45
            tg.cancel_scope.cancel()

    run(loop, main())


def test_websockets_server_and_client(loop: asyncio.AbstractEventLoop) -> None:
    """The websockets library's asyncio server and client: text, 1 MiB binary, ping, and
    the close handshake with a code and reason."""
    blob = _random_bytes(MIB, seed=11)

    async def handler(ws: Any) -> None:
        async for message in ws:
            if isinstance(message, str):
                await ws.send(message[::-1])
            elif message == b"bye":
                await ws.close(code=4001, reason="done")
                return
            else:
                await ws.send(hashlib.sha256(message).digest())

    async def main() -> None:
        async with ws_serve(handler, "127.0.0.1", 0, max_size=4 * MIB) as server:
            port = server.sockets[0].getsockname()[1]
            async with ws_connect(f"ws://127.0.0.1:{port}", max_size=4 * MIB) as ws:
                await ws.send("héllo")
                assert await ws.recv() == "olléh"
                await ws.send(blob)
                assert await ws.recv() == hashlib.sha256(blob).digest()
                latency = await (await ws.ping())
                assert latency >= 0
                replies = []
                for i in range(100):
                    await ws.send(f"m{i}")
                for _ in range(100):
                    replies.append(await ws.recv())
                assert replies == [f"m{i}"[::-1] for i in range(100)]
                await ws.send(b"bye")
                with pytest.raises(websockets.ConnectionClosed):
                    await ws.recv()
                assert ws.close_code == 4001
                assert ws.close_reason == "done"

    run(loop, main())
