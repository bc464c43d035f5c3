"""`Loop.stats()`: ferroloop's always-on loop statistics.

FERROLOOP ONLY: the stock loop has no such API, so these tests run on ferroloop. Counts are
checked exactly against scripted workloads; durations only from below (a callback that
sleeps 20 ms took at least that), never as performance bounds.
"""

from __future__ import annotations

import asyncio
import gc
import os
import socket
import time
from collections.abc import Iterator

import ferroloop
import pytest

KINDS = ("tcp", "unix", "tls", "udp", "pipe")


@pytest.fixture
def floop() -> Iterator[ferroloop.Loop]:
    lp = ferroloop.new_event_loop()
    try:
        yield lp
    finally:
        lp.close()


def test_stats_shape_of_a_new_loop(floop):
    """FERROLOOP ONLY: every key, zero on a loop that has not run."""
    st = floop.stats()
    assert st["iterations"] == st["callbacks"] == st["max_ready"] == st["io_events"] == 0
    assert st["timers"] == {"scheduled": 0, "cancelled": 0, "fired": 0}
    assert set(st["transports"]) == set(KINDS)
    for counts in st["transports"].values():
        assert counts == dict.fromkeys(
            ("open", "bytes_read", "reads", "bytes_written", "writes"), 0
        )
    assert st["servers"] == 0
    assert st["poll_seconds"] == st["busy_seconds"] == 0.0
    d = st["callback_durations"]
    assert d == {"count": 0, "max": 0.0, "p50": 0.0, "p99": 0.0, "histogram": []}
    assert st["slowest_callback"] is None


def test_stats_count_callbacks_exactly(floop):
    """FERROLOOP ONLY: N callbacks ready at once run in one iteration."""
    n = 5000
    ran = []
    for i in range(n - 1):
        floop.call_soon(ran.append, i)
    floop.call_soon(floop.stop)
    floop.run_forever()
    st = floop.stats()
    assert len(ran) == n - 1
    assert st["callbacks"] == n
    assert st["iterations"] == 1
    assert st["max_ready"] == n
    d = st["callback_durations"]
    # Short callbacks: the first two are timed, then one in 64 (more if the process was
    # preempted for over 1 ms meanwhile, which switches timing to every callback a while).
    assert 2 + (n - 2) // 64 <= d["count"] <= n
    assert sum(count for _lo, _hi, count in d["histogram"]) == d["count"]
    assert 0 < d["p50"] <= d["p99"] and d["max"] > 0


def test_stats_count_timers_exactly(floop):
    """FERROLOOP ONLY: M timers scheduled, C of them cancelled: M - C fire."""
    m, c = 300, 120
    fired = []
    handles = [floop.call_later(0, fired.append, i) for i in range(m)]
    for h in handles[:c]:
        h.cancel()
    handles[0].cancel()  # cancelling twice counts once
    floop.call_later(0.001, floop.stop)
    floop.run_forever()
    st = floop.stats()
    assert len(fired) == m - c
    assert st["timers"] == {"scheduled": m + 1, "cancelled": c, "fired": m - c + 1}
    assert st["callbacks"] == m - c + 1


class Echo(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.transport.write(data)


async def _echo_through(loop, reader, writer, chunks):
    got = 0
    for chunk in chunks:
        writer.write(chunk)
        await writer.drain()
        want = got + len(chunk)
        while got < want:
            got += len(await reader.read(want - got))
    writer.close()
    await writer.wait_closed()
    return got


def test_stats_count_tcp_bytes_echoed(floop):
    """FERROLOOP ONLY: K bytes echoed over TCP are read and written twice (client and
    server side), by transports counted open while connected."""
    chunks = [bytes([i]) * (1000 + 37 * i) for i in range(20)]
    k = sum(map(len, chunks))

    async def main():
        server = await floop.create_server(Echo, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        await asyncio.sleep(0.01)
        open_now = floop.stats()["transports"]["tcp"]["open"]
        got = await _echo_through(floop, reader, writer, chunks)
        server.close()
        await server.wait_closed()
        await asyncio.sleep(0.01)
        return open_now, got

    open_now, got = floop.run_until_complete(main())
    assert got == k
    tcp = floop.stats()["transports"]["tcp"]
    assert open_now == 2
    assert tcp["open"] == 0
    assert tcp["bytes_read"] == 2 * k
    assert tcp["bytes_written"] == 2 * k
    # Each echo is read in at least one call per side, plus the end-of-file reads.
    assert tcp["reads"] >= 2 * len(chunks)
    assert tcp["writes"] >= 2 * len(chunks)
    st = floop.stats()
    assert st["io_events"] >= tcp["reads"]
    for kind in ("unix", "tls", "udp", "pipe"):
        assert st["transports"][kind]["bytes_read"] == 0


def test_stats_count_unix_transports_apart(floop):
    """FERROLOOP ONLY: a Unix-socket transport counts under `unix`, not `tcp`."""
    a, b = socket.socketpair()

    async def main():
        t1, _ = await floop.connect_accepted_socket(Echo, a)
        reader, writer = await asyncio.open_connection(sock=b)
        got = await _echo_through(floop, reader, writer, [b"x" * 5000])
        t1.close()
        await asyncio.sleep(0.01)
        return got

    assert floop.run_until_complete(main()) == 5000
    st = floop.stats()["transports"]
    assert st["unix"]["bytes_read"] == st["unix"]["bytes_written"] == 10000
    assert st["unix"]["open"] == 0
    assert st["tcp"]["bytes_read"] == 0


def _still_open(st):
    """The kinds with transports still counted open."""
    return {kind: c["open"] for kind, c in st["transports"].items() if c["open"]}


class DatagramEcho(asyncio.DatagramProtocol):
    def connection_made(self, transport):
        self.transport = transport

    def datagram_received(self, data, addr):
        self.transport.sendto(data, addr)


class DatagramClient(asyncio.DatagramProtocol):
    def __init__(self):
        self.got: list[bytes] = []
        self.arrived = asyncio.Event()

    def datagram_received(self, data, addr):
        self.got.append(data)
        self.arrived.set()


def test_stats_count_udp_datagrams_exactly(floop):
    """FERROLOOP ONLY: N datagrams echoed over UDP: each received is one read of its bytes
    and each sent one write, on both endpoints (whatever recvmmsg(2) batched)."""
    sizes = [1, 100, 1472, 3000, 9000, 17, 512, 60000]
    k = sum(sizes)

    async def main():
        server, _ = await floop.create_datagram_endpoint(
            DatagramEcho, local_addr=("127.0.0.1", 0)
        )
        addr = server.get_extra_info("sockname")
        client, proto = await floop.create_datagram_endpoint(
            DatagramClient, remote_addr=addr
        )
        open_now = floop.stats()["transports"]["udp"]["open"]
        for i, size in enumerate(sizes):
            proto.arrived.clear()
            client.sendto(bytes([i]) * size)
            await asyncio.wait_for(proto.arrived.wait(), 5)
        client.close()
        server.close()
        await asyncio.sleep(0.01)
        return open_now, proto.got

    open_now, got = floop.run_until_complete(main())
    assert [len(d) for d in got] == sizes
    st = floop.stats()
    assert open_now == 2
    assert st["transports"]["udp"] == {
        "open": 0,
        "bytes_read": 2 * k,
        "reads": 2 * len(sizes),
        "bytes_written": 2 * k,
        "writes": 2 * len(sizes),
    }
    assert _still_open(st) == {}
    for kind in ("tcp", "unix", "tls", "pipe"):
        assert st["transports"][kind]["reads"] == st["transports"][kind]["writes"] == 0


def test_stats_count_udp_batched_reads(floop):
    """FERROLOOP ONLY: datagrams queued before the loop reads arrive in one recvmmsg(2),
    still one read each."""
    n = 40

    async def main():
        proto = DatagramClient()
        server, _ = await floop.create_datagram_endpoint(
            lambda: proto, local_addr=("127.0.0.1", 0)
        )
        addr = server.get_extra_info("sockname")
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            for i in range(n):
                s.sendto(b"d" * (i + 1), addr)
            while len(proto.got) < n:
                proto.arrived.clear()
                await asyncio.wait_for(proto.arrived.wait(), 5)
        server.close()
        await asyncio.sleep(0.01)

    floop.run_until_complete(main())
    udp = floop.stats()["transports"]["udp"]
    assert udp["reads"] == n
    assert udp["bytes_read"] == n * (n + 1) // 2
    assert udp["writes"] == udp["bytes_written"] == udp["open"] == 0



def test_stats_count_udp_replies_sent_together(floop):
    """FERROLOOP ONLY: replies to a burst leave together (sendmmsg(2), runs to one peer as
    one GSO message), still one write per datagram sent."""
    n = 40

    async def main():
        server, _ = await floop.create_datagram_endpoint(
            DatagramEcho, local_addr=("127.0.0.1", 0)
        )
        addr = server.get_extra_info("sockname")
        got = []
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.setblocking(False)
            for i in range(n):
                s.sendto(b"d" * (1 + i // 10), addr)
            deadline = floop.time() + 5
            while len(got) < n and floop.time() < deadline:
                try:
                    got.append(s.recv(100))
                except BlockingIOError:
                    await asyncio.sleep(0.001)
        server.close()
        await asyncio.sleep(0.01)
        return got

    got = floop.run_until_complete(main())
    assert got == [b"d" * (1 + i // 10) for i in range(n)]
    udp = floop.stats()["transports"]["udp"]
    total = sum(1 + i // 10 for i in range(n))
    assert udp["reads"] == udp["writes"] == n
    assert udp["bytes_read"] == udp["bytes_written"] == total
    assert udp["open"] == 0

class PipeReader(asyncio.Protocol):
    def __init__(self):
        self.got = bytearray()
        self.arrived = asyncio.Event()
        self.lost = asyncio.Event()

    def data_received(self, data):
        self.got += data
        self.arrived.set()

    def connection_lost(self, exc):
        self.lost.set()


def test_stats_count_pipe_bytes(floop):
    """FERROLOOP ONLY: K bytes through os.pipe() with connect_write_pipe/connect_read_pipe:
    one write syscall per chunk (each fits the pipe), one read per chunk (each waited for)
    plus the end-of-file read, both transports open until closed."""
    chunks = [b"a" * 1000, b"b" * 5000, b"c" * 30000, b"d"]
    k = sum(map(len, chunks))
    rfd, wfd = os.pipe()

    async def main():
        rtrans, reader = await floop.connect_read_pipe(PipeReader, os.fdopen(rfd, "rb", 0))
        wtrans, _ = await floop.connect_write_pipe(
            asyncio.Protocol, os.fdopen(wfd, "wb", 0)
        )
        open_now = floop.stats()["transports"]["pipe"]["open"]
        for chunk in chunks:
            reader.arrived.clear()
            wtrans.write(chunk)
            await asyncio.wait_for(reader.arrived.wait(), 5)
        wtrans.close()
        await asyncio.wait_for(reader.lost.wait(), 5)
        await asyncio.sleep(0.01)
        assert rtrans.is_closing()
        return open_now, bytes(reader.got)

    open_now, got = floop.run_until_complete(main())
    assert got == b"".join(chunks)
    st = floop.stats()
    assert open_now == 2
    assert st["transports"]["pipe"] == {
        "open": 0,
        "bytes_read": k,
        "reads": len(chunks) + 1,
        "bytes_written": k,
        "writes": len(chunks),
    }
    assert _still_open(st) == {}


def test_stats_count_pipe_buffered_writes(floop):
    """FERROLOOP ONLY: a write larger than the pipe holds is sent in several syscalls as
    the reader drains it; the bytes are counted exactly on both ends."""
    k = 1 << 20
    rfd, wfd = os.pipe()

    async def main():
        _, reader = await floop.connect_read_pipe(PipeReader, os.fdopen(rfd, "rb", 0))
        wtrans, _ = await floop.connect_write_pipe(
            asyncio.Protocol, os.fdopen(wfd, "wb", 0)
        )
        wtrans.write(b"x" * k)
        wtrans.close()
        await asyncio.wait_for(reader.lost.wait(), 10)
        await asyncio.sleep(0.01)
        return len(reader.got)

    assert floop.run_until_complete(main()) == k
    pipe = floop.stats()["transports"]["pipe"]
    assert pipe["bytes_read"] == pipe["bytes_written"] == k
    assert pipe["writes"] >= 2  # more than the pipe holds at once
    assert pipe["reads"] >= 2 + 1  # the end-of-file read too
    assert pipe["open"] == 0


@pytest.fixture(scope="module")
def tls_contexts():
    trustme = pytest.importorskip("trustme")
    import ssl

    ca = trustme.CA()
    cert = ca.issue_cert("localhost", "127.0.0.1")
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(server_ctx)
    client_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ca.configure_trust(client_ctx)
    return server_ctx, client_ctx


def test_stats_count_tls_plaintext(floop, tls_contexts):
    """FERROLOOP ONLY: an echo over TLS counts its plaintext under `tls` (one read per
    delivery to the protocol, one write per write() call: each chunk fits one record and
    is waited for), while the TCP transports underneath count the records, handshake and
    close_notify included, under `tcp`."""
    server_ctx, client_ctx = tls_contexts
    chunks = [bytes([i]) * (100 + 701 * i) for i in range(12)]
    k = sum(map(len, chunks))

    async def main():
        server = await floop.create_server(Echo, "127.0.0.1", 0, ssl=server_ctx)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=client_ctx, server_hostname="localhost"
        )
        await asyncio.sleep(0.01)
        st = floop.stats()["transports"]
        open_now = (st["tls"]["open"], st["tcp"]["open"])
        got = await _echo_through(floop, reader, writer, chunks)
        server.close()
        await server.wait_closed()
        await asyncio.sleep(0.05)
        return open_now, got

    open_now, got = floop.run_until_complete(main())
    assert got == k
    assert open_now == (2, 2)
    st = floop.stats()
    tls, tcp = st["transports"]["tls"], st["transports"]["tcp"]
    assert tls == {
        "open": 0,
        "bytes_read": 2 * k,
        "reads": 2 * len(chunks),
        "bytes_written": 2 * k,
        "writes": 2 * len(chunks),
    }
    assert tcp["open"] == 0
    assert tcp["bytes_read"] > tls["bytes_read"]
    assert tcp["bytes_written"] > tls["bytes_written"]
    assert tcp["reads"] > tls["reads"] and tcp["writes"] > tls["writes"]
    assert _still_open(st) == {}


def test_stats_count_tls_writelines(floop, tls_contexts):
    """FERROLOOP ONLY: writelines() is one write of all its bytes; empty data is none."""
    server_ctx, client_ctx = tls_contexts
    lines = [b"one", b"", b"three" * 100]
    k = sum(map(len, lines))

    async def main():
        server = await floop.create_server(Echo, "127.0.0.1", 0, ssl=server_ctx)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=client_ctx, server_hostname="localhost"
        )
        writer.write(b"")
        writer.writelines([b"", b""])
        before = floop.stats()["transports"]["tls"]["writes"]
        writer.writelines(lines)
        data = await reader.readexactly(k)
        after = floop.stats()["transports"]["tls"]
        writer.close()
        await writer.wait_closed()
        server.close()
        await server.wait_closed()
        await asyncio.sleep(0.05)
        return before, after, data

    before, after, data = floop.run_until_complete(main())
    assert data == b"".join(lines)
    assert before == 0
    # One record each way: the client's writelines(), the server's one delivery and its
    # echo, the client's one delivery.
    assert after["writes"] == after["reads"] == 2
    assert after["bytes_written"] == after["bytes_read"] == 2 * k
    assert floop.stats()["transports"]["tls"]["open"] == 0


def test_stats_count_open_servers(floop):
    """FERROLOOP ONLY: `servers` counts Server objects not yet closed, serving or not;
    close() twice counts once."""

    async def main():
        counts = [floop.stats()["servers"]]
        a = await floop.create_server(asyncio.Protocol, "127.0.0.1", 0)
        counts.append(floop.stats()["servers"])
        b = await floop.create_server(asyncio.Protocol, "127.0.0.1", 0, start_serving=False)
        counts.append(floop.stats()["servers"])
        a.close()
        a.close()
        await a.wait_closed()
        counts.append(floop.stats()["servers"])
        b.close()
        await b.wait_closed()
        counts.append(floop.stats()["servers"])
        return counts

    assert floop.run_until_complete(main()) == [0, 1, 2, 1, 0]


def test_stats_count_unix_server(floop, tmp_path):
    """FERROLOOP ONLY: a Unix server counts as a server; its connections under `unix`."""
    path = str(tmp_path / "s")

    async def main():
        server = await floop.create_unix_server(Echo, path)
        during = floop.stats()["servers"]
        reader, writer = await asyncio.open_unix_connection(path)
        got = await _echo_through(floop, reader, writer, [b"u" * 300])
        server.close()
        await server.wait_closed()
        await asyncio.sleep(0.01)
        return during, got

    assert floop.run_until_complete(main()) == (1, 300)
    st = floop.stats()
    assert st["servers"] == 0
    assert st["transports"]["unix"]["bytes_read"] == 600
    assert _still_open(st) == {}


def test_poll_and_busy_seconds(floop):
    """FERROLOOP ONLY: waiting for a timer is polling; a callback that sleeps is busy."""

    async def main():
        await asyncio.sleep(0.05)
        time.sleep(0.05)

    floop.run_until_complete(main())
    st = floop.stats()
    assert st["poll_seconds"] >= 0.04
    assert st["busy_seconds"] >= 0.05


def test_slowest_callback_names_the_task(floop):
    """FERROLOOP ONLY: callbacks that take milliseconds are all timed; the slowest is
    named as asyncio's slow-callback warning names it."""

    async def slow():
        for _ in range(20):
            await asyncio.sleep(0)
            time.sleep(0.001)
        time.sleep(0.02)

    floop.run_until_complete(floop.create_task(slow(), name="the-slow-one"))
    st = floop.stats()
    slowest = st["slowest_callback"]
    assert slowest is not None
    assert "the-slow-one" in slowest["repr"]
    assert slowest["seconds"] >= 0.02
    d = st["callback_durations"]
    assert d["max"] == slowest["seconds"]
    assert slowest["timed"] is True
    assert d["count"] >= 20
    assert d["p99"] >= 0.001


def test_slow_callback_among_untimed_short_ones(floop):
    """FERROLOOP ONLY: a slow callback in the untimed stretch between two sampled ones is
    recorded as the slowest, as an upper bound, named after the next timed one; the
    callbacks after it are then all timed, so the next slow one is caught by name."""

    def slow_one():
        time.sleep(0.01)

    def run(callbacks):
        for cb in callbacks:
            floop.call_soon(cb)
        floop.call_soon(floop.stop)
        floop.run_forever()

    run([time.monotonic] * 50 + [slow_one] + [time.monotonic] * 100)
    slowest = floop.stats()["slowest_callback"]
    assert slowest is not None and slowest["seconds"] >= 0.01
    if slowest["timed"]:
        # Only if an earlier stretch (the process preempted for over 1 ms on a busy
        # machine) had already switched timing to every callback.
        assert "slow_one" in slowest["repr"]
    else:
        assert slowest["repr"].startswith("one of the ")
        assert "untimed callbacks before" in slowest["repr"]
    before = floop.stats()["callback_durations"]["count"]

    def slower_one():
        time.sleep(0.03)

    run([time.monotonic] * 50 + [slower_one] + [time.monotonic] * 100)
    st = floop.stats()
    assert st["slowest_callback"]["timed"] is True
    assert "slower_one" in st["slowest_callback"]["repr"]
    assert st["slowest_callback"]["seconds"] >= 0.03
    assert st["callback_durations"]["count"] == before + 152


def test_stats_after_close(floop):
    """FERROLOOP ONLY: the numbers stay readable once the loop is closed."""
    floop.run_until_complete(asyncio.sleep(0))
    before = floop.stats()
    floop.close()
    assert floop.stats() == before


def _rss() -> int:
    with open(f"/proc/{os.getpid()}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_no_leak_over_a_million_callbacks(floop):
    """FERROLOOP ONLY: stats keep no per-callback memory (fixed histogram, one repr)."""
    batch = 10_000
    count = [0]

    def tick():
        count[0] += 1

    def run(batches):
        for _ in range(batches):
            for _ in range(batch):
                floop.call_soon(tick)
            floop.call_soon(floop.stop)
            floop.run_forever()

    run(20)
    gc.collect()
    before = _rss()
    run(100)
    gc.collect()
    grown = _rss() - before
    assert count[0] == 120 * batch
    assert floop.stats()["callbacks"] >= 1_200_000
    assert grown < 1_000_000, f"RSS grew by {grown} bytes over 1M callbacks"
