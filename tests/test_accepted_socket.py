"""An accepted connection's socket (ferroloop makes its object only when it is asked for):
`get_extra_info('socket')` and the other socket keys as asyncio gives them, whenever they
are asked, and the fd closed exactly once, whichever way the connection ends."""

from __future__ import annotations

import asyncio
import gc
import os
import socket
import warnings

import pytest
from helpers import LOCAL, run


class Recorder(asyncio.Protocol):
    """Records its transport; `ask` names when to look at the socket."""

    def __init__(self, ask: str, seen: list) -> None:
        self.ask = ask
        self.seen = seen
        self.lost = asyncio.get_running_loop().create_future()

    def connection_made(self, transport) -> None:
        self.transport = transport
        if self.ask == "made":
            self.seen.append(self.info())

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)

    def info(self) -> dict:
        tr = self.transport
        ts = tr.get_extra_info("socket")
        return {
            "ts": ts,
            "same": ts is tr.get_extra_info("socket"),
            "fileno": ts.fileno(),
            "kind": (ts.family, ts.type, ts.proto),
            "timeout": ts.gettimeout() if ts.fileno() >= 0 else None,
            "sockname": tr.get_extra_info("sockname"),
            "peername": tr.get_extra_info("peername"),
        }

    def connection_lost(self, exc) -> None:
        if self.ask == "after":
            self.seen.append(self.info())
        self.lost.set_result(None)


async def one_connection(loop, ask: str, end: str = "peer"):
    seen: list = []
    protos: list[Recorder] = []

    def factory() -> Recorder:
        protos.append(Recorder(ask, seen))
        return protos[-1]

    srv = await loop.create_server(factory, LOCAL, 0)
    addr = srv.sockets[0].getsockname()
    r, w = await asyncio.open_connection(*addr)
    w.write(b"ping")
    assert await r.readexactly(4) == b"ping"
    client = (w.get_extra_info("sockname"), w.get_extra_info("peername"))
    if end == "peer":
        w.close()
    elif end == "close":
        protos[0].transport.close()
    else:
        protos[0].transport.abort()
    await protos[0].lost
    w.close()
    await w.wait_closed()
    srv.close()
    await srv.wait_closed()
    return seen, client, protos[0].transport


@pytest.mark.parametrize("end", ["peer", "close", "abort"])
def test_socket_asked_while_connected(loop, end):
    seen, (csockname, cpeername), tr = run(loop, one_connection(loop, "made", end))
    (info,) = seen
    assert info["same"]
    assert info["kind"] == (socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    assert info["timeout"] == 0
    assert info["sockname"] == cpeername
    assert info["peername"] == csockname
    # Still there after the connection is lost, closed (asyncio's TransportSocket).
    ts = tr.get_extra_info("socket")
    assert ts is info["ts"]
    assert ts.fileno() == -1


def test_socket_first_asked_after_the_connection_is_lost(loop):
    seen, (csockname, cpeername), tr = run(loop, one_connection(loop, "after"))
    (info,) = seen
    # connection_lost runs before the socket is closed, so it is still open there.
    assert info["fileno"] >= 0 and info["same"]
    assert info["sockname"] == cpeername and info["peername"] == csockname
    ts = tr.get_extra_info("socket")
    assert isinstance(ts, asyncio.trsock.TransportSocket)
    assert ts.fileno() == -1
    assert (ts.family, ts.type) == (socket.AF_INET, socket.SOCK_STREAM)


def test_socket_never_asked_then_asked_once_closed(loop):
    seen, (csockname, cpeername), tr = run(loop, one_connection(loop, "never"))
    assert seen == []
    assert tr.get_extra_info("sockname") == cpeername
    assert tr.get_extra_info("peername") == csockname
    ts = tr.get_extra_info("socket")
    assert isinstance(ts, asyncio.trsock.TransportSocket)
    assert ts.fileno() == -1
    assert ts is tr.get_extra_info("socket")
    assert tr.get_extra_info("socket", "default") is ts
    assert tr.get_extra_info("nothing", "default") == "default"


def test_socket_options_through_the_socket(loop):
    async def main():
        got = loop.create_future()

        class P(asyncio.Protocol):
            def connection_made(self, transport):
                ts = transport.get_extra_info("socket")
                got.set_result(
                    (
                        ts.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY),
                        ts.getsockname() == transport.get_extra_info("sockname"),
                        ts.getpeername() == transport.get_extra_info("peername"),
                    )
                )
                transport.close()

        srv = await loop.create_server(P, LOCAL, 0)
        r, w = await asyncio.open_connection(*srv.sockets[0].getsockname())
        result = await got
        w.close()
        await w.wait_closed()
        srv.close()
        await srv.wait_closed()
        return result

    nodelay, same_name, same_peer = run(loop, main())
    assert nodelay and same_name and same_peer


def test_unix_server_socket_keys(loop, unix_dir):
    path = os.path.join(unix_dir, "s")

    async def main():
        got = loop.create_future()

        class P(asyncio.Protocol):
            def connection_made(self, transport):
                self.t = transport

            def data_received(self, data):
                ts = self.t.get_extra_info("socket")
                got.set_result(
                    (self.t.get_extra_info("sockname"), self.t.get_extra_info("peername"),
                     ts.family, ts.getsockname())
                )  # fmt: skip
                self.t.close()

        srv = await loop.create_unix_server(P, path)
        r, w = await asyncio.open_unix_connection(path)
        w.write(b"x")
        result = await got
        w.close()
        await w.wait_closed()
        srv.close()
        await srv.wait_closed()
        return result

    sockname, peername, family, ts_name = run(loop, main())
    assert sockname == path == ts_name
    assert peername == ""
    assert family == socket.AF_UNIX


def test_many_connections_close_their_fds_exactly_once(loop):
    """Connections whose socket is asked for and ones whose is not, ended every way:
    no fd leaks (the fixture counts them), and none is closed twice (an fd opened after
    each connection ended, likely to reuse its number, stays open)."""

    async def main():
        kept: list[int] = []
        for i in range(60):
            ask = ("made", "never", "after")[i % 3]
            end = ("peer", "close", "abort")[(i // 3) % 3]
            await one_connection(loop, ask, end)
            fd = os.open(os.devnull, os.O_RDONLY)
            kept.append(fd)
            await asyncio.sleep(0)
            await asyncio.sleep(0)
        for fd in kept:
            os.fstat(fd)  # EBADF if a late second close took it
            os.close(fd)

    run(loop, main())


def test_unclosed_accepted_transport_warns_and_closes_its_fd(loop):
    async def main():
        made = loop.create_future()

        class P(asyncio.Protocol):
            def connection_made(self, transport):
                made.set_result(transport)

        srv = await loop.create_server(P, LOCAL, 0)
        r, w = await asyncio.open_connection(*srv.sockets[0].getsockname())
        tr = await made
        srv.close()
        return tr, w

    tr, w = run(loop, main())
    fd = tr._sock_fd
    os.fstat(fd)
    del w
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loop.close()  # the loop lets go of the transport, never closed
        del tr
        gc.collect()
    assert any(
        issubclass(c.category, ResourceWarning) and "unclosed transport" in str(c.message)
        for c in caught
    )
    with pytest.raises(OSError):
        os.fstat(fd)
