"""Where uvloop's suite (tests/upstream) found that asyncio's behaviour is a bug or a trap
users hit, ferroloop takes the better behaviour (README, "Upstream test suites"). Each test
here runs on both loops: the behaviour asyncio shares with us, asserted on both; what only
ferroloop does, asserted on ferroloop, with the stock param a strict xfail (`asyncio_bug`)
that says what asyncio does instead.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest

pytestmark = pytest.mark.timeout(30)

LOCAL4 = "127.0.0.1"


def asyncio_bug(reason: str) -> pytest.MarkDecorator:
    """Strict xfail on the stock param only: ferroloop must pass."""
    return pytest.mark.parametrize(
        "loop_factory",
        [
            pytest.param(
                "asyncio", marks=pytest.mark.xfail(strict=True, reason=f"asyncio: {reason}")
            ),
            "ferroloop",
        ],
        indirect=True,
    )


def run(loop: asyncio.AbstractEventLoop, coro: Any) -> Any:
    errors: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, ctx: errors.append(ctx))
    result = loop.run_until_complete(asyncio.wait_for(coro, 20))
    assert not errors, f"the exception handler was called: {errors}"
    return result


def nodelay(transport: asyncio.BaseTransport) -> bool:
    sock = transport.get_extra_info("socket")
    return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0


class Recorder(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport


# --------------------------------------------------------------------------- TCP_NODELAY


def test_nodelay_on_sockets_the_loop_makes(loop):
    """create_connection(host, port) and create_server(host, port) make IPPROTO_TCP sockets:
    both loops turn Nagle's algorithm off on every connection."""

    async def main():
        accepted: list[Recorder] = []

        def factory() -> Recorder:
            accepted.append(Recorder())
            return accepted[-1]

        server = await loop.create_server(factory, LOCAL4, 0)
        port = server.sockets[0].getsockname()[1]
        tr, _ = await loop.create_connection(Recorder, LOCAL4, port)
        while not accepted:
            await asyncio.sleep(0.001)
        assert nodelay(tr)
        assert nodelay(accepted[0].transport)
        tr.close()
        accepted[0].transport.close()
        server.close()
        await server.wait_closed()

    run(loop, main())


@asyncio_bug("sets TCP_NODELAY only when sock.proto == IPPROTO_TCP (socket.socket() has 0)")
def test_nodelay_on_plain_sockets_passed_as_sock(loop):
    """uvloop's test_tcp test_create_server_1 / test_create_connection_open_con_sock: a
    listener and a connection made with plain socket.socket() (proto 0, TCP all the same)
    and passed as sock= get TCP_NODELAY on their connections too."""

    async def main():
        listener = socket.socket()
        listener.bind((LOCAL4, 0))
        listener.listen()
        assert listener.proto == 0
        accepted: list[Recorder] = []

        def factory() -> Recorder:
            accepted.append(Recorder())
            return accepted[-1]

        server = await loop.create_server(factory, sock=listener)
        client = socket.socket()
        client.connect(listener.getsockname())
        client.setblocking(False)
        tr, _ = await loop.create_connection(Recorder, sock=client)
        while not accepted:
            await asyncio.sleep(0.001)
        try:
            assert nodelay(tr), "the connection passed as sock="
            assert nodelay(accepted[0].transport), "a connection accepted by a sock= listener"
        finally:
            tr.close()
            accepted[0].transport.close()
            server.close()
            await server.wait_closed()

    run(loop, main())


def test_nodelay_leaves_unix_streams_alone(loop, tmp_path):
    """TCP_NODELAY means nothing to a Unix stream: its transports work and the option is not
    there to read."""

    async def main():
        path = str(tmp_path / "s")
        accepted: list[Recorder] = []

        def factory() -> Recorder:
            accepted.append(Recorder())
            return accepted[-1]

        server = await loop.create_unix_server(factory, path)
        tr, _ = await loop.create_unix_connection(Recorder, path)
        while not accepted:
            await asyncio.sleep(0.001)
        with pytest.raises(OSError):
            nodelay(tr)
        tr.close()
        accepted[0].transport.close()
        server.close()
        await server.wait_closed()

    run(loop, main())


# --------------------------------------------------------------------------- UDP sendto


class Datagrams(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.received: list[bytes] = []
        self.lost = asyncio.get_running_loop().create_future()

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.received.append(data)

    def connection_lost(self, exc: BaseException | None) -> None:
        self.lost.set_result(exc)


async def _receiver(loop: asyncio.AbstractEventLoop) -> tuple[Any, Datagrams]:
    return await loop.create_datagram_endpoint(Datagrams, local_addr=(LOCAL4, 0))


def test_udp_connected_sendto_after_close_is_dropped(loop):
    """A connected endpoint's sendto() after close() sends nothing and raises nothing, before
    connection_lost and after it (both loops)."""

    async def main():
        rx_tr, rx = await _receiver(loop)
        tr, proto = await loop.create_datagram_endpoint(
            Datagrams, remote_addr=rx_tr.get_extra_info("sockname")
        )
        tr.sendto(b"before")
        tr.close()
        tr.sendto(b"closing")
        assert await proto.lost is None
        tr.sendto(b"closed")
        with pytest.raises(TypeError):  # bad input still raises asyncio's TypeError
            tr.sendto("text")
        await asyncio.sleep(0.05)
        assert rx.received == [b"before"]
        rx_tr.close()
        await rx.lost

    run(loop, main())


@asyncio_bug("an unconnected endpoint's sendto() after connection_lost raises AttributeError")
def test_udp_unconnected_sendto_after_close(loop):
    """uvloop's test_udp test_send_after_close: an unconnected endpoint's sendto() after
    close() raises nothing. While the close is pending it still sends, as asyncio does
    (CPython's own test_datagram_write_error_close_from_callback, gh-156920, relies on
    it); once connection_lost has run it drops the datagram."""

    async def main():
        rx_tr, rx = await _receiver(loop)
        addr = rx_tr.get_extra_info("sockname")
        tr, proto = await loop.create_datagram_endpoint(Datagrams, local_addr=(LOCAL4, 0))
        tr.sendto(b"before", addr)
        tr.close()
        try:
            tr.sendto(b"closing", addr)
            await proto.lost
            tr.sendto(b"closed", addr)
            with pytest.raises(TypeError):
                tr.sendto("text", addr)
            await asyncio.sleep(0.05)
            assert rx.received == [b"before", b"closing"]
        finally:
            rx_tr.close()
            await rx.lost

    run(loop, main())


@asyncio_bug("takes the '' peer name of a socketpair for 'not connected': a fatal TypeError")
def test_udp_sendto_on_a_socketpair_endpoint(loop):
    """uvloop's test_udp test_socketpair: an endpoint made with sock= one end of a Unix
    datagram socketpair sends sendto(data) to the other end; its peer name is still ''."""

    async def main():
        s1, s2 = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        with s1, s2:
            tr, proto = await loop.create_datagram_endpoint(Datagrams, sock=s1)
            assert tr.get_extra_info("peername") == ""
            s2.send(b"to the endpoint")
            while not proto.received:
                await asyncio.sleep(0.001)
            assert proto.received == [b"to the endpoint"]
            s2.setblocking(False)
            tr.sendto(b"from the endpoint")
            got = await asyncio.wait_for(loop.sock_recv(s2, 100), 2)
            assert got == b"from the endpoint"
            tr.close()
            await proto.lost

    run(loop, main())
