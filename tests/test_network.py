"""Networking behaviour (issue 3), on the stock loop (the oracle) and on ferroloop.

Every test takes the `loop` fixture from conftest.py, so it runs once on asyncio's own
SelectorEventLoop and once on ferroloop: a test that fails on the stock loop is a wrong test,
one that fails only on ferroloop is a ferroloop bug, marked `ferroloop_bug(...)` (a strict
xfail on the ferroloop param only). These tests are the safety net for the Rust transports
that replace asyncio's selector-loop code, so they assert behaviour, never implementation.

Traffic goes only to loopback addresses: 127.0.0.1, ::1 (skipped where the host has no IPv6
loopback) and Unix sockets in a private temporary directory.

The heaviest tests (16 MiB round trips, 2,000 concurrent connections, 20,000 connections for
the fd count) carry "heavy" in their ids and run by default; `-k "not heavy"` leaves them out
of a quick local run. Every test has a pytest-timeout, and every awaited scenario a deadline,
so a broken loop fails instead of hanging. The suite also runs under PYTHONASYNCIODEBUG=1 and
on CPython 3.10 to 3.13; tests that depend on the debug mode set it explicitly.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import gc
import io
import os
import random
import resource
import socket
import struct
import sys
import time
import traceback
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest

PY311 = sys.version_info >= (3, 11)
PY312 = sys.version_info >= (3, 12)
PY313 = sys.version_info >= (3, 13)
needs_311 = pytest.mark.skipif(not PY311, reason="needs CPython 3.11+")
needs_312 = pytest.mark.skipif(not PY312, reason="needs CPython 3.12+")
needs_313 = pytest.mark.skipif(not PY313, reason="needs CPython 3.13+")

# Every test gets a hard timeout; the heavy ones a longer one.
pytestmark = pytest.mark.timeout(60)
HEAVY = pytest.mark.timeout(180)

LOCAL4 = "127.0.0.1"
LOCAL6 = "::1"
KiB = 1024
MiB = 1024 * KiB

# The deadline of one scenario (run()): far beyond what a passing test needs.
DEADLINE = 45.0


def _has_ipv6_loopback() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind((LOCAL6, 0))
            s.listen()
            with socket.create_connection(s.getsockname()[:2], timeout=5):
                pass
    except OSError:
        return False
    return True


HAS_IPV6 = _has_ipv6_loopback()
needs_ipv6 = pytest.mark.skipif(not HAS_IPV6, reason="this host has no IPv6 loopback (::1)")


def ferroloop_bug(reason: str, when: bool = True) -> pytest.MarkDecorator:
    """Strict xfail on the ferroloop param only (where `when` holds, e.g. on one Python
    version); the stock loop must still pass."""
    return pytest.mark.parametrize(
        "loop_factory",
        [
            "asyncio",
            pytest.param(
                "ferroloop",
                marks=pytest.mark.xfail(when, strict=True, reason=f"ferroloop bug: {reason}"),
            ),
        ],
        indirect=True,
    )


# --------------------------------------------------------------------------- helpers


def pattern(n: int, seed: int = 0) -> bytes:
    """`n` deterministic pseudo-random bytes (the same for both loops, on every run)."""
    return random.Random(f"{n}/{seed}").randbytes(n)


def check_bytes(got: bytes | bytearray | memoryview, want: bytes) -> None:
    """Every byte equal; on a mismatch, reports the lengths and the first differing offset
    instead of a diff of megabytes."""
    got = bytes(got)
    if got == want:
        return
    lo, hi = 0, min(len(got), len(want))
    while lo < hi:  # binary search for the first difference
        mid = (lo + hi) // 2
        if got[lo : mid + 1] == want[lo : mid + 1]:
            lo = mid + 1
        else:
            hi = mid
    pytest.fail(f"got {len(got)} bytes, want {len(want)}; first difference at offset {lo}")


def run(loop: asyncio.AbstractEventLoop, coro: Awaitable[Any], deadline: float = DEADLINE) -> Any:
    """Runs `coro` on `loop` under a deadline (a broken loop fails instead of hanging).

    On failure, the locals of the failed scenario's frames are dropped: pytest keeps the
    traceback (sys.last_traceback) past the test, and servers and sockets held there would
    otherwise still be open when the `loop` fixture counts file descriptors."""
    try:
        result = loop.run_until_complete(asyncio.wait_for(coro, deadline))
        handler = loop.get_exception_handler()
        if isinstance(handler, UnexpectedErrors) and handler.contexts:
            pytest.fail(f"the exception handler was called: {handler.summary()}")
        return result
    except BaseException as e:
        seen: set[int] = set()
        exc: BaseException | None = e
        while exc is not None and id(exc) not in seen:
            seen.add(id(exc))
            traceback.clear_frames(exc.__traceback__)
            exc = exc.__cause__ or exc.__context__
        raise


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


class Collector:
    """An exception handler that records the contexts it is given."""

    def __init__(self) -> None:
        self.contexts: list[dict[str, Any]] = []

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        self.contexts.append(context)

    def summary(self) -> list[str]:
        return [f"{c.get('message')}: {c.get('exception')!r}" for c in self.contexts]


class UnexpectedErrors(Collector):
    """The exception handler of every test that does not install its own: run() fails the
    test if it was called (an assertion in a protocol callback, a fatal transport error)."""


@pytest.fixture(autouse=True)
def _no_unexpected_errors(loop: asyncio.AbstractEventLoop) -> None:
    loop.set_exception_handler(UnexpectedErrors())


@contextlib.contextmanager
def nofile_at_least(need: int) -> Iterator[None]:
    """Raises the soft RLIMIT_NOFILE to `need` (within the hard limit) for the block; skips
    the test if the hard limit is lower."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < need:
        if hard != resource.RLIM_INFINITY and hard < need:
            pytest.skip(f"needs {need} file descriptors, RLIMIT_NOFILE hard limit is {hard}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


class Peer(asyncio.Protocol):
    """A protocol that records everything that happens to it.

    `echo`: writes back what it receives. `keep_open`: what eof_received returns.
    `pause_on_connect`: pauses reading right after connection_made (from a call_soon: on
    3.10 a pause_reading() inside connection_made is undone by the transport's own start of
    reading, scheduled after it); `read_paused` is done once it is paused.
    """

    def __init__(
        self, *, echo: bool = False, keep_open: bool = False, pause_on_connect: bool = False
    ) -> None:
        loop = asyncio.get_running_loop()
        self.echo = echo
        self.keep_open = keep_open
        self.pause_on_connect = pause_on_connect
        self.transport: Any = None
        self.data = bytearray()
        self.types: set[type] = set()  # of the data_received arguments (asyncio: bytes)
        self.events: list[str] = []  # the lifecycle: made, data, eof, lost
        self.flow: list[str] = []  # pause_writing/resume_writing calls
        self.made: asyncio.Future[Any] = loop.create_future()
        self.eof: asyncio.Future[None] = loop.create_future()
        self.lost: asyncio.Future[BaseException | None] = loop.create_future()
        self.paused: asyncio.Future[None] = loop.create_future()
        self.resumed: asyncio.Future[None] = loop.create_future()
        self.read_paused: asyncio.Future[None] = loop.create_future()
        self._want: tuple[int, asyncio.Future[None]] | None = None

    def connection_made(self, transport: Any) -> None:
        self.events.append("made")
        self.transport = transport
        if self.pause_on_connect:
            asyncio.get_running_loop().call_soon(self._pause_reading)
        self.made.set_result(transport)

    def _pause_reading(self) -> None:
        self.transport.pause_reading()
        self.read_paused.set_result(None)

    def data_received(self, data: bytes) -> None:
        # Data after eof_received or connection_lost shows in the events the tests check.
        if not self.events or self.events[-1] != "data":
            self.events.append("data")
        self.types.add(type(data))
        self.data += data
        if self.echo:
            self.transport.write(data)
        self._check_want()

    def eof_received(self) -> bool:
        self.events.append("eof")
        self.eof.set_result(None)
        self._check_want()
        return self.keep_open

    def connection_lost(self, exc: BaseException | None) -> None:
        self.events.append("lost")
        self.lost.set_result(exc)
        self._check_want()

    def pause_writing(self) -> None:
        self.flow.append("pause")
        if not self.paused.done():
            self.paused.set_result(None)

    def resume_writing(self) -> None:
        self.flow.append("resume")
        if not self.resumed.done():
            self.resumed.set_result(None)

    def _check_want(self) -> None:
        if self._want is None:
            return
        n, fut = self._want
        if fut.done():
            self._want = None
        elif len(self.data) >= n:
            fut.set_result(None)
            self._want = None
        elif self.eof.done() or self.lost.done():
            fut.set_exception(AssertionError(f"EOF after {len(self.data)} of {n} bytes"))
            self._want = None

    async def received(self, n: int) -> bytearray:
        """Waits until at least `n` bytes arrived (fails at EOF before that)."""
        self._want = (n, asyncio.get_running_loop().create_future())
        fut = self._want[1]
        self._check_want()
        await fut
        return self.data


class Peers(list):  # type: ignore[type-arg]
    """A protocol factory that keeps the `Peer`s it made."""

    def __init__(self, **peer_kw: Any) -> None:
        super().__init__()
        self.peer_kw = peer_kw

    def __call__(self) -> Peer:
        p = Peer(**self.peer_kw)
        self.append(p)
        return p

    async def all_lost(self) -> None:
        for p in self:
            await p.lost


class Listening:
    """A server with the protocols it created."""

    def __init__(self, server: asyncio.AbstractServer, peers: Peers) -> None:
        self.server = server
        self.peers = peers
        self.addr = server.sockets[0].getsockname()  # type: ignore[attr-defined]

    async def peer(self, i: int = 0) -> Peer:
        """The i-th accepted connection's protocol, once it is made."""
        while len(self.peers) <= i:
            await asyncio.sleep(0.001)
        peer = self.peers[i]
        await peer.made
        if peer.pause_on_connect:
            await peer.read_paused
        return peer

    async def close(self) -> None:
        """Closes the server, once every accepted connection is lost (each test closes its
        connections; this makes sure none outlives the test, whatever the Python version's
        wait_closed() waits for)."""
        for p in self.peers:
            await p.lost
        self.server.close()
        await self.server.wait_closed()


FAMILIES = ["ipv4", pytest.param("ipv6", marks=needs_ipv6), "unix"]


async def listen(family: str = "ipv4", unix_dir: str | None = None, **peer_kw: Any) -> Listening:
    """A server on loopback (or a Unix socket in `unix_dir`) whose connections are `Peer`s."""
    loop = asyncio.get_running_loop()
    peers = Peers(**peer_kw)
    if family == "unix":
        assert unix_dir is not None
        path = os.path.join(unix_dir, f"s{random.randrange(10**9)}")
        server = await loop.create_unix_server(peers, path)
    else:
        server = await loop.create_server(peers, LOCAL6 if family == "ipv6" else LOCAL4, 0)
    return Listening(server, peers)


async def connect(addr: Any, factory: Callable[[], Any] = Peer) -> tuple[Any, Any]:
    """create_connection / create_unix_connection to `addr`, as its type says."""
    loop = asyncio.get_running_loop()
    if isinstance(addr, str):
        return await loop.create_unix_connection(factory, addr)
    return await loop.create_connection(factory, addr[0], addr[1])


async def open_stream(addr: Any, **kw: Any) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    if isinstance(addr, str):
        return await asyncio.open_unix_connection(addr, **kw)
    return await asyncio.open_connection(addr[0], addr[1], **kw)


class StreamServer:
    """A streams-API server that keeps its handlers' tasks."""

    def __init__(self, handler: Callable[..., Awaitable[None]]) -> None:
        self.handler = handler
        self.tasks: list[asyncio.Task[Any]] = []
        self.server: Any = None
        self.addr: Any = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.tasks.append(task)
        await self.handler(reader, writer)

    async def start(self, family: str = "ipv4", unix_dir: str | None = None) -> StreamServer:
        if family == "unix":
            assert unix_dir is not None
            path = os.path.join(unix_dir, f"s{random.randrange(10**9)}")
            self.server = await asyncio.start_unix_server(self._serve, path)
        else:
            host = LOCAL6 if family == "ipv6" else LOCAL4
            self.server = await asyncio.start_server(self._serve, host, 0)
        self.addr = self.server.sockets[0].getsockname()
        return self

    async def close(self) -> None:
        """Waits for every handler to finish (re-raising its exception), then closes."""
        await asyncio.gather(*self.tasks)
        self.server.close()
        await self.server.wait_closed()


async def start_stream_server(
    handler: Callable[..., Awaitable[None]], family: str = "ipv4", unix_dir: str | None = None
) -> StreamServer:
    return await StreamServer(handler).start(family, unix_dir)


async def stream_echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """A streams-API echo handler: echoes until EOF, then closes."""
    try:
        while chunk := await reader.read(64 * KiB):
            writer.write(chunk)
            await writer.drain()
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


@functools.cache
def filler() -> bytes:
    """64 MiB of pattern, for writers that write until the transport has to buffer."""
    return pattern(64 * MiB, seed=-1)


async def fill_write_buffer(transport: Any, chunk: int = 64 * KiB) -> int:
    """Writes `filler()` chunks until data stays in the transport's own buffer (the kernel's
    buffers are full); returns the number of bytes written."""
    total = 0
    data = filler()
    while transport.get_write_buffer_size() == 0:
        assert total < len(data), "the kernel took 64 MiB without pushing back"
        transport.write(data[total : total + chunk])
        total += chunk
    return total


def small_rcvbuf_listener(family: int = socket.AF_INET) -> socket.socket:
    """A plain listening socket with a small receive buffer (inherited by accepted sockets),
    so that a peer that does not read pushes back quickly."""
    s = socket.socket(family, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 * KiB)
    s.bind((LOCAL4 if family == socket.AF_INET else LOCAL6, 0))
    s.listen()
    return s


def reset(sock: socket.socket) -> None:
    """Closes `sock` with SO_LINGER 0: the kernel sends a RST instead of a FIN."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


# --------------------------------------------------------------------------- round trips

SIZES = [
    pytest.param(1, id="1B"),
    pytest.param(KiB, id="1KiB"),
    pytest.param(64 * KiB, id="64KiB"),
    pytest.param(MiB, id="1MiB"),
    pytest.param(16 * MiB, id="heavy-16MiB", marks=HEAVY),
]


@pytest.mark.parametrize("size", SIZES)
def test_protocol_round_trip(loop, size):
    payload = pattern(size)

    async def main():
        srv = await listen(echo=True)
        tr, client = await connect(srv.addr)
        tr.write(payload)
        await client.received(size)
        tr.close()
        assert await client.lost is None
        server_side = await srv.peer()
        assert await server_side.lost is None
        await srv.close()
        return client, server_side

    client, server_side = run(loop, main())
    check_bytes(server_side.data, payload)
    check_bytes(client.data, payload)
    assert client.events == ["made", "data", "lost"]
    assert server_side.events == ["made", "data", "eof", "lost"]
    assert client.types == server_side.types == {bytes}


@pytest.mark.parametrize("size", SIZES)
def test_streams_round_trip(loop, size):
    payload = pattern(size, seed=1)

    async def main():
        server = await start_stream_server(stream_echo)
        reader, writer = await asyncio.open_connection(*server.addr)

        async def send():
            writer.write(payload)
            await writer.drain()
            writer.write_eof()

        sender = asyncio.create_task(send())
        got = await reader.readexactly(size)
        await sender
        assert await reader.read() == b""  # the server closes after our EOF
        assert reader.at_eof()
        writer.close()
        await writer.wait_closed()
        await server.close()
        return got

    check_bytes(run(loop, main()), payload)


@pytest.mark.parametrize("family", FAMILIES)
def test_protocol_round_trip_families(loop, family, unix_dir):
    payload = pattern(MiB, seed=2)

    async def main():
        srv = await listen(family, unix_dir, echo=True)
        tr, client = await connect(srv.addr)
        tr.writelines([payload[:1000], bytearray(payload[1000:5000]), memoryview(payload)[5000:]])
        await client.received(len(payload))
        tr.close()
        await client.lost
        await (await srv.peer()).lost
        await srv.close()
        return client.data

    check_bytes(run(loop, main()), payload)


@pytest.mark.parametrize("family", FAMILIES)
def test_streams_round_trip_families(loop, family, unix_dir):
    payload = pattern(MiB, seed=3)

    async def main():
        server = await start_stream_server(stream_echo, family, unix_dir)
        reader, writer = await open_stream(server.addr)
        writer.write(payload)
        got = await reader.readexactly(len(payload))
        writer.write_eof()
        assert await reader.read() == b""
        writer.close()
        await writer.wait_closed()
        await server.close()
        return got

    check_bytes(run(loop, main()), payload)


def test_buffered_protocol_round_trip(loop):
    payload = pattern(MiB, seed=4)

    class BufferedEcho(asyncio.BufferedProtocol):
        """Server: reads into one small buffer of an odd size, echoes each piece."""

        def __init__(self) -> None:
            self.buf = bytearray(1000)
            self.hints: list[Any] = []
            self.updates: list[int] = []
            self.lost = asyncio.get_running_loop().create_future()

        def connection_made(self, transport):
            self.transport = transport

        def get_buffer(self, sizehint):
            self.hints.append(sizehint)
            return self.buf

        def buffer_updated(self, nbytes):
            self.updates.append(nbytes)
            self.transport.write(bytes(self.buf[:nbytes]))

        def connection_lost(self, exc):
            self.lost.set_result(exc)

    class BufferedCollector(asyncio.BufferedProtocol):
        """Client: receives straight into one preallocated bytearray, via memoryviews."""

        def __init__(self) -> None:
            self.out = bytearray(len(payload) + 1)
            self.n = 0
            self.done = asyncio.get_running_loop().create_future()
            self.lost = asyncio.get_running_loop().create_future()

        def get_buffer(self, sizehint):
            return memoryview(self.out)[self.n : self.n + 4096]

        def buffer_updated(self, nbytes):
            assert 0 < nbytes <= 4096
            self.n += nbytes
            if self.n >= len(payload) and not self.done.done():
                self.done.set_result(None)

        def eof_received(self):
            return None

        def connection_lost(self, exc):
            self.lost.set_result(exc)

    servers: list[BufferedEcho] = []

    def server_factory():
        servers.append(BufferedEcho())
        return servers[-1]

    async def main():
        server = await loop.create_server(server_factory, LOCAL4, 0)
        tr, client = await loop.create_connection(
            BufferedCollector, *server.sockets[0].getsockname()
        )
        tr.write(payload)
        await client.done
        tr.close()
        assert await client.lost is None
        assert await servers[0].lost is None
        server.close()
        await server.wait_closed()
        return client

    client = run(loop, main())
    assert client.n == len(payload)
    check_bytes(memoryview(client.out)[: client.n], payload)
    echo = servers[0]
    assert sum(echo.updates) == len(payload)
    assert all(0 < n <= 1000 for n in echo.updates)
    assert len(echo.hints) >= len(echo.updates)
    assert all(isinstance(h, int) for h in echo.hints)


# --------------------------------------------------------------------------- many connections


@HEAVY
def test_heavy_2000_concurrent_connections_round_trips(loop):
    """2,000 connections open at once against one server, 10 round trips each (3 in debug
    mode, whose stack capture per callback makes each round trip ~20 times dearer)."""
    n_conns, rounds = 2000, (3 if loop.get_debug() else 10)
    state = {"active": 0, "max_active": 0, "made": 0, "opened": 0, "lost_with_error": 0}
    all_open = asyncio.Event()  # both ends of all 2,000 connections are up

    def check_all_open():
        if state["made"] == state["opened"] == n_conns:
            all_open.set()

    class CountingEcho(asyncio.Protocol):
        def connection_made(self, transport):
            self.transport = transport
            state["made"] += 1
            state["active"] += 1
            state["max_active"] = max(state["max_active"], state["active"])
            check_all_open()

        def data_received(self, data):
            self.transport.write(data)

        def connection_lost(self, exc):
            state["active"] -= 1
            state["lost_with_error"] += exc is not None

    async def main():
        server = await loop.create_server(CountingEcho, LOCAL4, 0, backlog=1024)
        host, port = server.sockets[0].getsockname()
        # Connects in waves so that no listen backlog, whatever the host's somaxconn, is
        # ever overrun; the round trips start only once all 2,000 are open.
        connecting = asyncio.Semaphore(100)

        async def client(i: int) -> int:
            async with connecting:
                reader, writer = await asyncio.open_connection(host, port)
            state["opened"] += 1
            check_all_open()
            await all_open.wait()
            for k in range(rounds):
                msg = b"<%06d:%02d>" % (i, k) * (1 + (i + k) % 7)
                writer.write(msg)
                assert await reader.readexactly(len(msg)) == msg
            writer.close()
            await writer.wait_closed()
            return rounds

        done = await asyncio.gather(*(client(i) for i in range(n_conns)))
        assert sum(done) == n_conns * rounds
        while state["active"]:
            await asyncio.sleep(0.005)
        server.close()
        await server.wait_closed()

    with nofile_at_least(2 * n_conns + 256):
        run(loop, main(), deadline=150)
    assert state["made"] == n_conns
    assert state["max_active"] == n_conns
    assert state["lost_with_error"] == 0


@HEAVY
def test_heavy_fd_count_back_to_start_after_20000_connections(loop):
    """20,000 connections opened and closed, 200 at a time: no fd survives them (2,000 in
    debug mode, whose stack capture per callback costs ~1 ms per connection)."""
    total, batch = (2_000 if loop.get_debug() else 20_000), 200
    counts = {"made": 0, "lost": 0, "bytes": 0}

    class Counting(asyncio.Protocol):
        def connection_made(self, transport):
            counts["made"] += 1
            transport.write(b"!")  # one byte each way, so each connection is really used

        def data_received(self, data):
            counts["bytes"] += len(data)

        def connection_lost(self, exc):
            counts["lost"] += 1

    class Client(asyncio.Protocol):
        def __init__(self):
            self.got = asyncio.get_running_loop().create_future()

        def data_received(self, data):
            self.got.set_result(data)

    async def main():
        gc.collect()
        before = open_fds()
        server = await loop.create_server(Counting, LOCAL4, 0, backlog=512)
        host, port = server.sockets[0].getsockname()
        peak = 0
        for done in range(batch, total + 1, batch):
            conns = await asyncio.gather(
                *(loop.create_connection(Client, host, port) for _ in range(batch))
            )
            for tr, proto in conns:
                tr.write(b"?")
                assert await proto.got == b"!"
            peak = max(peak, open_fds())
            for tr, _ in conns:
                tr.close()
            del conns
            while counts["lost"] < done:
                await asyncio.sleep(0.001)
            await asyncio.sleep(0)  # the clients' own connection_lost calls
            # Sockets are closed when their transports are, not when they are collected.
            assert open_fds() <= before + 8, f"fds pile up after {done} connections"
        server.close()
        await server.wait_closed()
        await asyncio.sleep(0)
        gc.collect()
        return before, peak, open_fds()

    with nofile_at_least(2 * batch + 256):
        before, peak, after = run(loop, main(), deadline=150)
    assert counts == {"made": total, "lost": total, "bytes": total}
    assert peak >= before + 2 * batch  # the batches really were open at once
    assert after == before


# --------------------------------------------------------------------------- half-close


@pytest.mark.parametrize("family", ["ipv4", "unix"])
def test_half_close_from_client(loop, family, unix_dir):
    """write_eof() on the client: the server sees the data then EOF, and can still reply."""
    request, reply = pattern(100 * KiB, seed=5), pattern(200 * KiB, seed=6)

    async def main():
        srv = await listen(family, unix_dir, keep_open=True)
        tr, client = await connect(srv.addr)
        assert tr.can_write_eof() is True
        tr.write(request)
        tr.write_eof()
        tr.write_eof()  # a second call is a no-op
        with pytest.raises(RuntimeError):
            tr.write(b"more")
        assert not tr.is_closing()
        server_side = await srv.peer()
        await server_side.eof
        check_bytes(server_side.data, request)
        assert not server_side.transport.is_closing()  # eof_received returned True
        server_side.transport.write(reply)
        server_side.transport.close()
        await client.received(len(reply))
        await client.eof
        assert await client.lost is None
        assert await server_side.lost is None
        await srv.close()
        return client, server_side

    client, server_side = run(loop, main())
    check_bytes(client.data, reply)
    assert client.events == ["made", "data", "eof", "lost"]
    assert server_side.events == ["made", "data", "eof", "lost"]


@pytest.mark.parametrize("family", ["ipv4", "unix"])
def test_half_close_from_server(loop, family, unix_dir):
    """write_eof() on the server side: the client sees EOF, replies, the server reads it."""
    greeting, answer = pattern(300 * KiB, seed=7), pattern(50 * KiB, seed=8)

    async def main():
        srv = await listen(family, unix_dir)
        tr, client = await connect(srv.addr, lambda: Peer(keep_open=True))
        server_side = await srv.peer()
        assert server_side.transport.can_write_eof() is True
        server_side.transport.write(greeting)
        server_side.transport.write_eof()
        await client.eof
        check_bytes(client.data, greeting)
        assert not tr.is_closing()
        tr.write(answer)
        await server_side.received(len(answer))
        tr.close()
        assert await client.lost is None
        assert await server_side.lost is None
        await srv.close()
        return server_side

    server_side = run(loop, main())
    check_bytes(server_side.data, answer)
    assert server_side.events == ["made", "data", "eof", "lost"]


def test_eof_received_false_closes_transport(loop):
    async def main():
        srv = await listen()  # server side: eof_received returns False
        tr, client = await connect(srv.addr, lambda: Peer(keep_open=True))
        tr.write(b"bye")
        tr.write_eof()
        server_side = await srv.peer()
        assert await server_side.lost is None  # closed itself after EOF
        await client.eof
        tr.close()
        await client.lost
        await srv.close()
        return server_side

    server_side = run(loop, main())
    assert server_side.events == ["made", "data", "eof", "lost"]
    assert server_side.data == b"bye"


def test_streams_half_close(loop):
    async def handler(reader, writer):
        data = await reader.read()  # until the client's EOF
        assert reader.at_eof()
        writer.write(data[::-1])
        assert writer.can_write_eof()
        writer.write_eof()
        await writer.drain()
        writer.close()

    async def main():
        server = await start_stream_server(handler)
        reader, writer = await asyncio.open_connection(*server.addr)
        assert writer.can_write_eof()
        writer.write(b"0123456789" * 1000)
        writer.write_eof()
        got = await reader.read()
        assert reader.at_eof()
        writer.close()
        await writer.wait_closed()
        await server.close()
        return got

    assert run(loop, main()) == (b"0123456789" * 1000)[::-1]


def test_write_eof_waits_for_buffered_data(loop):
    """write_eof() with data still buffered: the data goes first, then the EOF."""

    async def main():
        srv = await listen(pause_on_connect=True)
        tr, client = await connect(srv.addr)
        reader = await srv.peer()
        total = await fill_write_buffer(tr)
        assert tr.get_write_buffer_size() > 0
        tr.write_eof()
        reader.transport.resume_reading()
        await reader.received(total)
        await reader.eof
        tr.close()
        await client.lost
        await srv.close()
        return reader, total

    reader, total = run(loop, main())
    check_bytes(reader.data, filler()[:total])
    assert reader.events == ["made", "data", "eof", "lost"]


# --------------------------------------------------------------------------- resets


def test_peer_reset_mid_write(loop):
    """The peer closes with SO_LINGER 0 while we write a large buffer: connection_lost gets
    the ConnectionResetError/BrokenPipeError; nothing reaches the exception handler."""
    handler = Collector()
    loop.set_exception_handler(handler)
    lsock = small_rcvbuf_listener()

    async def main():
        tr, client = await loop.create_connection(Peer, *lsock.getsockname())
        conn, _ = lsock.accept()
        try:
            written = await fill_write_buffer(tr)
            assert tr.get_write_buffer_size() > 0
            await asyncio.sleep(0.01)
            assert not client.lost.done()
        finally:
            reset(conn)
        exc = await client.lost
        assert tr.is_closing()
        return exc, written

    try:
        exc, written = run(loop, main())
    finally:
        lsock.close()
    assert isinstance(exc, (ConnectionResetError, BrokenPipeError)), repr(exc)
    assert handler.contexts == []


def test_streams_peer_reset_mid_drain(loop):
    lsock = small_rcvbuf_listener()

    async def main():
        reader, writer = await asyncio.open_connection(*lsock.getsockname())
        conn, _ = lsock.accept()
        try:
            await fill_write_buffer(writer.transport)
            while writer.transport.get_write_buffer_size() <= 64 * KiB:
                writer.write(bytes(64 * KiB))
            drain = asyncio.create_task(writer.drain())
            await asyncio.sleep(0.01)
            assert not drain.done()  # paused above the high-water mark
        finally:
            reset(conn)
        with pytest.raises((ConnectionResetError, BrokenPipeError)):
            await drain
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()

    try:
        run(loop, main())
    finally:
        lsock.close()


def test_peer_reset_while_reading(loop):
    """A RST while idle-reading: connection_lost(ConnectionResetError)."""
    lsock = small_rcvbuf_listener()

    async def main():
        tr, client = await loop.create_connection(Peer, *lsock.getsockname())
        conn, _ = lsock.accept()
        conn.sendall(b"hello")
        await client.received(5)
        reset(conn)
        return await client.lost

    try:
        exc = run(loop, main())
    finally:
        lsock.close()
    assert isinstance(exc, ConnectionResetError), repr(exc)


def test_connection_refused(loop):
    with socket.socket() as s:  # a port that nothing listens on
        s.bind((LOCAL4, 0))
        port = s.getsockname()[1]

        async def main():
            with pytest.raises(ConnectionRefusedError):
                await loop.create_connection(asyncio.Protocol, LOCAL4, port)
            with pytest.raises(ConnectionRefusedError):
                await asyncio.open_connection(LOCAL4, port)

        run(loop, main())


@needs_312
def test_connection_refused_all_errors(loop):
    with socket.socket() as s:
        s.bind((LOCAL4, 0))
        port = s.getsockname()[1]

        async def main():
            with pytest.raises(ExceptionGroup) as info:  # noqa: F821 (3.11+ builtin)
                await loop.create_connection(asyncio.Protocol, LOCAL4, port, all_errors=True)
            assert all(isinstance(e, ConnectionRefusedError) for e in info.value.exceptions)

        run(loop, main())


def test_server_survives_clients_reset_before_accept(loop):
    """Clients that connect and reset at once do not disturb the server."""

    async def main():
        srv = await listen(echo=True)
        for _ in range(20):
            s = socket.socket()
            s.connect(srv.addr)
            reset(s)
        await asyncio.sleep(0.05)
        tr, client = await connect(srv.addr)
        tr.write(b"still serving")
        await client.received(13)
        tr.close()
        await client.lost
        # Those reset connections that were accepted at all were lost with None or a reset.
        for p in srv.peers:
            exc = await p.lost
            assert exc is None or isinstance(exc, ConnectionResetError), repr(exc)
        await srv.close()

    run(loop, main())


def test_accept_out_of_fds_reports_and_resumes(loop):
    """accept() failing with EMFILE goes to the exception handler, the loop does not spin
    on the still-readable listening socket meanwhile, and the server accepts the waiting
    connection once fds are available again (asyncio retries after 1 s)."""
    # Only the errors are kept: the contexts (and the exceptions' tracebacks) hold the
    # listening socket.
    errors: list[tuple[type[BaseException], Any]] = []
    loop.set_exception_handler(
        lambda lp, context: errors.append(
            (type(context.get("exception")), getattr(context.get("exception"), "errno", None))
        )
    )
    limits = resource.getrlimit(resource.RLIMIT_NOFILE)

    async def main():
        peers = Peers(echo=True)
        server = await loop.create_server(peers, LOCAL4, 0, backlog=1)
        addr = server.sockets[0].getsockname()
        client = socket.socket()
        try:
            client.connect(addr)  # waits in the accept queue
            # No free fd number below the soft limit: the server's accept() gets EMFILE.
            lowest_free = os.open(os.devnull, os.O_RDONLY)
            os.close(lowest_free)
            resource.setrlimit(resource.RLIMIT_NOFILE, (lowest_free, limits[1]))
            try:
                while not errors:
                    await asyncio.sleep(0.005)
                assert not peers
            finally:
                resource.setrlimit(resource.RLIMIT_NOFILE, limits)
            wall, cpu = time.monotonic(), time.process_time()
            while not peers:  # accepted after the retry delay
                await asyncio.sleep(0.01)
            wall, cpu = time.monotonic() - wall, time.process_time() - cpu
            assert cpu < max(0.5 * wall, 0.1), f"{cpu:.2f} s of CPU in {wall:.2f} s waiting"
            await peers[0].made
            client.sendall(b"back")
            await peers[0].received(4)
            assert client.recv(4) == b"back"
        finally:
            client.close()
        await peers.all_lost()
        server.close()
        await server.wait_closed()

    run(loop, main())
    assert errors
    for exc_type, exc_errno in errors:
        assert issubclass(exc_type, OSError) and exc_errno == errno.EMFILE, errors


# --------------------------------------------------------------------------- flow control


def test_write_buffer_limits(loop):
    async def main():
        srv = await listen()
        tr, client = await connect(srv.addr)
        assert tr.get_write_buffer_limits() == (16 * KiB, 64 * KiB)  # asyncio's defaults
        tr.set_write_buffer_limits(high=1000)
        assert tr.get_write_buffer_limits() == (250, 1000)
        tr.set_write_buffer_limits(low=100)
        assert tr.get_write_buffer_limits() == (100, 400)
        tr.set_write_buffer_limits(high=10, low=5)
        assert tr.get_write_buffer_limits() == (5, 10)
        tr.set_write_buffer_limits(high=0, low=0)
        assert tr.get_write_buffer_limits() == (0, 0)
        with pytest.raises(ValueError):
            tr.set_write_buffer_limits(high=10, low=20)
        with pytest.raises(ValueError):
            tr.set_write_buffer_limits(high=-1)
        assert tr.get_write_buffer_limits() == (0, 0)  # unchanged by the refusals
        tr.set_write_buffer_limits()
        assert tr.get_write_buffer_limits() == (16 * KiB, 64 * KiB)
        assert tr.get_write_buffer_size() == 0
        tr.close()
        await client.lost
        await (await srv.peer()).lost
        await srv.close()

    run(loop, main())


def test_slow_reader_pauses_and_resumes_writer(loop):
    """The receiver pauses reading; the writer's protocol gets pause_writing once its buffer
    passes the high-water mark, and resume_writing once the reader resumes and the buffer
    drains to the low-water mark; every byte arrives."""
    high, low = 256 * KiB, 32 * KiB

    async def main():
        srv = await listen(pause_on_connect=True)
        tr, client = await connect(srv.addr)
        reader = await srv.peer()
        assert not reader.transport.is_reading()
        tr.set_write_buffer_limits(high=high, low=low)
        assert tr.get_write_buffer_limits() == (low, high)
        data = pattern(64 * MiB, seed=9)
        total = 0
        while not client.paused.done():  # pause_writing is called from write() itself
            assert total < len(data), "no pause_writing after 64 MiB"
            assert tr.get_write_buffer_size() <= high
            tr.write(data[total : total + 16 * KiB])
            total += 16 * KiB
        assert tr.get_write_buffer_size() > high
        assert client.flow == ["pause"]
        await asyncio.sleep(0.05)
        assert not client.resumed.done()  # the reader is still paused
        assert len(reader.data) == 0
        reader.transport.resume_reading()
        assert reader.transport.is_reading()
        await client.resumed
        assert tr.get_write_buffer_size() <= low
        assert client.flow == ["pause", "resume"]
        await reader.received(total)
        tr.close()
        await client.lost
        await reader.lost
        await srv.close()
        return reader, data[:total]

    reader, sent = run(loop, main())
    check_bytes(reader.data, sent)


def test_pause_resume_reading(loop):
    async def main():
        srv = await listen()
        tr, client = await connect(srv.addr)
        assert tr.is_reading()
        tr.pause_reading()
        tr.pause_reading()  # idempotent
        assert not tr.is_reading()
        server_side = await srv.peer()
        server_side.transport.write(b"while paused")
        await asyncio.sleep(0.05)
        assert client.data == b""
        tr.resume_reading()
        tr.resume_reading()  # idempotent
        assert tr.is_reading()
        await client.received(len(b"while paused"))
        tr.close()
        assert not tr.is_reading()
        await client.lost
        await server_side.lost
        await srv.close()
        return client

    assert run(loop, main()).data == b"while paused"


def test_streams_drain_waits_for_slow_reader(loop):
    async def main():
        srv = await listen(pause_on_connect=True)
        reader, writer = await asyncio.open_connection(*srv.addr)
        server_side = await srv.peer()
        writer.transport.set_write_buffer_limits(high=64 * KiB)
        data = pattern(32 * MiB, seed=10)
        total = 0
        while writer.transport.get_write_buffer_size() <= 64 * KiB:
            assert total < len(data)
            writer.write(data[total : total + 64 * KiB])
            total += 64 * KiB
        drain = asyncio.create_task(writer.drain())
        await asyncio.sleep(0.05)
        assert not drain.done()
        server_side.transport.resume_reading()
        await drain
        assert writer.transport.get_write_buffer_size() <= 16 * KiB
        await server_side.received(total)
        writer.close()
        await writer.wait_closed()
        await server_side.lost
        await srv.close()
        return server_side.data, data[:total]

    got, sent = run(loop, main())
    check_bytes(got, sent)


# --------------------------------------------------------------------------- close and abort


def test_close_flushes_pending_data(loop):
    async def main():
        srv = await listen(pause_on_connect=True)
        tr, client = await connect(srv.addr)
        reader = await srv.peer()
        total = await fill_write_buffer(tr)
        pending = tr.get_write_buffer_size()
        assert pending > 0
        tr.close()
        assert tr.is_closing()
        await asyncio.sleep(0.05)
        assert not client.lost.done()  # still flushing
        assert 0 < tr.get_write_buffer_size() <= pending
        reader.transport.resume_reading()
        await reader.received(total)
        await reader.eof
        assert await client.lost is None
        assert await reader.lost is None
        assert tr.get_write_buffer_size() == 0
        await srv.close()
        return reader, total

    reader, total = run(loop, main())
    check_bytes(reader.data, filler()[:total])
    assert reader.events == ["made", "data", "eof", "lost"]


def test_abort_drops_pending_data(loop):
    async def main():
        srv = await listen(pause_on_connect=True)
        tr, client = await connect(srv.addr)
        reader = await srv.peer()
        total = await fill_write_buffer(tr)
        assert tr.get_write_buffer_size() > 0
        tr.abort()
        assert tr.is_closing()
        assert await client.lost is None
        reader.transport.resume_reading()
        exc = await reader.lost
        await srv.close()
        return reader, total, exc

    reader, total, exc = run(loop, main())
    assert exc is None or isinstance(exc, ConnectionResetError), repr(exc)
    assert len(reader.data) < total
    check_bytes(reader.data, filler()[: len(reader.data)])


def test_streams_close_flushes(loop):
    payload = pattern(4 * MiB, seed=11)

    async def handler(reader, writer):
        writer.write(payload)
        writer.close()  # no drain: close() itself must flush
        await writer.wait_closed()

    async def main():
        server = await start_stream_server(handler)
        reader, writer = await asyncio.open_connection(*server.addr)
        got = await reader.read()  # everything, then EOF
        assert reader.at_eof()
        writer.close()
        await writer.wait_closed()
        await server.close()
        return got

    check_bytes(run(loop, main()), payload)


def test_close_is_idempotent_and_calls_connection_lost_once(loop):
    async def main():
        srv = await listen()
        tr, client = await connect(srv.addr)
        tr.close()
        tr.close()
        tr.abort()
        assert await client.lost is None
        for _ in range(5):
            await asyncio.sleep(0)
        await (await srv.peer()).lost
        await srv.close()
        return client

    assert run(loop, main()).events == ["made", "lost"]


# --------------------------------------------------------------------------- transports


def test_get_extra_info(loop):
    async def main():
        srv = await listen()
        tr, client = await connect(srv.addr)
        server_side = await srv.peer()
        sock = tr.get_extra_info("socket")
        assert sock.family == socket.AF_INET
        assert sock.type == socket.SOCK_STREAM
        assert isinstance(sock.fileno(), int) and sock.fileno() >= 0
        assert tr.get_extra_info("sockname") == sock.getsockname()
        assert tr.get_extra_info("peername") == sock.getpeername() == srv.addr
        assert server_side.transport.get_extra_info("peername") == tr.get_extra_info("sockname")
        assert server_side.transport.get_extra_info("sockname") == srv.addr
        assert tr.get_extra_info("sockname")[0] == LOCAL4
        # TCP_NODELAY on by default, on both ends (as asyncio).
        for t in (tr, server_side.transport):
            s = t.get_extra_info("socket")
            assert s.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) != 0
        assert tr.get_extra_info("no such key") is None
        assert tr.get_extra_info("no such key", 42) == 42
        assert isinstance(repr(tr), str)
        assert tr.get_protocol() is client
        sockname, peername = tr.get_extra_info("sockname"), tr.get_extra_info("peername")
        tr.close()
        await client.lost
        await server_side.lost
        # Known at connection time, still known once closed.
        assert tr.get_extra_info("sockname") == sockname
        assert tr.get_extra_info("peername") == peername
        assert isinstance(repr(tr), str)
        await srv.close()

    run(loop, main())


def test_set_protocol(loop):
    """Data after set_protocol() goes to the new protocol."""

    async def main():
        srv = await listen()
        tr, first = await connect(srv.addr)
        server_side = await srv.peer()
        server_side.transport.write(b"one")
        await first.received(3)
        second = Peer()
        tr.set_protocol(second)
        assert tr.get_protocol() is second
        server_side.transport.write(b"two")
        await second.received(3)
        tr.close()
        await second.lost
        await server_side.lost
        await srv.close()
        return first, second

    first, second = run(loop, main())
    assert first.data == b"one" and first.events == ["made", "data"]
    assert second.data == b"two" and second.events == ["data", "lost"]


def test_write_types(loop):
    async def main():
        srv = await listen()
        tr, client = await connect(srv.addr)
        tr.write(b"")  # nothing
        tr.write(b"ab")
        tr.write(bytearray(b"cd"))
        tr.write(memoryview(b"xefx")[1:3])
        tr.writelines([b"gh", bytearray(b"ij"), memoryview(b"kl")])
        tr.writelines([])
        tr.writelines(chunk for chunk in (b"mn", b"op"))  # any iterable
        with pytest.raises(TypeError):
            tr.write("str")  # type: ignore[arg-type]
        server_side = await srv.peer()
        await server_side.received(16)
        tr.close()
        await client.lost
        await server_side.lost
        await srv.close()
        return server_side.data

    assert run(loop, main()) == b"abcdefghijklmnop"


def test_data_received_exception_goes_to_handler(loop):
    handler = Collector()
    loop.set_exception_handler(handler)

    class Failing(Peer):
        def data_received(self, data):
            raise ZeroDivisionError("in data_received")

    async def main():
        srv = await listen()
        tr, client = await connect(srv.addr, Failing)
        server_side = await srv.peer()
        server_side.transport.write(b"boom")
        exc = await client.lost
        await server_side.lost
        await srv.close()
        return tr, client, exc

    tr, client, exc = run(loop, main())
    assert isinstance(exc, ZeroDivisionError)
    [ctx] = handler.contexts
    assert isinstance(ctx["exception"], ZeroDivisionError)
    assert ctx["protocol"] is client
    assert ctx["transport"] is tr


def test_fd_of_a_transport_is_refused_to_add_reader(loop):
    async def main():
        srv = await listen()
        tr, client = await connect(srv.addr)
        fd = tr.get_extra_info("socket").fileno()
        for method in ("add_reader", "add_writer"):
            with pytest.raises(RuntimeError):
                getattr(loop, method)(fd, lambda: None)
        for method in ("remove_reader", "remove_writer"):
            with pytest.raises(RuntimeError):
                getattr(loop, method)(fd)
        tr.close()
        await client.lost
        await srv.close()

    run(loop, main())


def test_connection_lost_exception_still_closes_socket(loop):
    """An exception from connection_lost goes to the exception handler; the socket is
    closed all the same (the `loop` fixture checks that no fd is left)."""
    handler = Collector()
    loop.set_exception_handler(handler)

    class FailingLost(Peer):
        def connection_lost(self, exc):
            super().connection_lost(exc)
            raise ZeroDivisionError("in connection_lost")

    async def main():
        srv = await listen()
        tr, client = await connect(srv.addr, FailingLost)
        fd = tr.get_extra_info("socket").fileno()
        tr.close()
        await client.lost
        await asyncio.sleep(0)
        await srv.close()
        return fd

    fd = run(loop, main())
    assert [type(c.get("exception")) for c in handler.contexts] == [ZeroDivisionError]
    with pytest.raises(OSError):
        os.fstat(fd)  # closed (and not reused: nothing was opened since)


def test_read_timeout_then_data(loop):
    """An idle connection times out a read (the poll wakes for the timer, not the socket),
    then data that comes later is read."""

    async def main():
        srv = await listen()
        reader, writer = await asyncio.open_connection(*srv.addr)
        server_side = await srv.peer()
        start = loop.time()
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(reader.read(10), 0.05)
        assert loop.time() - start >= 0.04
        loop.call_later(0.05, server_side.transport.write, b"late")
        assert await asyncio.wait_for(reader.readexactly(4), 10) == b"late"
        writer.close()
        await writer.wait_closed()
        await srv.close()

    run(loop, main())


@needs_311
def test_pause_reading_in_connection_made(loop):
    """3.11+: pause_reading() inside connection_made holds data back from the start."""

    class PausedAtOnce(Peer):
        def connection_made(self, transport):
            super().connection_made(transport)
            transport.pause_reading()

    async def main():
        srv = await listen()
        tr, client = await connect(srv.addr, PausedAtOnce)
        assert not tr.is_reading()
        server_side = await srv.peer()
        server_side.transport.write(b"held back")
        await asyncio.sleep(0.05)
        assert client.data == b""
        tr.resume_reading()
        await client.received(9)
        tr.close()
        await client.lost
        await srv.close()

    run(loop, main())


def test_close_and_abort_inside_data_received(loop):
    """close()/abort() from data_received: no more data_received, one connection_lost."""

    class Closing(Peer):
        def __init__(self, how):
            super().__init__()
            self.how = how

        def data_received(self, data):
            super().data_received(data)
            getattr(self.transport, self.how)()

    async def main():
        srv = await listen()
        results = []
        for how in ("close", "abort"):
            tr, client = await connect(srv.addr, lambda how=how: Closing(how))
            server_side = await srv.peer(len(results))
            server_side.transport.write(b"first")
            await client.received(1)
            server_side.transport.write(b"second")  # may or may not arrive: never delivered
            assert await client.lost is None
            assert tr.is_closing()
            await asyncio.sleep(0.01)
            results.append(client)
        await srv.close()
        return results

    for client in run(loop, main()):
        assert client.events == ["made", "data", "lost"]
        assert bytes(client.data) in (b"first", b"firstsecond"[: len(client.data)])


def test_lowering_high_water_pauses_at_once(loop):
    """set_write_buffer_limits() below what is already buffered calls pause_writing."""

    async def main():
        srv = await listen(pause_on_connect=True)
        tr, client = await connect(srv.addr)
        reader = await srv.peer()
        tr.set_write_buffer_limits(high=64 * MiB)
        total = await fill_write_buffer(tr)
        assert not client.paused.done()
        size = tr.get_write_buffer_size()
        assert size > 0
        tr.set_write_buffer_limits(high=size - 1, low=0)
        assert client.flow == ["pause"]
        reader.transport.resume_reading()
        await client.resumed
        assert client.flow == ["pause", "resume"]
        await reader.received(total)
        tr.close()
        await client.lost
        await srv.close()

    run(loop, main())


def test_eof_received_exception_goes_to_handler(loop):
    handler = Collector()
    loop.set_exception_handler(handler)

    class Failing(Peer):
        def eof_received(self):
            super().eof_received()
            raise ZeroDivisionError("in eof_received")

    async def main():
        srv = await listen()
        tr, client = await connect(srv.addr, Failing)
        server_side = await srv.peer()
        server_side.transport.write_eof()
        exc = await client.lost
        tr.close()
        server_side.transport.close()
        await srv.close()
        return tr, client, exc

    tr, client, exc = run(loop, main())
    assert isinstance(exc, ZeroDivisionError)
    [ctx] = handler.contexts
    assert isinstance(ctx["exception"], ZeroDivisionError)
    assert ctx["protocol"] is client
    assert ctx["transport"] is tr


@pytest.mark.parametrize("failure", ["raises", "empty"])
def test_buffered_protocol_get_buffer_failure(loop, failure):
    """get_buffer() raising or returning an empty buffer is a fatal error of the transport:
    the exception handler gets it with the protocol and transport, connection_lost too."""
    handler = Collector()
    loop.set_exception_handler(handler)

    class BadBuffer(asyncio.BufferedProtocol):
        def __init__(self):
            self.lost = asyncio.get_running_loop().create_future()

        def get_buffer(self, sizehint):
            if failure == "raises":
                raise ZeroDivisionError("in get_buffer")
            return bytearray()

        def buffer_updated(self, nbytes):
            raise AssertionError("no buffer was given")

        def connection_lost(self, exc):
            self.lost.set_result(exc)

    async def main():
        srv = await listen()
        tr, client = await connect(srv.addr, BadBuffer)
        server_side = await srv.peer()
        server_side.transport.write(b"data")
        exc = await client.lost
        await srv.close()
        return tr, client, exc

    tr, client, exc = run(loop, main())
    want = ZeroDivisionError if failure == "raises" else RuntimeError
    assert isinstance(exc, want), repr(exc)
    [ctx] = handler.contexts
    assert isinstance(ctx["exception"], want)
    assert ctx["protocol"] is client
    assert ctx["transport"] is tr


def test_paused_reader_sees_eof_only_after_resume(loop):
    """Data and EOF that arrive while reading is paused are delivered, in order, on resume."""

    async def main():
        srv = await listen()
        tr, client = await connect(srv.addr)
        tr.pause_reading()
        server_side = await srv.peer()
        server_side.transport.write(b"last words")
        server_side.transport.close()
        await server_side.lost
        await asyncio.sleep(0.05)
        assert client.events == ["made"]
        tr.resume_reading()
        assert await client.lost is None
        await srv.close()
        return client

    client = run(loop, main())
    assert client.events == ["made", "data", "eof", "lost"]
    assert client.data == b"last words"


def test_flow_control_callback_exceptions_go_to_handler(loop):
    """pause_writing/resume_writing raising: the exception handler gets each with the
    transport and protocol; the connection goes on and delivers every byte."""
    handler = Collector()
    loop.set_exception_handler(handler)

    class Failing(Peer):
        def pause_writing(self):
            super().pause_writing()
            raise ZeroDivisionError("in pause_writing")

        def resume_writing(self):
            super().resume_writing()
            raise ArithmeticError("in resume_writing")

    async def main():
        srv = await listen(pause_on_connect=True)
        tr, client = await connect(srv.addr, Failing)
        reader = await srv.peer()
        tr.set_write_buffer_limits(high=64 * KiB)
        total = 0
        data = filler()
        while not client.paused.done():
            tr.write(data[total : total + 64 * KiB])
            total += 64 * KiB
        reader.transport.resume_reading()
        await client.resumed
        await reader.received(total)
        tr.close()
        assert await client.lost is None
        await srv.close()
        return tr, client, reader, total

    tr, client, reader, total = run(loop, main())
    check_bytes(reader.data, filler()[:total])
    assert [type(c["exception"]) for c in handler.contexts] == [
        ZeroDivisionError,
        ArithmeticError,
    ]
    for ctx in handler.contexts:
        assert ctx["transport"] is tr
        assert ctx["protocol"] is client


# --------------------------------------------------------------------------- connecting


def test_create_connection_sock(loop):
    async def main():
        srv = await listen(echo=True)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.connect(srv.addr)  # blocking connect; asyncio makes it non-blocking itself
        tr, client = await loop.create_connection(Peer, sock=sock)
        assert tr.get_extra_info("socket").fileno() == sock.fileno()
        tr.write(b"via sock=")
        await client.received(9)
        tr.close()
        await client.lost
        assert sock.fileno() == -1  # the transport closed it
        await (await srv.peer()).lost
        await srv.close()
        return client.data

    assert run(loop, main()) == b"via sock="


def test_create_connection_argument_errors(loop):
    async def main():
        srv = await listen()
        host, port = srv.addr
        with socket.socket() as s:
            with pytest.raises(ValueError):
                await loop.create_connection(asyncio.Protocol, host, port, sock=s)
        with pytest.raises(ValueError):
            await loop.create_connection(asyncio.Protocol)  # neither host/port nor sock
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            with pytest.raises(ValueError):
                await loop.create_connection(asyncio.Protocol, sock=s)
        await srv.close()

    run(loop, main())


def test_create_connection_local_addr(loop):
    with socket.socket() as probe:  # a free local port
        probe.bind((LOCAL4, 0))
        local = probe.getsockname()

    async def main():
        srv = await listen()
        tr, client = await loop.create_connection(Peer, *srv.addr, local_addr=local)
        server_side = await srv.peer()
        assert tr.get_extra_info("sockname") == local
        assert server_side.transport.get_extra_info("peername") == local
        tr.close()
        await client.lost
        await server_side.lost
        await srv.close()

    run(loop, main())


def test_create_connection_happy_eyeballs(loop):
    async def main():
        srv = await listen(echo=True)
        tr, client = await loop.create_connection(
            Peer, *srv.addr, happy_eyeballs_delay=0.25, interleave=1
        )
        tr.write(b"he")
        await client.received(2)
        tr.close()
        await client.lost
        await (await srv.peer()).lost
        await srv.close()

    run(loop, main())


def test_connect_accepted_socket(loop):
    async def main():
        lsock = socket.create_server((LOCAL4, 0))
        try:
            tr, client = await loop.create_connection(Peer, *lsock.getsockname())
            conn, _ = lsock.accept()  # already in the accept queue
        finally:
            lsock.close()
        str_, server_side = await loop.connect_accepted_socket(lambda: Peer(echo=True), conn)
        assert server_side.transport is str_
        assert str_.get_extra_info("peername") == tr.get_extra_info("sockname")
        tr.write(b"accepted")
        await client.received(8)
        tr.close()
        await client.lost
        assert await server_side.lost is None
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            with pytest.raises(ValueError):
                await loop.connect_accepted_socket(asyncio.Protocol, s)
        return client.data

    assert run(loop, main()) == b"accepted"


# --------------------------------------------------------------------------- servers


def test_server_object_api(loop):
    async def main():
        srv = await listen(echo=True)
        server = srv.server
        assert server.get_loop() is loop
        assert server.is_serving()
        [sock] = server.sockets
        assert sock.family == socket.AF_INET and sock.type == socket.SOCK_STREAM
        host, port = sock.getsockname()
        assert host == LOCAL4
        tr, client = await connect((host, port))
        tr.write(b"x")
        await client.received(1)
        tr.close()
        await client.lost
        await (await srv.peer()).lost
        server.close()
        assert not server.is_serving()
        await server.wait_closed()
        assert tuple(server.sockets) == ()
        server.close()  # idempotent
        await server.wait_closed()
        with pytest.raises(ConnectionRefusedError):
            await loop.create_connection(asyncio.Protocol, host, port)

    run(loop, main())


def test_server_start_serving_false(loop):
    async def main():
        peers = Peers(echo=True)
        server = await loop.create_server(peers, LOCAL4, 0, start_serving=False)
        assert not server.is_serving()
        host, port = server.sockets[0].getsockname()
        with pytest.raises(ConnectionRefusedError):  # bound, not listening
            await loop.create_connection(asyncio.Protocol, host, port)
        await server.start_serving()
        assert server.is_serving()
        await server.start_serving()  # a second call changes nothing
        tr, client = await loop.create_connection(Peer, host, port)
        tr.write(b"ok")
        await client.received(2)
        tr.close()
        await client.lost
        await peers.all_lost()
        assert len(peers) == 1
        server.close()
        await server.wait_closed()

    run(loop, main())


def test_server_serve_forever_cancelled(loop):
    async def main():
        srv = await listen(echo=True)
        server = srv.server
        task = asyncio.create_task(server.serve_forever())
        await asyncio.sleep(0)
        assert server.is_serving()
        with pytest.raises(RuntimeError):  # already being awaited on serve_forever()
            await server.serve_forever()
        tr, client = await connect(srv.addr)
        tr.write(b"sf")
        await client.received(2)
        tr.close()
        await client.lost
        await (await srv.peer()).lost
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert not server.is_serving()  # serve_forever closes the server when cancelled
        await server.wait_closed()
        with pytest.raises(ConnectionRefusedError):
            await loop.create_connection(asyncio.Protocol, *srv.addr)

    run(loop, main())


def test_server_async_with(loop):
    async def main():
        peers = Peers(echo=True)
        server = await loop.create_server(peers, LOCAL4, 0)
        addr = server.sockets[0].getsockname()
        async with server as entered:
            assert entered is server
            assert server.is_serving()
            tr, client = await loop.create_connection(Peer, *addr)
            tr.write(b"aw")
            await client.received(2)
            tr.close()
            await client.lost
            await peers.all_lost()
        assert not server.is_serving()
        assert tuple(server.sockets) == ()
        with pytest.raises(ConnectionRefusedError):
            await loop.create_connection(asyncio.Protocol, *addr)

    run(loop, main())


def test_server_sock_and_backlog(loop):
    async def main():
        lsock = socket.socket()
        lsock.bind((LOCAL4, 0))
        peers = Peers(echo=True)
        server = await loop.create_server(peers, sock=lsock, backlog=5)
        assert server.sockets[0].getsockname() == lsock.getsockname()
        tr, client = await loop.create_connection(Peer, *lsock.getsockname())
        tr.write(b"sock")
        await client.received(4)
        tr.close()
        await client.lost
        await peers.all_lost()
        server.close()
        await server.wait_closed()
        assert lsock.fileno() == -1  # the server closed it

    run(loop, main())


def test_server_reuse_port(loop):
    if not hasattr(socket, "SO_REUSEPORT"):
        pytest.skip("no SO_REUSEPORT")

    async def main():
        a = await loop.create_server(asyncio.Protocol, LOCAL4, 0, reuse_port=True)
        port = a.sockets[0].getsockname()[1]
        b = await loop.create_server(asyncio.Protocol, LOCAL4, port, reuse_port=True)
        assert b.sockets[0].getsockname()[1] == port
        with pytest.raises(OSError) as info:  # the same port without SO_REUSEPORT
            await loop.create_server(asyncio.Protocol, LOCAL4, port)
        assert info.value.errno == errno.EADDRINUSE
        for s in (a, b):
            s.close()
            await s.wait_closed()

    run(loop, main())


@needs_ipv6
def test_server_several_hosts(loop):
    async def main():
        peers = Peers(echo=True)
        server = await loop.create_server(peers, [LOCAL4, LOCAL6], 0)
        families = sorted(s.family for s in server.sockets)
        assert families == sorted([socket.AF_INET, socket.AF_INET6])
        for s in server.sockets:
            tr, client = await loop.create_connection(Peer, *s.getsockname()[:2])
            tr.write(b"multi")
            await client.received(5)
            tr.close()
            await client.lost
        await peers.all_lost()
        assert len(peers) == 2
        server.close()
        await server.wait_closed()

    run(loop, main())


@needs_313
def test_server_close_and_abort_clients(loop):
    async def main():
        srv = await listen()
        conns = [await connect(srv.addr) for _ in range(4)]
        await srv.peer(3)
        srv.server.close()
        srv.server.close_clients()
        for tr, client in conns[:4]:
            await client.eof
            tr.close()
        await srv.server.wait_closed()
        srv2 = await listen(pause_on_connect=True)
        tr, client = await connect(srv2.addr)
        await srv2.peer()
        srv2.server.close()
        srv2.server.abort_clients()
        assert await srv2.peers[0].lost is None
        await client.lost
        await srv2.server.wait_closed()

    run(loop, main())


# --------------------------------------------------------------------------- IPv6, Unix


@needs_ipv6
def test_ipv6_addresses(loop):
    async def main():
        srv = await listen("ipv6", echo=True)
        host, port, flowinfo, scope_id = srv.addr
        assert host == LOCAL6
        tr, client = await loop.create_connection(Peer, LOCAL6, port)
        assert tr.get_extra_info("socket").family == socket.AF_INET6
        assert tr.get_extra_info("peername")[:2] == (LOCAL6, port)
        server_side = await srv.peer()
        assert server_side.transport.get_extra_info("peername") == tr.get_extra_info("sockname")
        tr.write(b"v6")
        await client.received(2)
        tr.close()
        await client.lost
        await server_side.lost
        await srv.close()

    run(loop, main())


def test_unix_server_and_connection(loop, unix_dir):
    path = os.path.join(unix_dir, "echo.sock")

    async def main():
        tasks = []

        async def handler(reader, writer):
            tasks.append(asyncio.current_task())
            await stream_echo(reader, writer)

        server = await asyncio.start_unix_server(handler, path)
        assert os.path.exists(path)
        assert server.sockets[0].family == socket.AF_UNIX
        assert server.sockets[0].getsockname() == path
        reader, writer = await asyncio.open_unix_connection(path)
        assert writer.get_extra_info("peername") == path
        assert writer.get_extra_info("socket").family == socket.AF_UNIX
        writer.write(b"unix")
        assert await reader.readexactly(4) == b"unix"
        writer.close()
        await writer.wait_closed()
        await asyncio.gather(*tasks)
        server.close()
        await server.wait_closed()

    run(loop, main())
    # 3.13 removes the socket file when the server closes (cleanup_socket=True).
    assert os.path.exists(path) == (not PY313)


def test_unix_server_replaces_stale_socket_file(loop, unix_dir):
    path = os.path.join(unix_dir, "stale.sock")
    with socket.socket(socket.AF_UNIX) as stale:  # left behind by a dead server
        stale.bind(path)

    async def main():
        peers = Peers(echo=True)
        server = await loop.create_unix_server(peers, path)
        tr, client = await loop.create_unix_connection(Peer, path)
        tr.write(b"fresh")
        await client.received(5)
        tr.close()
        await client.lost
        await peers.all_lost()
        server.close()
        await server.wait_closed()

    run(loop, main())


def test_unix_server_refuses_regular_file(loop, unix_dir):
    path = os.path.join(unix_dir, "file")
    with open(path, "w") as f:
        f.write("not a socket")

    async def main():
        with pytest.raises(OSError) as info:
            await loop.create_unix_server(asyncio.Protocol, path)
        assert info.value.errno == errno.EADDRINUSE

    run(loop, main())
    with open(path) as f:
        assert f.read() == "not a socket"


def test_unix_abstract_name(loop):
    name = f"\0ferroloop-test-{os.getpid()}-{random.randrange(10**9)}"

    async def main():
        peers = Peers(echo=True)
        server = await loop.create_unix_server(peers, name)
        assert server.sockets[0].getsockname() == name.encode()
        tr, client = await loop.create_unix_connection(Peer, name)
        tr.write(b"abstract")
        await client.received(8)
        tr.close()
        await client.lost
        await peers.all_lost()
        server.close()
        await server.wait_closed()

    run(loop, main())


# --------------------------------------------------------------------------- sock_* API


def _socket_pair_via_loop(loop, family=socket.AF_INET):
    """A connected pair of non-blocking sockets made with sock_accept and sock_connect."""

    async def make():
        lsock = socket.socket(family, socket.SOCK_STREAM)
        lsock.bind((LOCAL4 if family == socket.AF_INET else LOCAL6, 0))
        lsock.listen()
        lsock.setblocking(False)
        csock = socket.socket(family, socket.SOCK_STREAM)
        csock.setblocking(False)
        try:
            accepting = asyncio.create_task(loop.sock_accept(lsock))
            await asyncio.sleep(0)
            assert await loop.sock_connect(csock, lsock.getsockname()) is None
            conn, addr = await accepting
        except BaseException:
            csock.close()
            raise
        finally:
            lsock.close()
        assert addr == csock.getsockname()
        assert conn.gettimeout() == 0  # non-blocking, as asyncio hands it out
        return csock, conn

    return make()


def test_sock_api_round_trip(loop):
    payload = pattern(MiB, seed=12)

    async def main():
        csock, conn = await _socket_pair_via_loop(loop)
        with csock, conn:
            sending = asyncio.create_task(loop.sock_sendall(csock, payload))
            got = bytearray()
            buf = bytearray(48 * KiB)
            while len(got) < len(payload):
                if len(got) % 2:
                    got += await loop.sock_recv(conn, 32 * KiB)
                else:
                    n = await loop.sock_recv_into(conn, buf)
                    got += buf[:n]
            assert await sending is None
            # and back, and EOF
            await loop.sock_sendall(conn, b"pong")
            assert await loop.sock_recv(csock, 4) == b"pong"
            csock.shutdown(socket.SHUT_WR)
            assert await loop.sock_recv(conn, 10) == b""
            return got

    check_bytes(run(loop, main()), payload)


@needs_ipv6
def test_sock_api_ipv6(loop):
    async def main():
        csock, conn = await _socket_pair_via_loop(loop, socket.AF_INET6)
        with csock, conn:
            await loop.sock_sendall(csock, b"six")
            assert await loop.sock_recv(conn, 3) == b"six"

    run(loop, main())


def test_sock_connect_refused(loop):
    async def main():
        with socket.socket() as probe:
            probe.bind((LOCAL4, 0))
            addr = probe.getsockname()
            with socket.socket() as s:
                s.setblocking(False)
                with pytest.raises(ConnectionRefusedError):
                    await loop.sock_connect(s, addr)

    run(loop, main())


def test_sock_recv_cancelled_then_reused(loop):
    async def main():
        csock, conn = await _socket_pair_via_loop(loop)
        with csock, conn:
            t = asyncio.create_task(loop.sock_recv(conn, 10))
            await asyncio.sleep(0.01)
            t.cancel()
            with pytest.raises(asyncio.CancelledError):
                await t
            await loop.sock_sendall(csock, b"after")
            assert await loop.sock_recv(conn, 10) == b"after"

    run(loop, main())


SOCK_CALLS = {
    "sock_recv": lambda lp, s: lp.sock_recv(s, 10),
    "sock_recv_into": lambda lp, s: lp.sock_recv_into(s, bytearray(10)),
    "sock_sendall": lambda lp, s: lp.sock_sendall(s, b"x"),
    "sock_connect": lambda lp, s: lp.sock_connect(s, (LOCAL4, 9)),
    "sock_accept": lambda lp, s: lp.sock_accept(s),
}


@pytest.mark.parametrize("call", list(SOCK_CALLS))
def test_sock_api_rejects_blocking_socket_in_debug_mode(loop, call):
    """asyncio checks for a blocking socket in debug mode only."""
    loop.set_debug(True)

    async def main():
        with socket.socket() as s:
            assert s.gettimeout() is None  # blocking
            with pytest.raises(ValueError, match="non-blocking"):
                await SOCK_CALLS[call](loop, s)

    run(loop, main())


@needs_311
def test_sock_udp_api(loop):
    async def main():
        a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        with a, b:
            for s in (a, b):
                s.bind((LOCAL4, 0))
                s.setblocking(False)
            await loop.sock_sendto(a, b"dgram", b.getsockname())
            data, addr = await loop.sock_recvfrom(b, 100)
            assert (data, addr) == (b"dgram", a.getsockname())
            await loop.sock_sendto(b, b"back", a.getsockname())
            buf = bytearray(100)
            n, addr = await loop.sock_recvfrom_into(a, buf)
            assert (bytes(buf[:n]), addr) == (b"back", b.getsockname())

    run(loop, main())


# --------------------------------------------------------------------------- DNS


@pytest.mark.parametrize(
    "host,port,family",
    [
        (LOCAL4, 80, socket.AF_UNSPEC),
        (LOCAL4, "8080", socket.AF_INET),
        (LOCAL4, 0, socket.AF_INET),
        pytest.param(LOCAL6, 443, socket.AF_UNSPEC, marks=needs_ipv6),
        pytest.param(LOCAL6, "443", socket.AF_INET6, marks=needs_ipv6),
        (None, 1234, socket.AF_INET),
    ],
)
def test_getaddrinfo_numeric(loop, host, port, family):
    async def main():
        got = await loop.getaddrinfo(host, port, family=family, type=socket.SOCK_STREAM)
        want = socket.getaddrinfo(host, port, family, socket.SOCK_STREAM)
        assert sorted(got) == sorted(want)
        got = await loop.getaddrinfo(
            host, port, family=family, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
        want = socket.getaddrinfo(host, port, family, socket.SOCK_STREAM, 0, socket.AI_PASSIVE)
        assert sorted(got) == sorted(want)

    run(loop, main())


def test_getaddrinfo_error(loop):
    async def main():
        with pytest.raises(socket.gaierror):
            await loop.getaddrinfo("127.0.0.1", "no-such-service-xyz", type=socket.SOCK_STREAM)

    run(loop, main())


def test_getnameinfo_numeric(loop):
    async def main():
        flags = socket.NI_NUMERICHOST | socket.NI_NUMERICSERV
        assert await loop.getnameinfo((LOCAL4, 8080), flags) == (LOCAL4, "8080")

    run(loop, main())


# --------------------------------------------------------------------------- TLS

# A self-signed certificate for localhost, 127.0.0.1 and ::1 (P-256, valid 2026-2126),
# made with: openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes
#   -days 36500 -subj /CN=localhost -addext subjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1
TLS_CERT = """\
-----BEGIN CERTIFICATE-----
MIIBrTCCAVSgAwIBAgIUKP5RYoABPc2o9KQ51DE7KZHa7TcwCgYIKoZIzj0EAwIw
FDESMBAGA1UEAwwJbG9jYWxob3N0MCAXDTI2MTEyNTAxMjMyMFoYDzIxMjYxMTAx
MDEyMzIwWjAUMRIwEAYDVQQDDAlsb2NhbGhvc3QwWTATBgcqhkjOPQIBBggqhkjO
PQMBBwNCAATEl/OV/tOABf/wBsuAZW1xImruoD6qCUdCHvLUe74Af/jfpDd2xCqL
dcMPrpRgpQUkopeFmjsfODogsx1Uf9alo4GBMH8wHQYDVR0OBBYEFM6IDD3ewRZL
QHppCSOP9uPw7xhFMB8GA1UdIwQYMBaAFM6IDD3ewRZLQHppCSOP9uPw7xhFMA8G
A1UdEwEB/wQFMAMBAf8wLAYDVR0RBCUwI4IJbG9jYWxob3N0hwR/AAABhxAAAAAA
AAAAAAAAAAAAAAABMAoGCCqGSM49BAMCA0cAMEQCIFyn1nrCIb+M0ZZ2EtA2QI/r
bEX6XI7WBqeN/GayFBtyAiB1nVGIeABxByeniapoLMkLPbqXb8e03ol/xnPdwFB2
og==
-----END CERTIFICATE-----
"""
TLS_KEY = """\
-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg90lC1GimQ5UR9MNq
cllZCYAweyihA8jC/yWQmbpS+LOhRANCAATEl/OV/tOABf/wBsuAZW1xImruoD6q
CUdCHvLUe74Af/jfpDd2xCqLdcMPrpRgpQUkopeFmjsfODogsx1Uf9al
-----END PRIVATE KEY-----
"""


@pytest.fixture
def tls_contexts(tmp_path):
    """(server context, client context) trusting the test certificate."""
    import ssl

    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.write_text(TLS_CERT)
    key.write_text(TLS_KEY)
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(cert, key)
    client_ctx = ssl.create_default_context(cafile=str(cert))
    return server_ctx, client_ctx


def test_tls_streams_round_trip(loop, tls_contexts):
    server_ctx, client_ctx = tls_contexts
    payload = pattern(MiB, seed=20)

    async def main():
        server = StreamServer(stream_echo)
        server.server = await asyncio.start_server(server._serve, LOCAL4, 0, ssl=server_ctx)
        addr = server.server.sockets[0].getsockname()
        reader, writer = await asyncio.open_connection(*addr, ssl=client_ctx)
        assert writer.get_extra_info("ssl_object") is not None
        assert writer.get_extra_info("peercert")["subject"] == ((("commonName", "localhost"),),)
        assert writer.get_extra_info("peername") == addr
        writer.write(payload)
        got = await reader.readexactly(len(payload))
        writer.close()
        await writer.wait_closed()
        await server.close()
        return got

    check_bytes(run(loop, main()), payload)


def test_start_tls_upgrade(loop, tls_contexts):
    """A plain connection upgraded in place with loop.start_tls() on both ends."""
    server_ctx, client_ctx = tls_contexts
    request, reply = pattern(256 * KiB, seed=21), pattern(300 * KiB, seed=22)

    async def main():
        srv = await listen()
        tr, client = await connect(srv.addr)
        server_side = await srv.peer()
        tr.write(b"STARTTLS\n")
        await server_side.received(9)
        server_side.transport.write(b"OK\n")
        await client.received(3)
        server_tls, client_tls = await asyncio.gather(
            loop.start_tls(server_side.transport, server_side, server_ctx, server_side=True),
            loop.start_tls(tr, client, client_ctx, server_hostname=LOCAL4),
        )
        assert client_tls.get_extra_info("ssl_object") is not None
        client_tls.write(request)
        await server_side.received(9 + len(request))
        server_tls.write(reply)
        await client.received(3 + len(reply))
        client_tls.close()
        await client.lost
        server_tls.close()
        await server_side.lost
        await srv.close()
        return bytes(server_side.data[9:]), bytes(client.data[3:])

    got_request, got_reply = run(loop, main())
    check_bytes(got_request, request)
    check_bytes(got_reply, reply)


# --------------------------------------------------------------------------- sendfile


@pytest.fixture
def mib_file(tmp_path):
    data = pattern(MiB, seed=13)
    path = tmp_path / "payload.bin"
    path.write_bytes(data)
    return path, data


def test_loop_sendfile(loop, mib_file):
    path, data = mib_file

    async def main():
        srv = await listen()
        tr, client = await connect(srv.addr)
        server_side = await srv.peer()
        with open(path, "rb") as f:
            assert await loop.sendfile(tr, f) == len(data)
            assert f.tell() == len(data)
            assert await loop.sendfile(tr, f, offset=1000, count=5000) == 5000
            assert f.tell() == 6000
        with open(path) as text:
            with pytest.raises(ValueError):  # text mode
                await loop.sendfile(tr, text)
        tr.write(b"tail")  # the transport still works afterwards
        await server_side.received(len(data) + 5000 + 4)
        tr.close()
        await client.lost
        await server_side.lost
        await srv.close()
        return server_side.data

    check_bytes(run(loop, main()), data + data[1000:6000] + b"tail")


def test_loop_sendfile_with_pending_writes(loop, mib_file):
    """sendfile after write(): the written bytes go first, then the file."""
    path, data = mib_file
    head = pattern(3 * MiB, seed=14)

    async def main():
        srv = await listen()
        tr, client = await connect(srv.addr)
        server_side = await srv.peer()
        tr.write(head)
        with open(path, "rb") as f:
            assert await loop.sendfile(tr, f) == len(data)
        await server_side.received(len(head) + len(data))
        tr.close()
        await client.lost
        await server_side.lost
        await srv.close()
        return server_side.data

    check_bytes(run(loop, main()), head + data)


def test_sock_sendfile(loop, mib_file):
    path, data = mib_file

    async def main():
        csock, conn = await _socket_pair_via_loop(loop)
        with csock, conn:
            with open(path, "rb") as f:
                sending = asyncio.create_task(loop.sock_sendfile(csock, f))
                got = bytearray()
                while len(got) < len(data):
                    got += await loop.sock_recv(conn, 64 * KiB)
                assert await sending == len(data)
                assert f.tell() == len(data)
                assert await loop.sock_sendfile(csock, f, 10, 90) == 90
                more = bytearray()
                while len(more) < 90:
                    more += await loop.sock_recv(conn, 64 * KiB)
            return bytes(got + more)

    check_bytes(run(loop, main()), data + data[10:100])


def test_sock_sendfile_edges(loop, mib_file, tmp_path):
    """The native path's edges: an empty file, a count past the end, a file without
    fileno() (falls back, or SendfileNotAvailableError without fallback), a peer that
    goes away mid-way, and a cancelled call."""
    path, data = mib_file
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    big = tmp_path / "big"
    big.write_bytes(pattern(MiB, seed=3) * 32)  # more than the socket buffers take

    async def main():
        csock, conn = await _socket_pair_via_loop(loop)
        with csock, conn:
            with open(empty, "rb") as f:
                assert await loop.sock_sendfile(csock, f) == 0
            with open(path, "rb") as f:
                assert await loop.sock_sendfile(csock, f, len(data) - 10, 100) == 10
                assert f.tell() == len(data)
            got = b""
            while len(got) < 10:
                got += await loop.sock_recv(conn, 100)
            assert got == data[-10:]
            buffered = io.BytesIO(b"through a pipe")  # no fileno()
            with pytest.raises(asyncio.SendfileNotAvailableError):
                await loop.sock_sendfile(csock, buffered, fallback=False)
            assert await loop.sock_sendfile(csock, buffered) == len(b"through a pipe")
            got = b""
            while len(got) < 14:
                got += await loop.sock_recv(conn, 100)
            assert got == b"through a pipe"
            # Cancelled while waiting for the socket: the file stays after the bytes sent.
            with open(big, "rb") as f:
                sending = asyncio.create_task(loop.sock_sendfile(csock, f))
                await asyncio.sleep(0.05)
                sending.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await sending
                # Some bytes went, not all; asyncio leaves the file position alone.
                assert f.tell() == 0
                assert 0 < len(await loop.sock_recv(conn, MiB))
        csock2, conn2 = await _socket_pair_via_loop(loop)
        with csock2, open(big, "rb") as f:
            sending = asyncio.create_task(loop.sock_sendfile(csock2, f))
            await asyncio.sleep(0.05)
            reset(conn2)
            with pytest.raises(OSError) as info:
                await sending
            assert info.value.errno in (errno.EPIPE, errno.ECONNRESET)

    run(loop, main())


# --------------------------------------------------------------------------- UDP


class DatagramEcho(asyncio.DatagramProtocol):
    def connection_made(self, transport):
        self.transport = transport

    def datagram_received(self, data, addr):
        self.transport.sendto(data, addr)


class DatagramClient(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.queue: asyncio.Queue[tuple[bytes, Any]] = asyncio.Queue()
        self.lost = asyncio.get_running_loop().create_future()

    def datagram_received(self, data, addr):
        self.queue.put_nowait((data, addr))

    def connection_lost(self, exc):
        self.lost.set_result(exc)


def test_udp_echo(loop):
    async def main():
        server_tr, _ = await loop.create_datagram_endpoint(DatagramEcho, local_addr=(LOCAL4, 0))
        server_addr = server_tr.get_extra_info("sockname")
        assert server_addr[0] == LOCAL4
        tr, client = await loop.create_datagram_endpoint(DatagramClient, remote_addr=server_addr)
        assert tr.get_extra_info("peername") == server_addr
        assert tr.get_extra_info("socket").type == socket.SOCK_DGRAM
        for i, size in enumerate([1, 100, 1400, 9000, 65000]):
            msg = pattern(size, seed=100 + i)
            tr.sendto(msg)
            data, addr = await client.queue.get()
            assert addr == server_addr
            check_bytes(data, msg)  # datagram boundaries kept
        with pytest.raises(ValueError):  # a connected endpoint only sends to its peer
            tr.sendto(b"x", (LOCAL4, 9))
        tr.close()
        assert await client.lost is None
        server_tr.close()

    run(loop, main())


def test_udp_unconnected_sendto(loop):
    async def main():
        server_tr, _ = await loop.create_datagram_endpoint(DatagramEcho, local_addr=(LOCAL4, 0))
        server_addr = server_tr.get_extra_info("sockname")
        tr, client = await loop.create_datagram_endpoint(DatagramClient, local_addr=(LOCAL4, 0))
        for i in range(20):
            tr.sendto(b"%d" % i, server_addr)
        got = sorted([int((await client.queue.get())[0]) for _ in range(20)])
        assert got == list(range(20))
        tr.close()
        await client.lost
        server_tr.close()
        await asyncio.sleep(0)

    run(loop, main())


def test_udp_error_received(loop):
    """A datagram to a closed port: the connected endpoint gets error_received with the
    ConnectionRefusedError and stays open."""

    class Errors(DatagramClient):
        def __init__(self) -> None:
            super().__init__()
            self.errors: asyncio.Queue[Exception] = asyncio.Queue()

        def error_received(self, exc):
            self.errors.put_nowait(exc)

    async def main():
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.bind((LOCAL4, 0))
            closed = probe.getsockname()
        tr, client = await loop.create_datagram_endpoint(Errors, remote_addr=closed)
        tr.sendto(b"anyone?")
        exc = await client.errors.get()
        assert isinstance(exc, ConnectionRefusedError), repr(exc)
        assert not tr.is_closing()
        tr.close()
        assert await client.lost is None

    run(loop, main())


def test_udp_endpoint_from_sock(loop):
    async def main():
        server_tr, _ = await loop.create_datagram_endpoint(DatagramEcho, local_addr=(LOCAL4, 0))
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((LOCAL4, 0))
        sock.connect(server_tr.get_extra_info("sockname"))
        tr, client = await loop.create_datagram_endpoint(DatagramClient, sock=sock)
        assert tr.get_extra_info("socket").fileno() == sock.fileno()
        tr.sendto(b"from sock=")
        assert (await client.queue.get())[0] == b"from sock="
        tr.close()
        await client.lost
        server_tr.close()
        await asyncio.sleep(0)

    run(loop, main())


@needs_313
def test_server_keep_alive(loop):
    """create_server(keep_alive=True) (3.13) turns SO_KEEPALIVE on for the listening
    socket, so accepted connections have it too."""

    async def main():
        accepted = loop.create_future()

        class Proto(asyncio.Protocol):
            def connection_made(self, transport):
                accepted.set_result(transport)

        for keep_alive in (True, False):
            accepted = loop.create_future()
            server = await loop.create_server(Proto, LOCAL4, 0, keep_alive=keep_alive)
            async with server:
                lsock = server.sockets[0]
                keepalive = lsock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE)
                assert bool(keepalive) is keep_alive
                port = lsock.getsockname()[1]
                tr, _ = await loop.create_connection(asyncio.Protocol, LOCAL4, port)
                peer = await accepted
                conn = peer.get_extra_info("socket")
                keepalive = conn.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE)
                assert bool(keepalive) is keep_alive
                tr.close()
                peer.close()

    run(loop, main())
