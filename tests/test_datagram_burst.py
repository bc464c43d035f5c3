"""Replies sent from `datagram_received()` during a burst of datagrams (issue 10), on the
stock loop (the oracle) and on ferroloop: ferroloop sends them together when the burst
ends (sendmmsg(2), consecutive datagrams of one size to one peer as one UDP GSO message),
which must not show. Each peer gets its replies whole and in order, errors still reach
`error_received()`, and what a protocol can ask or do meanwhile sees them sent."""

from __future__ import annotations

import asyncio
import socket
import sys
import time
from typing import Any

import pytest
from helpers import LOCAL, run

pytestmark = pytest.mark.timeout(60)

PY313 = sys.version_info >= (3, 13)
SO_NO_CHECK = 11  # Linux: no UDP checksums on send, which the kernel's GSO refuses


class Echo(asyncio.DatagramProtocol):
    """Sends every datagram back; `before(data, addr)` runs first, `after` once it is sent."""

    def __init__(self, before: Any = None, after: Any = None) -> None:
        self.before = before
        self.after = after
        self.errors: list[BaseException] = []
        self.seen: list[bytes] = []

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.lost = asyncio.get_running_loop().create_future()

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.seen.append(data)
        if self.before is not None:
            self.before(self, data, addr)
        self.transport.sendto(data, addr)
        if self.after is not None:
            self.after(self, data, addr)

    def error_received(self, exc: Exception) -> None:
        self.errors.append(exc)

    def connection_lost(self, exc: BaseException | None) -> None:
        if not self.lost.done():
            self.lost.set_result(exc)


def peer() -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    s.bind((LOCAL, 0))
    s.setblocking(False)
    return s


async def collect(socks: list[socket.socket], counts: list[int]) -> list[list[bytes]]:
    """What each socket receives until it has its count (10 s at most)."""
    got: list[list[bytes]] = [[] for _ in socks]
    deadline = time.monotonic() + 10
    while any(len(g) < c for g, c in zip(got, counts)) and time.monotonic() < deadline:
        for s, g in zip(socks, got):
            while True:
                try:
                    g.append(s.recv(70_000))
                except BlockingIOError:
                    break
        await asyncio.sleep(0.001)
    return got


def dgram(peer_no: int, i: int, size: int) -> bytes:
    head = b"%02d|%05d|" % (peer_no, i)
    return (head + bytes((i + k) % 251 for k in range(size)))[:size] if size else b""


# Runs of one size (longer than a GSO message or a sendmmsg(2) batch takes), a shorter
# datagram ending a run, sizes that cannot share a GSO message (three of 30,000 bytes
# are over 64 KiB), and one-byte datagrams.
SIZES = [1400] * 40 + [700, 1400, 1400, 9000, 30000, 30000, 30000, 1, 1, 64, 64, 64, 65507]
if PY313:
    SIZES += [0, 0, 64]  # asyncio sends empty datagrams from 3.13 (gh-113812)


async def echo_burst(loop: Any, server_sock: socket.socket | None = None) -> None:
    kw: dict[str, Any] = {"sock": server_sock} if server_sock else {"local_addr": (LOCAL, 0)}
    server, proto = await loop.create_datagram_endpoint(Echo, **kw)
    server.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    addr = server.get_extra_info("sockname")
    socks = [peer() for _ in range(3)]
    try:
        expected: list[list[bytes]] = [[] for _ in socks]
        # Interleaved runs from three peers, all queued before the server reads.
        for start in range(0, len(SIZES), 7):
            for n, s in enumerate(socks):
                for i in range(start, min(start + 7, len(SIZES))):
                    d = dgram(n, i, SIZES[i])
                    s.sendto(d, addr)
                    expected[n].append(d)
        got = await collect(socks, [len(e) for e in expected])
        for n in range(len(socks)):
            assert [len(d) for d in got[n]] == [len(d) for d in expected[n]], n
            assert got[n] == expected[n], n
        assert proto.errors == []
    finally:
        for s in socks:
            s.close()
        server.close()
        await proto.lost


def test_issue10_replies_to_a_burst_arrive_whole_and_in_order(loop):
    """Three peers' interleaved runs of datagrams, echoed: each peer gets its own back,
    every datagram whole (none merged, none cut) and in the order it sent them."""
    run(loop, echo_burst(loop))


def test_issue10_replies_where_gso_is_refused(loop):
    """The same over a socket with UDP checksums off (SO_NO_CHECK), which the kernel's
    GSO refuses (EINVAL): the replies go one datagram per message, nothing reported."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, SO_NO_CHECK, 1)
    s.bind((LOCAL, 0))
    run(loop, echo_burst(loop, s))


def test_issue10_a_failing_reply_reaches_error_received(loop):
    """A reply too big to send (EMSGSIZE) sent from datagram_received(): error_received()
    gets the OSError, the replies around it still arrive, the endpoint stays open."""

    def before(proto: Echo, data: bytes, addr: Any) -> None:
        if data == b"two":
            proto.transport.sendto(b"x" * 70_000, addr)

    async def main():
        server, proto = await loop.create_datagram_endpoint(
            lambda: Echo(before), local_addr=(LOCAL, 0)
        )
        addr = server.get_extra_info("sockname")
        s = peer()
        try:
            for d in (b"one", b"two", b"three"):
                s.sendto(d, addr)
            got = await collect([s], [3])
            assert got == [[b"one", b"two", b"three"]]
            assert len(proto.errors) == 1 and isinstance(proto.errors[0], OSError)
            assert not server.is_closing()
        finally:
            s.close()
            server.close()
            await proto.lost

    run(loop, main())


@pytest.mark.parametrize("how", ["close", "abort"])
def test_issue10_close_or_abort_after_a_reply_sends_it(loop, how):
    """datagram_received() replies, sees an empty write buffer, then closes (or aborts)
    the endpoint: the reply was sent, as asyncio sends it from sendto()."""
    sizes: list[int] = []

    def after(proto: Echo, data: bytes, addr: Any) -> None:
        sizes.append(proto.transport.get_write_buffer_size())
        getattr(proto.transport, how)()

    async def main():
        server, proto = await loop.create_datagram_endpoint(
            lambda: Echo(after=after), local_addr=(LOCAL, 0)
        )
        addr = server.get_extra_info("sockname")
        s = peer()
        try:
            for d in (b"first", b"second"):
                s.sendto(d, addr)
            await proto.lost
            got = await collect([s], [1])
            assert got == [[b"first"]]
            assert proto.seen == [b"first"]
            assert sizes == [0]
        finally:
            s.close()

    run(loop, main())


def test_issue10_replies_keep_their_order_with_other_sends(loop):
    """From datagram_received(): a reply of bytes (deferrable), then of a bytearray and a
    memoryview (sent at once, so the deferred one goes first), then bytes again."""

    def before(proto: Echo, data: bytes, addr: Any) -> None:
        proto.transport.sendto(b"a", addr)
        proto.transport.sendto(bytearray(b"b"), addr)
        proto.transport.sendto(memoryview(b"xcx")[1:2], addr)

    async def main():
        server, proto = await loop.create_datagram_endpoint(
            lambda: Echo(before), local_addr=(LOCAL, 0)
        )
        addr = server.get_extra_info("sockname")
        s = peer()
        try:
            s.sendto(b"d", addr)
            got = await collect([s], [4])
            assert got == [[b"a", b"b", b"c", b"d"]]
        finally:
            s.close()
            server.close()
            await proto.lost

    run(loop, main())
