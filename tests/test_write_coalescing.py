"""Stream writes made during a callback (which ferroloop sends together once the callback
returns) behave as asyncio's direct sends do: order, buffer size, close/abort/write_eof in
the same callback, errors and flow control. Each test runs on the stock loop and on
ferroloop (issue 13)."""

from __future__ import annotations

import asyncio
import os
import socket
import threading
from typing import Any

import pytest
from helpers import Errors, pair, run

KiB = 1024
MiB = 1024 * KiB


class Recorder(asyncio.Protocol):
    """Records the transport's life: connection_lost calls and flow-control events."""

    def __init__(self) -> None:
        self.transport: Any = None
        self.lost: list[BaseException | None] = []
        self.events: list[str] = []
        self.received = bytearray()
        self.closed = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.received += data

    def pause_writing(self) -> None:
        self.events.append("pause")
        # asyncio pauses only once the buffer is above the high-water mark.
        assert self.transport.get_write_buffer_size() > self.transport.get_write_buffer_limits()[1]

    def resume_writing(self) -> None:
        self.events.append("resume")
        assert self.transport.get_write_buffer_size() <= self.transport.get_write_buffer_limits()[0]

    def connection_lost(self, exc: BaseException | None) -> None:
        self.lost.append(exc)
        if not self.closed.done():
            self.closed.set_result(exc)


async def connected(loop: asyncio.AbstractEventLoop) -> tuple[Any, Recorder, socket.socket]:
    """A transport with a Recorder over one end of a TCP pair, and the other end (blocking
    with a timeout, for reading in the test)."""
    ours, peer = await pair(loop)
    transport, proto = await loop.create_connection(Recorder, sock=ours)
    peer.setblocking(True)
    peer.settimeout(10)
    return transport, proto, peer


def read_exactly(sock: socket.socket, n: int) -> bytes:
    got = bytearray()
    while len(got) < n:
        chunk = sock.recv(n - len(got))
        if not chunk:
            break
        got += chunk
    return bytes(got)


def read_to_eof(sock: socket.socket) -> bytes:
    got = bytearray()
    while chunk := sock.recv(64 * KiB):
        got += chunk
    return bytes(got)


async def in_callback(loop: asyncio.AbstractEventLoop, fn: Any) -> Any:
    """Runs `fn()` as a call_soon callback and returns its result."""
    done = loop.create_future()

    def cb() -> None:
        done.set_result(fn())

    loop.call_soon(cb)
    return await done


def test_writes_in_one_callback_arrive_in_order(loop):
    parts = [b"head:" * 10, b"b" * 3000, bytearray(b"c" * 5), memoryview(b"tail")]

    async def main():
        transport, _, peer = await connected(loop)

        def write_all():
            for p in parts:
                transport.write(p)
            transport.writelines([b"x", b"yz"])

        await in_callback(loop, write_all)
        want = b"".join(bytes(p) for p in parts) + b"xyz"
        got = await loop.run_in_executor(None, read_exactly, peer, len(want))
        transport.close()
        peer.close()
        return got, want

    got, want = run(loop, main())
    assert got == want


@pytest.mark.parametrize("where", ["call_soon", "task", "threadsafe", "data_received"])
def test_write_buffer_size_after_small_write_is_zero(loop, where):
    """asyncio sends a small write at once on a writable socket: the buffer is empty
    right after it, whatever runs the write."""

    async def main():
        transport, proto, peer = await connected(loop)
        sizes = loop.create_future()

        def write_and_measure():
            transport.write(b"a" * 100)
            transport.write(b"b" * 200)
            sizes.set_result(transport.get_write_buffer_size())

        if where == "call_soon":
            loop.call_soon(write_and_measure)
        elif where == "task":

            async def coro():
                write_and_measure()

            loop.create_task(coro())
        elif where == "threadsafe":
            thread = threading.Thread(target=loop.call_soon_threadsafe, args=(write_and_measure,))
            thread.start()
            thread.join()
        else:
            proto.data_received = lambda data: write_and_measure()
            peer.sendall(b"go")
        size = await sizes
        got = await loop.run_in_executor(None, read_exactly, peer, 300)
        transport.close()
        peer.close()
        return size, got

    size, got = run(loop, main())
    assert size == 0
    assert got == b"a" * 100 + b"b" * 200


def test_write_from_another_thread_while_the_loop_waits(loop):
    async def main():
        transport, _, peer = await connected(loop)
        thread = threading.Thread(target=transport.write, args=(b"from a thread",))
        thread.start()
        thread.join()
        got = await loop.run_in_executor(None, read_exactly, peer, 13)
        transport.close()
        peer.close()
        return got

    assert run(loop, main()) == b"from a thread"


@pytest.mark.parametrize("then", ["close", "abort", "write_eof"])
def test_write_then_close_in_the_same_callback(loop, then):
    """A direct send has left by the time close()/abort()/write_eof() runs: the peer gets
    the data, then the end of the stream."""

    async def main():
        transport, proto, peer = await connected(loop)

        def write_then():
            transport.write(b"last words")
            getattr(transport, then)()
            return transport.is_closing()

        closing = await in_callback(loop, write_then)
        got = await loop.run_in_executor(None, read_to_eof, peer)
        if then == "write_eof":
            transport.close()
        exc = await proto.closed
        peer.close()
        return closing, got, exc, len(proto.lost)

    closing, got, exc, nlost = run(loop, main())
    assert got == b"last words"
    assert closing == (then != "write_eof")
    assert exc is None and nlost == 1


def test_write_after_write_eof_in_the_same_callback_raises(loop):
    async def main():
        transport, _, peer = await connected(loop)

        def write_eof_then_write():
            transport.write(b"x")
            transport.write_eof()
            with pytest.raises(RuntimeError):
                transport.write(b"y")

        await in_callback(loop, write_eof_then_write)
        got = await loop.run_in_executor(None, read_to_eof, peer)
        transport.close()
        peer.close()
        return got

    assert run(loop, main()) == b"x"


def test_failed_write_reports_connection_lost_once(loop):
    """A write to a reset peer fails as a direct send does: the transport closes, with
    connection_lost called once with the error, and nothing raised to the caller."""
    errors = Errors()
    loop.set_exception_handler(errors)

    async def main():
        transport, proto, peer = await connected(loop)
        # Not reading: the write, not a read, is the first to meet the reset.
        transport.pause_reading()
        peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        peer.close()
        await asyncio.sleep(0.05)
        assert proto.lost == []

        def write_twice():
            transport.write(b"a" * 100)
            transport.write(b"b" * 100)

        await in_callback(loop, write_twice)
        exc = await proto.closed
        await asyncio.sleep(0.01)
        return exc, len(proto.lost), transport.is_closing()

    exc, nlost, closing = run(loop, main())
    assert isinstance(exc, (ConnectionResetError, BrokenPipeError))
    assert nlost == 1 and closing
    assert errors.contexts == []


def test_flow_control_for_a_1mib_write_pattern(loop):
    """1 KiB writes in one callback to a peer that does not read: the protocol is paused
    once, above the high-water mark, and resumed once the peer drains."""

    async def main():
        transport, proto, peer = await connected(loop)
        peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 * KiB)
        transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 32 * KiB)
        chunk = b"z" * KiB
        paused_at: list[int] = []

        def write_mib():
            for i in range(1024):
                transport.write(chunk)
                if proto.events == ["pause"] and not paused_at:
                    paused_at.append(i)
            return transport.get_write_buffer_size()

        buffered = await in_callback(loop, write_mib)
        events_while_writing = list(proto.events)
        got = await loop.run_in_executor(None, read_exactly, peer, MiB)
        for _ in range(100):
            if proto.events[-1:] == ["resume"]:
                break
            await asyncio.sleep(0.01)
        transport.close()
        await proto.closed
        peer.close()
        return events_while_writing, list(proto.events), buffered, paused_at, len(got)

    while_writing, events, buffered, paused_at, n = run(loop, main())
    assert while_writing == ["pause"]
    assert events == ["pause", "resume"]
    assert buffered > 64 * KiB
    assert paused_at and paused_at[0] >= 64
    assert n == MiB


def test_small_writes_under_a_low_high_water_mark_do_not_pause(loop):
    """Bytes a direct send would have written never count as buffered."""

    async def main():
        transport, proto, peer = await connected(loop)
        transport.set_write_buffer_limits(high=100)

        def write_small():
            for _ in range(5):
                transport.write(b"q" * 50)

        await in_callback(loop, write_small)
        got = await loop.run_in_executor(None, read_exactly, peer, 250)
        transport.close()
        await proto.closed
        peer.close()
        return proto.events, got

    events, got = run(loop, main())
    assert events == []
    assert got == b"q" * 250


def test_set_write_buffer_limits_after_writes_in_the_same_callback(loop):
    async def main():
        transport, proto, peer = await connected(loop)

        def write_then_limit():
            transport.write(b"w" * 1000)
            transport.set_write_buffer_limits(high=10)
            return transport.get_write_buffer_size()

        size = await in_callback(loop, write_then_limit)
        got = await loop.run_in_executor(None, read_exactly, peer, 1000)
        transport.close()
        await proto.closed
        peer.close()
        return size, proto.events, got

    size, events, got = run(loop, main())
    assert size == 0 and events == []
    assert got == b"w" * 1000


def test_echo_from_data_received(loop):
    class Echo(asyncio.Protocol):
        def connection_made(self, transport: Any) -> None:
            self.transport = transport

        def data_received(self, data: bytes) -> None:
            self.transport.write(data[:1])
            self.transport.write(data[1:])

    async def main():
        server = await loop.create_server(Echo, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        got = []
        for i in range(50):
            msg = f"message {i}\n".encode()
            writer.write(msg)
            got.append(await reader.readexactly(len(msg)) == msg)
        writer.close()
        await writer.wait_closed()
        server.close()
        await server.wait_closed()
        return got

    assert all(run(loop, main()))


def test_writes_of_several_callbacks_in_one_iteration_arrive_in_order(loop):
    """Callbacks ready together, each writing: the bytes keep the callbacks' order, and a
    later callback sees the earlier one's writes as sent."""

    async def main():
        transport, proto, peer = await connected(loop)
        sizes = []

        def write(i: int) -> None:
            sizes.append(transport.get_write_buffer_size())
            transport.write(b"%d," % i)

        for i in range(20):
            loop.call_soon(write, i)
        want = b"".join(b"%d," % i for i in range(20))
        got = await loop.run_in_executor(None, read_exactly, peer, len(want))
        transport.close()
        await proto.closed
        peer.close()
        return got, want, sizes

    got, want, sizes = run(loop, main())
    assert got == want
    assert sizes == [0] * 20


def test_write_before_stop_is_sent(loop):
    """A write in the last callback before the loop stops leaves before run_forever()
    returns."""
    ours, peer = socket.socketpair()
    peer.settimeout(10)

    async def setup():
        return await loop.connect_accepted_socket(Recorder, ours)

    transport, proto = loop.run_until_complete(setup())

    def write_and_stop():
        transport.write(b"bye")
        loop.stop()

    loop.call_soon(write_and_stop)
    loop.run_forever()
    peer.setblocking(False)
    try:
        got = peer.recv(16)
    finally:
        transport.close()
        loop.run_until_complete(proto.closed)
        peer.close()
    assert got == b"bye"


# Several transports written in one loop iteration: the uring build sends them together
# (one io_uring submission for the step); each must still behave as a direct send.


def test_writes_to_several_transports_in_one_iteration(loop):
    async def main():
        conns = [await connected(loop) for _ in range(5)]
        sizes = []

        def write(i: int, j: int) -> None:
            transport = conns[i][0]
            sizes.append(transport.get_write_buffer_size())
            transport.write(b"%d.%d," % (i, j))

        for j in range(3):
            for i in range(len(conns)):
                loop.call_soon(write, i, j)
        got = []
        for i, (transport, proto, peer) in enumerate(conns):
            want = b"".join(b"%d.%d," % (i, j) for j in range(3))
            got.append(await loop.run_in_executor(None, read_exactly, peer, len(want)) == want)
            transport.close()
            await proto.closed
            peer.close()
        return got, sizes

    got, sizes = run(loop, main())
    assert all(got)
    assert sizes == [0] * 15


def test_failed_write_among_several_in_one_iteration(loop):
    """One reset peer among healthy ones: its transport closes with the error, once; the
    protocol's connection_lost writing to another transport of the same step gets its
    bytes out after that transport's own."""
    errors = Errors()
    loop.set_exception_handler(errors)

    async def main():
        bad_t, bad_p, bad_peer = await connected(loop)
        good = [await connected(loop) for _ in range(3)]
        bad_t.pause_reading()
        bad_peer.setsockopt(
            socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
        )
        bad_peer.close()
        await asyncio.sleep(0.05)
        lost = bad_p.connection_lost

        def connection_lost(exc):
            good[0][0].write(b"after")
            lost(exc)

        bad_p.connection_lost = connection_lost

        def write_all():
            bad_t.write(b"a" * 100)
            for i, (t, _, _) in enumerate(good):
                t.write(b"good%d" % i)

        await in_callback(loop, write_all)
        exc = await bad_p.closed
        got = []
        for i, (t, p, peer) in enumerate(good):
            want = b"good%d" % i + (b"after" if i == 0 else b"")
            got.append(await loop.run_in_executor(None, read_exactly, peer, len(want)))
            t.close()
            await p.closed
            peer.close()
        return exc, len(bad_p.lost), got

    exc, nlost, got = run(loop, main())
    assert isinstance(exc, (ConnectionResetError, BrokenPipeError))
    assert nlost == 1
    assert got == [b"good0after", b"good1", b"good2"]
    assert errors.contexts == []


def test_partial_send_among_several_in_one_iteration(loop):
    """A deferred write the socket takes only part of: the rest is buffered and sent when
    the socket drains, as after a direct send, while the other transports' go out."""

    async def main():
        conns = []
        for _ in range(3):
            # A Unix pair: its small send buffer bounds what one send takes.
            ours, peer = socket.socketpair()
            ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 * KiB)
            transport, proto = await loop.connect_accepted_socket(Recorder, ours)
            peer.setblocking(True)
            peer.settimeout(10)
            conns.append((transport, proto, peer))
        big = bytes(range(256)) * 240  # 60 KiB: deferred, more than the socket takes

        def write_all():
            conns[0][0].write(big)
            conns[1][0].write(b"small")
            conns[2][0].write(big[:1000])

        await in_callback(loop, write_all)
        await asyncio.sleep(0)
        buffered = conns[0][0].get_write_buffer_size()
        got0 = await loop.run_in_executor(None, read_exactly, conns[0][2], len(big))
        got1 = await loop.run_in_executor(None, read_exactly, conns[1][2], 5)
        got2 = await loop.run_in_executor(None, read_exactly, conns[2][2], 1000)
        for t, p, peer in conns:
            t.close()
            await p.closed
            peer.close()
        return buffered, got0 == big, got1, got2 == big[:1000]

    buffered, ok0, got1, ok2 = run(loop, main())
    assert 0 < buffered < 60 * KiB
    assert ok0 and got1 == b"small" and ok2


def test_would_block_send_among_several_in_one_iteration(loop):
    """A deferred write to a socket whose buffer is already full (filled behind the
    transport's back) would block: it is buffered and sent once the peer reads, as after
    a direct send, and the loop does not wait for it meanwhile."""

    async def main():
        conns = []
        for _ in range(2):
            ours, peer = socket.socketpair()
            transport, proto = await loop.connect_accepted_socket(Recorder, ours)
            peer.settimeout(10)
            conns.append((transport, proto, peer, ours))
        filled = 0
        try:
            while True:
                filled += os.write(conns[0][3].fileno(), b"f" * 4096)
        except BlockingIOError:
            pass

        def write_all():
            conns[0][0].write(b"late")
            conns[1][0].write(b"prompt")

        await in_callback(loop, write_all)
        await asyncio.sleep(0)
        buffered = conns[0][0].get_write_buffer_size()
        prompt = await loop.run_in_executor(None, read_exactly, conns[1][2], 6)
        got0 = await loop.run_in_executor(None, read_exactly, conns[0][2], filled + 4)
        for t, p, peer, _ in conns:
            t.close()
            await p.closed
            peer.close()
        return buffered, prompt, got0[filled:]

    buffered, prompt, late = run(loop, main())
    assert buffered == 4
    assert prompt == b"prompt" and late == b"late"
