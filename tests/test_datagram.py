"""The datagram transport (issue 10): UDP and Unix datagram endpoints, on the stock loop
(the oracle) and on ferroloop. Every endpoint is closed by the test; the `loop` fixture
fails a test that leaks a file descriptor, and the tests that make many endpoints also
check that the transports themselves are freed."""

from __future__ import annotations

import asyncio
import gc
import os
import socket
import sys
import tempfile
import weakref
from typing import Any

import pytest
from helpers import LOCAL, Errors, run

pytestmark = pytest.mark.timeout(60)

PY313 = sys.version_info >= (3, 13)
needs_311 = pytest.mark.skipif(sys.version_info < (3, 11), reason="asyncio 3.10's datagram "
                               "transport cannot pause reading")  # fmt: skip


def _has_ipv6() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


class Echo(asyncio.DatagramProtocol):
    """Sends every datagram back where it came from (an unnamed sender: nowhere)."""

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.lost = asyncio.get_running_loop().create_future()

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if addr is not None:
            self.transport.sendto(data, addr)

    def connection_lost(self, exc: BaseException | None) -> None:
        self.lost.set_result(exc)


class Client(asyncio.DatagramProtocol):
    """Records what it receives, and its errors and flow-control calls."""

    def __init__(self) -> None:
        loop = asyncio.get_running_loop()
        self.received: list[tuple[bytes, Any]] = []
        self.errors: list[BaseException] = []
        self.arrived = asyncio.Event()
        self.error = asyncio.Event()
        self.pauses = 0
        self.resumes = 0
        self.resumed = asyncio.Event()
        self.lost = loop.create_future()

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.received.append((data, addr))
        self.arrived.set()

    def error_received(self, exc: Exception) -> None:
        self.errors.append(exc)
        self.error.set()

    def pause_writing(self) -> None:
        self.pauses += 1

    def resume_writing(self) -> None:
        self.resumes += 1
        self.resumed.set()

    def connection_lost(self, exc: BaseException | None) -> None:
        self.lost.set_result(exc)

    async def wait_for(self, count: int) -> None:
        while len(self.received) < count:
            self.arrived.clear()
            await self.arrived.wait()


async def close(*transports: Any) -> None:
    protocols = [tr.get_protocol() for tr in transports]
    for tr in transports:
        tr.close()
    for proto in protocols:
        await proto.lost


def message(i: int, size: int = 32) -> bytes:
    head = b"%08d|" % i
    return head + bytes((i + k) % 256 for k in range(size - len(head)))


def test_10000_datagrams_round_tripped_and_counted(loop):
    """10,000 datagrams through an echo endpoint, 32 in flight at a time: every one comes
    back intact, from the server's address, and is counted."""
    total, window = 10_000, 32

    async def main():
        server, _ = await loop.create_datagram_endpoint(Echo, local_addr=(LOCAL, 0))
        addr = server.get_extra_info("sockname")
        client, proto = await loop.create_datagram_endpoint(Client, remote_addr=addr)
        sent = 0
        while sent < window:
            client.sendto(message(sent))
            sent += 1
        while len(proto.received) < total:
            proto.arrived.clear()
            await proto.arrived.wait()
            while sent < min(total, len(proto.received) + window):
                client.sendto(message(sent))
                sent += 1
        got = sorted(int(data[:8]) for data, _ in proto.received)
        assert got == list(range(total))
        assert all(data == message(int(data[:8])) for data, _ in proto.received)
        assert {a for _, a in proto.received} == {addr}
        assert proto.errors == []
        await close(client, server)

    run(loop, main())


@pytest.mark.parametrize("size", [1, 1400, 9000, 65507])
def test_big_datagrams(loop, size):
    """Datagrams up to IPv4's 65,507-byte limit arrive whole."""

    async def main():
        server, _ = await loop.create_datagram_endpoint(Echo, local_addr=(LOCAL, 0))
        client, proto = await loop.create_datagram_endpoint(
            Client, remote_addr=server.get_extra_info("sockname")
        )
        data = os.urandom(size)
        client.sendto(data)
        await proto.wait_for(1)
        assert proto.received[0][0] == data
        await close(client, server)

    run(loop, main())


def test_too_big_a_datagram_goes_to_error_received(loop):
    """A datagram over the limit: sendto()'s EMSGSIZE goes to error_received(); the
    endpoint stays open and sends the next one."""

    async def main():
        server, _ = await loop.create_datagram_endpoint(Echo, local_addr=(LOCAL, 0))
        client, proto = await loop.create_datagram_endpoint(
            Client, remote_addr=server.get_extra_info("sockname")
        )
        client.sendto(b"x" * 70_000)
        assert len(proto.errors) == 1 and isinstance(proto.errors[0], OSError)
        assert not client.is_closing()
        client.sendto(b"after")
        await proto.wait_for(1)
        assert proto.received[0][0] == b"after"
        await close(client, server)

    run(loop, main())


def test_icmp_port_unreachable_reaches_error_received(loop):
    """A connected endpoint whose peer has no socket: the ICMP port unreachable comes back
    as ConnectionRefusedError through error_received(), again for each datagram, and the
    endpoint stays open."""

    async def main():
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.bind((LOCAL, 0))
            closed = probe.getsockname()
        client, proto = await loop.create_datagram_endpoint(Client, remote_addr=closed)
        for _ in range(3):
            proto.error.clear()
            client.sendto(b"anyone?")
            await proto.error.wait()
            assert isinstance(proto.errors[-1], ConnectionRefusedError), proto.errors
            assert not client.is_closing()
        assert proto.received == []
        await close(client)

    run(loop, main())


def test_unix_datagrams(loop):
    """Unix datagram endpoints by path: the server sees the client's path as its address
    and answers it; an unnamed sender's address is None."""

    async def main():
        with tempfile.TemporaryDirectory(prefix="fldg-", dir="/tmp") as d:
            spath, cpath = os.path.join(d, "server"), os.path.join(d, "client")
            server, _ = await loop.create_datagram_endpoint(
                Echo, local_addr=spath, family=socket.AF_UNIX
            )
            assert server.get_extra_info("sockname") == spath
            client, proto = await loop.create_datagram_endpoint(
                Client, local_addr=cpath, remote_addr=spath, family=socket.AF_UNIX
            )
            assert client.get_extra_info("peername") == spath
            for i in range(100):
                client.sendto(message(i, 2000))
            await proto.wait_for(100)
            assert [data for data, _ in proto.received] == [message(i, 2000) for i in range(100)]
            assert {a for _, a in proto.received} == {spath}

            class Recorder(Client):
                pass

            rx, rproto = await loop.create_datagram_endpoint(
                Recorder, local_addr=os.path.join(d, "rx"), family=socket.AF_UNIX
            )
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as anon:
                anon.sendto(b"from nobody", os.path.join(d, "rx"))
                await rproto.wait_for(1)
            assert rproto.received == [(b"from nobody", None)]
            await close(client, server, rx)

    run(loop, main())


def test_unix_abstract_names(loop):
    """Linux's abstract namespace: names are bytes starting with NUL, both ways."""

    async def main():
        name = b"\0ferroloop-test-%d-%d" % (os.getpid(), id(loop))
        server, _ = await loop.create_datagram_endpoint(
            Echo, local_addr=name.decode("latin-1"), family=socket.AF_UNIX
        )
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as c:
            c.bind(b"\0ferroloop-client-%d" % os.getpid())
            c.setblocking(False)
            c.sendto(b"ping", name)
            assert await _recvfrom(loop, c) == (b"ping", name)
        await close(server)

    run(loop, main())


async def _recvfrom(loop: Any, sock: socket.socket) -> tuple[bytes, Any]:
    fut = loop.create_future()
    loop.add_reader(sock, lambda: fut.done() or fut.set_result(sock.recvfrom(100)))
    try:
        return await fut  # type: ignore[no-any-return]
    finally:
        loop.remove_reader(sock)


def test_send_storm_fills_the_socket_buffer(loop):
    """A Unix datagram endpoint whose peer does not read: sendto() buffers once the kernel
    refuses more (EAGAIN), pause_writing() past the high mark, resume_writing() once the
    peer reads and the buffer drains; every datagram arrives, in order."""

    async def main():
        with tempfile.TemporaryDirectory(prefix="fldg-", dir="/tmp") as d:
            sink_path = os.path.join(d, "sink")
            sink = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            sink.bind(sink_path)
            sink.setblocking(False)
            client, proto = await loop.create_datagram_endpoint(
                Client, local_addr=os.path.join(d, "src"), remote_addr=sink_path,
                family=socket.AF_UNIX,
            )  # fmt: skip
            client.set_write_buffer_limits(high=64 * 1024)
            sent = 0
            while proto.pauses == 0:
                client.sendto(message(sent, 1024))
                sent += 1
                assert sent < 100_000, "the socket buffer never filled"
            assert client.get_write_buffer_size() > 64 * 1024
            for _ in range(50):  # more while paused: buffered
                client.sendto(message(sent, 1024))
                sent += 1
            got = []
            while len(got) < sent:
                try:
                    got.append(sink.recv(2048))
                except BlockingIOError:
                    await asyncio.sleep(0.001)
            assert got == [message(i, 1024) for i in range(sent)]
            await proto.resumed.wait()
            assert proto.resumes == proto.pauses == 1
            assert client.get_write_buffer_size() == 0
            await close(client)
            sink.close()

    run(loop, main())


def test_many_endpoints_are_released(loop):
    """2,000 endpoints made and closed: fds back to where they were (the fixture checks),
    and the transports and protocols freed."""

    async def main():
        refs = []
        for _ in range(20):
            pairs = [
                await loop.create_datagram_endpoint(Client, local_addr=(LOCAL, 0))
                for _ in range(100)
            ]
            for pair in pairs:
                pair[0].sendto(b"x", pair[0].get_extra_info("sockname"))
            for tr, proto in pairs:
                await proto.wait_for(1)
                refs.append(weakref.ref(tr))
                refs.append(weakref.ref(proto))
            await close(*(tr for tr, _ in pairs))
            del pairs, pair, tr, proto
        await asyncio.sleep(0)
        gc.collect()
        assert [r for r in refs if r() is not None] == []

    run(loop, main())


def test_wrong_addresses(loop):
    """What asyncio does with bad destinations: a connected endpoint refuses another
    address (ValueError); an unconnected one passes it to the socket, whose TypeError is a
    fatal error (reported, transport closed); data must be bytes-like (TypeError)."""

    async def main():
        errors = Errors()
        loop.set_exception_handler(errors)
        server, _ = await loop.create_datagram_endpoint(Echo, local_addr=(LOCAL, 0))
        addr = server.get_extra_info("sockname")
        connected, cproto = await loop.create_datagram_endpoint(Client, remote_addr=addr)
        with pytest.raises(ValueError, match="Invalid address"):
            connected.sendto(b"x", (LOCAL, 9))
        connected.sendto(b"same address", addr)
        connected.sendto(b"equal address", (addr[0], addr[1]))
        await cproto.wait_for(2)
        with pytest.raises(TypeError, match="bytes-like"):
            connected.sendto("text")
        with pytest.raises(TypeError):
            connected.sendto(42)

        free, fproto = await loop.create_datagram_endpoint(Client, local_addr=(LOCAL, 0))
        free.sendto(b"to a name", ("localhost", addr[1]))  # resolved, as asyncio does
        await fproto.wait_for(1)
        free.sendto(b"x", "not a tuple")
        assert isinstance(await fproto.lost, TypeError)
        assert errors.messages() == ["Fatal write error on datagram transport"]

        again, aproto = await loop.create_datagram_endpoint(Client, local_addr=(LOCAL, 0))
        again.sendto(b"x", (LOCAL, 70000))
        assert isinstance(await aproto.lost, OverflowError)
        await close(connected, server)

    run(loop, main())


def test_empty_datagrams(loop):
    """asyncio 3.13+ sends an empty datagram (gh-113812); before, sendto(b'') does
    nothing."""

    async def main():
        server, _ = await loop.create_datagram_endpoint(Echo, local_addr=(LOCAL, 0))
        client, proto = await loop.create_datagram_endpoint(
            Client, remote_addr=server.get_extra_info("sockname")
        )
        client.sendto(b"")
        client.sendto(b"marker")
        await proto.wait_for(2 if PY313 else 1)
        want = [b"", b"marker"] if PY313 else [b"marker"]
        assert [data for data, _ in proto.received] == want
        await close(client, server)

    run(loop, main())


@needs_311
def test_pause_reading_part_way_through_a_burst(loop):
    """pause_reading() from datagram_received() while more datagrams are queued: nothing
    more is delivered until resume_reading(), then the rest, in order."""

    class Pauser(Client):
        def datagram_received(self, data: bytes, addr: Any) -> None:
            super().datagram_received(data, addr)
            if len(self.received) == 1:
                self.transport.pause_reading()

    async def main():
        rx, proto = await loop.create_datagram_endpoint(Pauser, local_addr=(LOCAL, 0))
        assert rx.is_reading()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
            for i in range(10):
                tx.sendto(message(i), rx.get_extra_info("sockname"))
            await proto.wait_for(1)
            await asyncio.sleep(0.05)
            assert len(proto.received) == 1
            assert not rx.is_reading()
            rx.resume_reading()
            await proto.wait_for(10)
        assert [d for d, _ in proto.received] == [message(i) for i in range(10)]
        await close(rx)

    run(loop, main())


def test_datagram_received_exception_loses_nothing(loop):
    """An exception from datagram_received() goes to the exception handler (the callback's
    error, as in asyncio); the endpoint stays open and the other datagrams of the burst
    still arrive."""

    class Failing(Client):
        def datagram_received(self, data: bytes, addr: Any) -> None:
            super().datagram_received(data, addr)
            if len(self.received) == 2:
                raise ZeroDivisionError("boom")

    async def main():
        errors = Errors()
        loop.set_exception_handler(errors)
        rx, proto = await loop.create_datagram_endpoint(Failing, local_addr=(LOCAL, 0))
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
            for i in range(5):
                tx.sendto(message(i), rx.get_extra_info("sockname"))
            await proto.wait_for(5)
        assert [d for d, _ in proto.received] == [message(i) for i in range(5)]
        assert [type(c["exception"]) for c in errors.contexts] == [ZeroDivisionError]
        assert not rx.is_closing()
        await close(rx)

    run(loop, main())


def test_abort_drops_the_buffer(loop):
    """abort() with datagrams buffered: none is sent, connection_lost(None) soon."""

    async def main():
        with tempfile.TemporaryDirectory(prefix="fldg-", dir="/tmp") as d:
            sink = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            sink.bind(os.path.join(d, "sink"))
            client, proto = await loop.create_datagram_endpoint(
                Client, local_addr=os.path.join(d, "src"), remote_addr=os.path.join(d, "sink"),
                family=socket.AF_UNIX,
            )  # fmt: skip
            n = 0
            while client.get_write_buffer_size() == 0:
                client.sendto(message(n, 1024))
                n += 1
            client.abort()
            assert client.is_closing()
            assert await proto.lost is None
            client.abort()
            sink.setblocking(False)
            got = 0
            while True:
                try:
                    sink.recv(2048)
                    got += 1
                except BlockingIOError:
                    break
            assert got < n
            sink.close()

    run(loop, main())


def test_close_flushes_the_buffer(loop):
    """close() with datagrams buffered: they are sent first, then connection_lost."""

    async def main():
        with tempfile.TemporaryDirectory(prefix="fldg-", dir="/tmp") as d:
            sink = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            sink.bind(os.path.join(d, "sink"))
            sink.setblocking(False)
            client, proto = await loop.create_datagram_endpoint(
                Client, local_addr=os.path.join(d, "src"), remote_addr=os.path.join(d, "sink"),
                family=socket.AF_UNIX,
            )  # fmt: skip
            n = 0
            while client.get_write_buffer_size() == 0:
                client.sendto(message(n, 1024))
                n += 1
            client.close()
            assert client.is_closing() and not proto.lost.done()
            got = []
            while not proto.lost.done() or len(got) < n:
                try:
                    got.append(sink.recv(2048))
                except BlockingIOError:
                    await asyncio.sleep(0.001)
            assert got == [message(i, 1024) for i in range(n)]
            assert await proto.lost is None
            sink.close()

    run(loop, main())


def test_write_buffer_limits(loop):
    async def main():
        client, proto = await loop.create_datagram_endpoint(Client, local_addr=(LOCAL, 0))
        assert client.get_write_buffer_limits() == (16 * 1024, 64 * 1024)
        client.set_write_buffer_limits(high=1000)
        assert client.get_write_buffer_limits() == (250, 1000)
        client.set_write_buffer_limits(low=10)
        assert client.get_write_buffer_limits() == (10, 40)
        with pytest.raises(ValueError):
            client.set_write_buffer_limits(high=1, low=2)
        assert client.get_write_buffer_size() == 0
        await close(client)

    run(loop, main())


@pytest.mark.skipif(not _has_ipv6(), reason="no IPv6 loopback")
def test_ipv6_round_trip(loop):
    async def main():
        server, _ = await loop.create_datagram_endpoint(Echo, local_addr=("::1", 0))
        addr = server.get_extra_info("sockname")
        assert len(addr) == 4
        client, proto = await loop.create_datagram_endpoint(Client, local_addr=("::1", 0))
        for i in range(20):
            client.sendto(message(i), addr)
        await proto.wait_for(20)
        assert {a for _, a in proto.received} == {addr}
        await close(client, server)

    run(loop, main())


def test_socket_subclass_methods_are_used(loop):
    """A socket subclass is read and written through its own methods, as asyncio does."""

    class Counting(socket.socket):
        calls: list[str] = []

        def recvfrom(self, *args: Any) -> Any:
            self.calls.append("recvfrom")
            return super().recvfrom(*args)

        def sendto(self, *args: Any) -> Any:
            self.calls.append("sendto")
            return super().sendto(*args)

    async def main():
        sock = Counting(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((LOCAL, 0))
        tr, proto = await loop.create_datagram_endpoint(Client, sock=sock)
        tr.sendto(b"to myself", sock.getsockname())
        await proto.wait_for(1)
        assert proto.received == [(b"to myself", sock.getsockname())]
        assert Counting.calls[:2] == ["sendto", "recvfrom"]
        await close(tr)

    run(loop, main())


def test_extra_info_repr_and_protocol(loop):
    async def main():
        server, sproto = await loop.create_datagram_endpoint(Echo, local_addr=(LOCAL, 0))
        assert isinstance(server, asyncio.BaseTransport)
        if sys.version_info >= (3, 12):  # asyncio's is one from 3.12 (ferroloop's always)
            assert isinstance(server, asyncio.DatagramTransport)
        sock = server.get_extra_info("socket")
        assert sock.type == socket.SOCK_DGRAM and sock.family == socket.AF_INET
        assert server.get_extra_info("sockname") == sock.getsockname()
        assert server.get_extra_info("peername") is None
        assert server.get_protocol() is sproto
        fd = sock.fileno()
        assert repr(server).endswith(f"fd={fd} read=polling write=<idle, bufsize=0>>")
        other = Echo()
        server.set_protocol(other)
        assert server.get_protocol() is other
        other.lost = loop.create_future()
        server.close()
        assert "closing" in repr(server)
        assert await other.lost is None
        assert repr(server).startswith(f"<{type(server).__name__} closed fd={fd}")
        assert not sproto.lost.done()

    run(loop, main())


def test_connection_lost_exception_still_closes_the_socket(loop):
    class Failing(Client):
        def connection_lost(self, exc: BaseException | None) -> None:
            super().connection_lost(exc)
            raise ZeroDivisionError("boom")

    async def main():
        errors = Errors()
        loop.set_exception_handler(errors)
        tr, proto = await loop.create_datagram_endpoint(Failing, local_addr=(LOCAL, 0))
        sock = tr.get_extra_info("socket")
        tr.close()
        await proto.lost
        await asyncio.sleep(0)
        assert sock.fileno() == -1
        assert [type(c["exception"]) for c in errors.contexts] == [ZeroDivisionError]

    run(loop, main())
