"""A stream transport's start and end as asyncio's: the addresses it reports, its methods
reached through the instance, the class and a subclass, the fd refused to `add_reader`
while the transport is open and given back once it closes, and its server's count of
connections (ferroloop does this natively: src/transports/stream/setup.rs,
src/loop_core/registry.rs, src/transports/core_method.rs)."""

from __future__ import annotations

import asyncio
import socket
import sys

import pytest
from helpers import LOCAL, run


class Echo(asyncio.Protocol):
    def __init__(self) -> None:
        loop = asyncio.get_running_loop()
        self.made = loop.create_future()
        self.lost = loop.create_future()

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.made.set_result(None)

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)

    def connection_lost(self, exc) -> None:
        if not self.lost.done():
            self.lost.set_result(exc)


async def serve_one(loop, client_host: str):
    """A server on 127.0.0.1 and one client bound to `client_host`: (server protocol,
    client socket, server)."""
    protos: list[Echo] = []

    def factory() -> Echo:
        protos.append(Echo())
        return protos[-1]

    srv = await loop.create_server(factory, LOCAL, 0)
    c = socket.socket()
    c.setblocking(False)
    c.bind((client_host, 0))
    await loop.sock_connect(c, srv.sockets[0].getsockname())
    while not protos:
        await asyncio.sleep(0)
    await protos[0].made
    return protos[0], c, srv


async def shut(proto: Echo, c: socket.socket, srv) -> None:
    """Ends what serve_one() made: the client, its server-side connection, the server."""
    c.close()
    await proto.lost
    srv.close()
    await srv.wait_closed()


# Octets of one, two and three digits, and zeros, in every position (all of 127/8 is
# loopback on Linux).
@pytest.mark.parametrize("host", ["127.0.0.1", "127.10.200.3", "127.255.0.99", "127.1.20.255"])
def test_addresses_of_an_accepted_connection(loop, host):
    async def main():
        proto, c, srv = await serve_one(loop, host)
        tr = proto.transport
        try:
            assert tr.get_extra_info("peername") == c.getsockname()
            assert tr.get_extra_info("peername")[0] == host
            assert tr.get_extra_info("sockname") == srv.sockets[0].getsockname()
        finally:
            await shut(proto, c, srv)

    run(loop, main())


def test_methods_through_instance_class_and_subclass(loop):
    """`transport.write`, `type(transport).write(transport, ...)`, and a subclass's
    override that calls `super().write`, which stays in force after that call."""

    async def main():
        proto, c, srv = await serve_one(loop, LOCAL)
        tr = proto.transport
        cls = type(tr)
        seen: list[bytes] = []

        async def echo_of(data: bytes) -> bytes:
            await loop.sock_sendall(c, data)
            got = b""
            while len(got) < len(data):
                got += await loop.sock_recv(c, 100)
            return got

        try:
            # The subclass first (ferroloop keeps a method bound on the instance once
            # used, which a later `__class__` change does not undo: README Differences).
            class Counting(cls):  # type: ignore[misc,valid-type]
                def write(self, data):
                    seen.append(bytes(data))
                    super().write(data)

            tr.__class__ = Counting
            assert await echo_of(b"one") == b"one"
            assert await echo_of(b"two") == b"two"
            assert seen == [b"one", b"two"]
            tr.__class__ = cls
            tr.write(b"a")
            cls.write(tr, b"b")
            got = b""
            while len(got) < 2:
                got += await loop.sock_recv(c, 100)
            assert got == b"ab"
            assert cls.is_closing(tr) is False
            assert tr.get_write_buffer_size() == 0
            assert seen == [b"one", b"two"]
        finally:
            await shut(proto, c, srv)

    run(loop, main())


@pytest.mark.skipif(sys.version_info < (3, 12), reason="asyncio 3.12+ checks the fd")
def test_fd_of_an_open_transport_is_refused_then_free(loop):
    async def main():
        proto, c, srv = await serve_one(loop, LOCAL)
        tr = proto.transport
        fd = tr.get_extra_info("socket").fileno()
        with pytest.raises(RuntimeError, match=f"File descriptor {fd} is used by transport"):
            loop.add_reader(fd, lambda: None)
        with pytest.raises(RuntimeError, match="is used by transport"):
            await loop.sock_recv(tr.get_extra_info("socket")._sock, 10)
        tr.close()  # closing: no longer refused, as asyncio
        loop.add_reader(fd, lambda: None)
        assert loop.remove_reader(fd)
        await proto.lost
        # The fd number's next owner is free of the old transport.
        a, b = socket.socketpair()
        try:
            loop.add_reader(a.fileno(), lambda: None)
            assert loop.remove_reader(a.fileno())
        finally:
            a.close()
            b.close()
            c.close()
            srv.close()
            await srv.wait_closed()

    run(loop, main())


def test_server_counts_its_connections(loop):
    """`wait_closed()` waits for the connections (3.12+), each detached once when lost,
    whether closed by the server or by the peer."""

    async def main():
        protos: list[Echo] = []

        def factory() -> Echo:
            protos.append(Echo())
            return protos[-1]

        srv = await loop.create_server(factory, LOCAL, 0)
        addr = srv.sockets[0].getsockname()
        clients = []
        for _ in range(3):
            c = socket.socket()
            c.setblocking(False)
            await loop.sock_connect(c, addr)
            clients.append(c)
        while len(protos) < 3:
            await asyncio.sleep(0)
        await asyncio.gather(*(p.made for p in protos))
        srv.close()
        waiting = asyncio.ensure_future(srv.wait_closed())
        protos[0].transport.close()  # by the server
        clients[1].close()  # by the peer
        await protos[0].lost
        await protos[1].lost
        await asyncio.sleep(0.05)
        if sys.version_info >= (3, 12):
            assert not waiting.done()
        protos[2].transport.abort()
        await protos[2].lost
        await asyncio.wait_for(waiting, 5)
        for c in clients:
            c.close()

    run(loop, main())
