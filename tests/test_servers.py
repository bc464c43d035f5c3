"""Stream servers (issue 11): the `Server` API of each interpreter and the accept loop, on
the stock loop (the oracle) and on ferroloop's native accept loop.

tests/test_network.py covers serving itself (round trips, several hosts, reuse_port,
sock=, Unix servers, EMFILE); these are the version-dependent parts of `asyncio.Server`
and the accept loop's corner cases.
"""

from __future__ import annotations

import asyncio
import contextvars
import errno
import os
import resource
import socket
import sys

import pytest
from test_network import (  # noqa: F401  (the autouse fixture: unexpected errors fail)
    LOCAL4,
    PY312,
    PY313,
    Collector,
    Peer,
    Peers,
    _no_unexpected_errors,
    needs_313,
    run,
)

pytestmark = pytest.mark.timeout(60)
PY314 = sys.version_info >= (3, 14)
PY315 = sys.version_info >= (3, 15)


async def until(cond, timeout: float = 10.0) -> None:
    """Waits until `cond()` holds (fails after `timeout` seconds)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not cond():
        assert loop.time() < deadline, "timed out"
        await asyncio.sleep(0.001)


async def served(peers: Peers, n: int) -> None:
    """Waits until `n` connections were accepted and their protocols connected."""
    await until(lambda: len(peers) >= n)
    for p in peers[:n]:
        await p.made


async def echo_server(loop: asyncio.AbstractEventLoop, **kw):
    peers = Peers(echo=True)
    server = await loop.create_server(peers, LOCAL4, 0, **kw)
    return server, peers


def test_server_is_an_abstract_server_with_the_versions_methods(loop):
    async def main():
        server, _ = await echo_server(loop)
        assert isinstance(server, asyncio.AbstractServer)
        assert repr(server) == f"<{type(server).__name__} sockets={server.sockets!r}>"
        # close_clients()/abort_clients() are 3.13's (gh-113538).
        assert hasattr(server, "close_clients") == PY313
        assert hasattr(server, "abort_clients") == PY313
        assert server._sockets is not None and server._waiters == []
        server.close()
        assert server._sockets is None
        assert server.sockets == ()
        await server.wait_closed()
        assert server._waiters is None
        with pytest.raises(RuntimeError, match="is closed"):
            await server.serve_forever()
        with pytest.raises(TypeError):  # asyncio iterates its None sockets
            await server.start_serving()

    run(loop, main())


def test_wait_closed_waits_for_connections_from_312(loop):
    """3.12 (gh-104344): wait_closed() waits until the server is closed and its last
    connection is done; up to 3.11 a call made once the server is closed returns at once."""

    async def main():
        server, peers = await echo_server(loop)
        tr, client = await loop.create_connection(Peer, *server.sockets[0].getsockname())
        await served(peers, 1)
        early = asyncio.ensure_future(server.wait_closed())
        await asyncio.sleep(0)
        assert not early.done()  # not closed yet: waits on every version
        server.close()
        late = asyncio.ensure_future(server.wait_closed())
        for _ in range(3):
            await asyncio.sleep(0)
        # Closed, one connection left: a waiter from before the close waits for it on
        # every version; a new one returns at once up to 3.11.
        assert late.done() == (not PY312)
        assert not early.done()
        tr.close()
        await client.lost
        await peers.all_lost()
        await asyncio.wait_for(asyncio.gather(early, late), 5)
        await server.wait_closed()  # at once from now on

    run(loop, main())


def test_wait_closed_result_of_the_waiters(loop):
    """asyncio up to 3.11 completes each wait_closed() future with itself (3.12: None);
    wait_closed() itself returns None either way."""

    async def main():
        server, _ = await echo_server(loop)
        waiting = asyncio.ensure_future(server.wait_closed())
        await asyncio.sleep(0)
        [fut] = server._waiters
        server.close()
        assert await waiting is None
        assert fut.result() is (None if PY312 else fut)

    run(loop, main())


def test_serve_forever_cancelled_closes_clients_from_314(loop):
    """3.14 (gh-123720): cancelling serve_forever() closes the connections too; before, it
    waits for them (3.12, 3.13) or returns at once (3.10, 3.11)."""

    async def main():
        server, peers = await echo_server(loop)
        task = asyncio.ensure_future(server.serve_forever())
        tr, client = await loop.create_connection(Peer, *server.sockets[0].getsockname())
        await served(peers, 1)
        task.cancel()
        for _ in range(5):
            await asyncio.sleep(0)
        assert not server.is_serving()
        if PY314:
            await asyncio.wait_for(client.eof, 5)
            with pytest.raises(asyncio.CancelledError):
                await task
        else:
            assert not client.eof.done()
            assert task.done() == (not PY312)
        tr.close()
        await client.lost
        await peers.all_lost()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(task, 5)

    run(loop, main())


def test_close_cancels_serve_forever(loop):
    async def main():
        server, _ = await echo_server(loop)
        task = asyncio.ensure_future(server.serve_forever())
        await asyncio.sleep(0)
        assert server._serving_forever_fut is not None
        server.close()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert server._serving_forever_fut is None

    run(loop, main())


def test_unix_server_cleanup_socket_from_313(loop, unix_dir):
    """3.13 (gh-111246): the socket file goes when the server closes, unless
    cleanup_socket=False or the file was replaced; before, cleanup_socket= is refused."""
    path = os.path.join(unix_dir, "s.sock")

    async def main():
        if not PY313:
            with pytest.raises(TypeError):
                await loop.create_unix_server(asyncio.Protocol, path, cleanup_socket=False)
            return
        for keep in (False, True):
            server = await loop.create_unix_server(asyncio.Protocol, path, cleanup_socket=not keep)
            server.close()
            await server.wait_closed()
            assert os.path.exists(path) == keep
        os.unlink(path)
        server = await loop.create_unix_server(asyncio.Protocol, path)
        os.unlink(path)
        with socket.socket(socket.AF_UNIX) as other:  # someone else's socket file now
            other.bind(path)
            server.close()
            await server.wait_closed()
            assert os.path.exists(path)

    run(loop, main())


def test_keep_alive_from_313(loop):
    async def main():
        if not PY313:
            with pytest.raises(TypeError):
                await loop.create_server(asyncio.Protocol, LOCAL4, 0, keep_alive=True)
            return
        server = await loop.create_server(asyncio.Protocol, LOCAL4, 0, keep_alive=True)
        sock = server.sockets[0]
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE)
        server.close()
        await server.wait_closed()

    run(loop, main())


def test_create_server_argument_errors(loop):
    async def main():
        with pytest.raises(TypeError, match="ssl argument must be an SSLContext"):
            await loop.create_server(asyncio.Protocol, LOCAL4, 0, ssl=True)
        with pytest.raises(ValueError, match="ssl_handshake_timeout is only meaningful"):
            await loop.create_server(asyncio.Protocol, LOCAL4, 0, ssl_handshake_timeout=1)
        with pytest.raises(ValueError, match="Neither host/port nor sock"):
            await loop.create_server(asyncio.Protocol)
        with socket.socket() as s, pytest.raises(ValueError, match="can not be specified"):
            await loop.create_server(asyncio.Protocol, LOCAL4, 0, sock=s)
        with socket.socket(type=socket.SOCK_DGRAM) as s:
            with pytest.raises(ValueError, match="A Stream Socket was expected"):
                await loop.create_server(asyncio.Protocol, sock=s)
        with socket.socket() as s:
            s.bind((LOCAL4, 0))
            s.listen()
            with pytest.raises(OSError) as info:
                await loop.create_server(asyncio.Protocol, LOCAL4, s.getsockname()[1],
                                         reuse_address=False)  # fmt: skip
            assert info.value.errno == errno.EADDRINUSE
            assert "error while attempting to bind on address" in str(info.value)
        with pytest.raises(ValueError, match="path and sock can not be specified"):
            await loop.create_unix_server(asyncio.Protocol, "/x", sock=object())
        with pytest.raises(ValueError, match="path was not specified"):
            await loop.create_unix_server(asyncio.Protocol)
        with socket.socket() as s:
            with pytest.raises(ValueError, match="A UNIX Domain Stream Socket was expected"):
                await loop.create_unix_server(asyncio.Protocol, sock=s)

    run(loop, main())


def test_several_hosts_bind_once_each(loop):
    async def main():
        server = await loop.create_server(asyncio.Protocol, [LOCAL4, LOCAL4, "127.0.0.1"], 0)
        assert len(server.sockets) == 1
        server.close()
        await server.wait_closed()
        server = await loop.create_server(asyncio.Protocol, "", 0)  # every address
        assert server.sockets
        server.close()
        await server.wait_closed()

    run(loop, main())


def test_context_of_the_connections(loop):
    """Protocol callbacks see the context of the server's creation; 3.15 (gh-140947) runs
    all of a connection's callbacks in one copy of it (a value set in connection_made is
    seen by data_received), before each callback runs in a copy of its own."""
    var: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="unset")
    seen: list[tuple[str, str]] = []

    class P(asyncio.Protocol):
        def __init__(self) -> None:
            seen.append(("factory", var.get()))
            self.done = asyncio.get_running_loop().create_future()

        def connection_made(self, transport):
            seen.append(("made", var.get()))
            var.set("from connection_made")
            self.transport = transport

        def data_received(self, data):
            seen.append(("data", var.get()))
            self.transport.close()

        def connection_lost(self, exc):
            self.done.set_result(None)

    async def main():
        protocols: list[P] = []

        def factory() -> P:
            protocols.append(P())
            return protocols[-1]

        var.set("at create_server")
        server = await loop.create_server(factory, LOCAL4, 0)
        var.set("later")
        tr, client = await loop.create_connection(Peer, *server.sockets[0].getsockname())
        tr.write(b"x")
        while not protocols:
            await asyncio.sleep(0.001)
        await protocols[0].done
        tr.close()
        await client.lost
        server.close()
        await server.wait_closed()

    run(loop, main())
    data = "from connection_made" if PY315 else "at create_server"
    assert seen == [("factory", "at create_server"), ("made", "at create_server"), ("data", data)]


def failing_first(calls: list[int]):
    """A protocol factory whose first call raises."""

    def factory() -> Peer:
        calls.append(1)
        if len(calls) == 1:
            raise ZeroDivisionError
        return Peer(echo=True)

    return factory


async def serve_after_failure(loop, factory, calls, check_first=None) -> None:
    server = await loop.create_server(factory, LOCAL4, 0)
    addr = server.sockets[0].getsockname()
    first = socket.create_connection(addr)
    first.setblocking(False)
    try:
        await until(lambda: calls)
        if check_first is not None:
            await check_first(first)
        tr, client = await loop.create_connection(Peer, *addr)
        tr.write(b"ok")
        await client.received(2)
        tr.close()
        await client.lost
    finally:
        first.close()
    server.close()
    await server.wait_closed()


@pytest.mark.parametrize("debug", [False, True])
def test_protocol_factory_failure_is_reported_in_debug_mode(loop, debug):
    """A protocol factory that raises: the server goes on serving; asyncio reports the
    error to the exception handler in debug mode only."""
    loop.set_debug(debug)
    errors = Collector()
    loop.set_exception_handler(errors)
    calls: list[int] = []
    run(loop, serve_after_failure(loop, failing_first(calls), calls))
    messages = [c["message"] for c in errors.contexts]
    if debug:
        assert messages == ["Error on transport creation for incoming connection"]
        assert isinstance(errors.contexts[0]["exception"], ZeroDivisionError)
    else:
        assert messages == []
    errors.contexts.clear()
    loop.set_debug(False)


def test_accept_burst_more_than_backlog(loop):
    """More connections waiting than `backlog` are all served (a readiness event accepts
    at most backlog + 1; the rest come with the next ones)."""

    async def main():
        server, peers = await echo_server(loop, backlog=2)
        addr = server.sockets[0].getsockname()
        clients = []
        for _ in range(3):  # within the kernel's queue of backlog + 1
            s = socket.socket()
            s.setblocking(False)
            await loop.sock_connect(s, addr)
            clients.append(s)
        more = [await loop.create_connection(Peer, *addr) for _ in range(20)]
        await served(peers, 23)
        for s in clients:
            s.close()
        for tr, client in more:
            tr.close()
            await client.lost
        await peers.all_lost()
        server.close()
        await server.wait_closed()

    run(loop, main())


def test_server_keeps_serving_after_emfile(loop):
    """Out of fds, the server reports it, stops accepting for a second, then serves the
    waiting connections and new ones alike."""
    errors: list[int | None] = []
    loop.set_exception_handler(
        lambda lp, ctx: errors.append(getattr(ctx.get("exception"), "errno", None))
    )
    limits = resource.getrlimit(resource.RLIMIT_NOFILE)

    async def main():
        server, peers = await echo_server(loop)
        addr = server.sockets[0].getsockname()
        waiting = [socket.socket() for _ in range(3)]
        for s in waiting:
            s.connect(addr)
        lowest_free = os.open(os.devnull, os.O_RDONLY)
        os.close(lowest_free)
        resource.setrlimit(resource.RLIMIT_NOFILE, (lowest_free, limits[1]))
        try:
            while not errors:
                await asyncio.sleep(0.005)
        finally:
            resource.setrlimit(resource.RLIMIT_NOFILE, limits)
        await served(peers, 3)
        tr, client = await loop.create_connection(Peer, *addr)
        tr.write(b"after")
        await client.received(5)
        for s in waiting:
            s.setblocking(False)
            await loop.sock_sendall(s, b"w")
            assert await loop.sock_recv(s, 1) == b"w"
            s.close()
        tr.close()
        await client.lost
        await peers.all_lost()
        server.close()
        await server.wait_closed()

    run(loop, main())
    assert errors and set(errors) == {errno.EMFILE}
