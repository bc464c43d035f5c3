"""The low-level socket calls (`loop.sock_recv` and friends): results, waiting, errors,
cancellation and what they leave behind, on the stock loop and on ferroloop alike."""

from __future__ import annotations

import array
import asyncio
import errno
import os
import socket
import ssl
import sys

import pytest
from helpers import LOCAL, pair, run

LINGER_0 = b"\x01\x00\x00\x00\x00\x00\x00\x00"  # SO_LINGER on, 0 s: close() sends RST
needs_311 = pytest.mark.skipif(sys.version_info < (3, 11), reason="asyncio 3.11+ API")


def watched(loop, sock) -> bool:
    """Whether the loop still watches `sock` for anything (asyncio's selector view)."""
    try:
        loop._selector.get_key(sock.fileno())
    except KeyError:
        return False
    return True


def test_calls_are_coroutines_that_run_only_when_awaited(loop):
    async def main():
        csock, conn = await pair(loop)
        with csock, conn:
            csock.send(b"data")
            await asyncio.sleep(0.01)
            call = loop.sock_recv(conn, 10)
            assert asyncio.iscoroutine(call)
            call.close()  # never awaited: nothing was read
            assert await asyncio.create_task(loop.sock_recv(conn, 10)) == b"data"

    run(loop, main())


def test_recv_returns_at_most_n_and_waits_for_data(loop):
    async def main():
        csock, conn = await pair(loop)
        with csock, conn:
            waiting = asyncio.create_task(loop.sock_recv(conn, 3))
            await asyncio.sleep(0.01)
            assert not waiting.done()
            assert watched(loop, conn)
            await loop.sock_sendall(csock, b"abcdef")
            assert await waiting == b"abc"
            assert await loop.sock_recv(conn, 100) == b"def"
            await asyncio.sleep(0)
            assert not watched(loop, conn)

    run(loop, main())


@pytest.mark.parametrize("size", [1, 1000, 20_000, 300_000])
def test_recv_large_and_small_requests(loop, size):
    """Reads smaller and larger than any internal buffer return exactly what was sent."""
    payload = bytes(range(256)) * (size // 256 + 1)
    payload = payload[:size]

    async def main():
        csock, conn = await pair(loop)
        with csock, conn:
            sending = asyncio.create_task(loop.sock_sendall(csock, payload))
            got = bytearray()
            while len(got) < size:
                chunk = await loop.sock_recv(conn, size)
                assert type(chunk) is bytes and 0 < len(chunk) <= size
                got += chunk
            await sending
            assert bytes(got) == payload

    run(loop, main())


def test_recv_into_buffers(loop):
    async def main():
        csock, conn = await pair(loop)
        with csock, conn:
            await loop.sock_sendall(csock, b"0123456789")
            await asyncio.sleep(0.01)
            buf = bytearray(4)
            assert await loop.sock_recv_into(conn, buf) == 4 and buf == b"0123"
            view = memoryview(bytearray(10))[2:5]
            assert await loop.sock_recv_into(conn, view) == 3
            assert bytes(view) == b"456"
            arr = array.array("b", [0] * 8)  # another item format: still a writable buffer
            assert await loop.sock_recv_into(conn, arr) == 3
            assert arr.tobytes()[:3] == b"789"
            with pytest.raises(TypeError):
                await loop.sock_recv_into(conn, b"read-only")

    run(loop, main())


def test_recv_bad_size_raises_like_socket_recv(loop):
    async def main():
        csock, conn = await pair(loop)
        with csock, conn:
            with pytest.raises(ValueError):
                await loop.sock_recv(conn, -1)
            with pytest.raises(TypeError):
                await loop.sock_recv(conn, "10")

    run(loop, main())


def test_sendall_waits_for_a_slow_reader(loop):
    payload = b"z" * (8 * 1024 * 1024)

    async def main():
        csock, conn = await pair(loop)
        with csock, conn:
            sending = asyncio.create_task(loop.sock_sendall(csock, bytearray(payload)))
            await asyncio.sleep(0.05)
            assert not sending.done()  # far more than the socket buffers hold
            assert watched(loop, csock)
            got = 0
            while got < len(payload):
                got += len(await loop.sock_recv(conn, 1 << 20))
            assert await sending is None
            await asyncio.sleep(0)
            assert not watched(loop, csock)

    run(loop, main())


def test_sendall_accepts_buffer_types(loop):
    async def main():
        csock, conn = await pair(loop)
        with csock, conn:
            # (Multi-byte item formats are left out: asyncio compares bytes sent with
            # len(data), in items, and never finishes.)
            chunks = (b"ab", bytearray(b"cd"), memoryview(b"xxefxx")[2:4], array.array("b", b"gh"))
            for data in chunks:
                await loop.sock_sendall(csock, data)
            await loop.sock_sendall(csock, b"")
            await asyncio.sleep(0.01)
            assert await loop.sock_recv(conn, 100) == b"abcdefgh"
            with pytest.raises(TypeError):
                await loop.sock_sendall(csock, "text")

    run(loop, main())


def test_errors_come_from_the_socket(loop):
    async def main():
        csock, conn = await pair(loop)
        with csock:
            # Reset: SO_LINGER 0 then close sends RST.
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_0)
            conn.close()
            await asyncio.sleep(0.01)
            with pytest.raises(ConnectionResetError) as info:
                await loop.sock_recv(csock, 10)
            assert info.value.errno == errno.ECONNRESET
            assert info.value.strerror == "Connection reset by peer"
        with pytest.raises(OSError) as info:
            await loop.sock_recv(csock, 10)  # closed: fileno() is -1
        assert info.value.errno == errno.EBADF
        assert info.value.strerror == "Bad file descriptor"

    run(loop, main())


def test_error_while_waiting_goes_to_the_awaiting_task(loop):
    async def main():
        csock, conn = await pair(loop)
        with csock:
            waiting = asyncio.create_task(loop.sock_recv(csock, 10))
            await asyncio.sleep(0.01)
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_0)
            conn.close()
            with pytest.raises(ConnectionResetError):
                await waiting
            await asyncio.sleep(0)
            assert not watched(loop, csock)

    run(loop, main())


@pytest.mark.parametrize("op", ["recv", "recv_into", "accept", "sendall"])
def test_cancel_stops_watching_and_leaves_the_socket_usable(loop, op):
    async def main():
        csock, conn = await pair(loop)
        with csock, conn, socket.socket() as lsock:
            lsock.bind((LOCAL, 0))
            lsock.listen()
            lsock.setblocking(False)
            if op == "recv":
                target, call = conn, loop.sock_recv(conn, 10)
            elif op == "recv_into":
                target, call = conn, loop.sock_recv_into(conn, bytearray(10))
            elif op == "accept":
                target, call = lsock, loop.sock_accept(lsock)
            else:
                target, call = csock, loop.sock_sendall(csock, b"q" * (32 << 20))
            task = asyncio.create_task(call)
            await asyncio.sleep(0.01)
            assert watched(loop, target)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await asyncio.sleep(0)
            assert not watched(loop, target)
            if op != "sendall":
                await loop.sock_sendall(csock, b"after")
                assert await loop.sock_recv(conn, 5) == b"after"

    run(loop, main())


def test_wait_for_timeout_then_reuse(loop):
    async def main():
        csock, conn = await pair(loop)
        with csock, conn:
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(loop.sock_recv(conn, 10), 0.02)
            await asyncio.sleep(0)
            assert not watched(loop, conn)
            await loop.sock_sendall(csock, b"later")
            assert await asyncio.wait_for(loop.sock_recv(conn, 10), 5) == b"later"

    run(loop, main())


def test_add_reader_after_finished_call_is_not_removed(loop):
    """A finished call never takes away a watcher installed after it."""

    async def main():
        csock, conn = await pair(loop)
        with csock, conn:
            await loop.sock_sendall(csock, b"x")
            assert await loop.sock_recv(conn, 1) == b"x"
            seen = asyncio.Event()
            loop.add_reader(conn.fileno(), seen.set)
            await loop.sock_sendall(csock, b"y")
            await asyncio.wait_for(seen.wait(), 5)
            assert loop.remove_reader(conn.fileno())

    run(loop, main())


def test_many_concurrent_calls(loop):
    async def main():
        pairs = [await pair(loop) for _ in range(50)]
        try:
            readers = [asyncio.create_task(loop.sock_recv(conn, 100)) for _, conn in pairs]
            await asyncio.sleep(0.01)
            await asyncio.gather(
                *(loop.sock_sendall(c, b"%d" % i) for i, (c, _) in enumerate(pairs))
            )
            assert await asyncio.gather(*readers) == [b"%d" % i for i in range(50)]
        finally:
            for c, conn in pairs:
                c.close()
                conn.close()

    run(loop, main())


def test_socket_with_timeout_is_used_through_its_methods(loop):
    """Non-debug mode lets a socket with a timeout through, as asyncio does."""
    if loop.get_debug():
        pytest.skip("debug mode (PYTHONASYNCIODEBUG) refuses sockets with a timeout")

    async def main():
        csock, conn = await pair(loop)
        with csock, conn:
            conn.settimeout(5.0)
            await loop.sock_sendall(csock, b"tm")
            assert await loop.sock_recv(conn, 10) == b"tm"

    run(loop, main())


def test_socket_subclass_is_used_through_its_methods(loop):
    calls = []

    class Traced(socket.socket):
        def recv(self, n, *args):
            calls.append(n)
            return super().recv(n, *args)

    async def main():
        csock, conn = await pair(loop)
        with csock, conn:
            traced = Traced(fileno=conn.detach())
            traced.setblocking(False)
            with traced:
                waiting = asyncio.create_task(loop.sock_recv(traced, 7))
                await asyncio.sleep(0.01)
                await loop.sock_sendall(csock, b"sub")
                assert await waiting == b"sub"
        assert calls and set(calls) == {7}

    run(loop, main())


def test_ssl_socket_is_rejected(loop):
    async def main():
        ctx = ssl.create_default_context()
        with socket.socket() as raw:
            s = ctx.wrap_socket(raw, do_handshake_on_connect=False, server_hostname="x")
            with s:
                with pytest.raises(TypeError, match="SSLSocket"):
                    await loop.sock_recv(s, 10)
                with pytest.raises(TypeError, match="SSLSocket"):
                    await loop.sock_sendall(s, b"x")

    run(loop, main())


def test_connect_by_name_and_refused_message(loop):
    async def main():
        with socket.socket() as lsock:
            lsock.bind((LOCAL, 0))
            lsock.listen()
            port = lsock.getsockname()[1]
            with socket.socket() as s:
                s.setblocking(False)
                await loop.sock_connect(s, ("localhost", port))
                assert s.getpeername()[1] == port
        with socket.socket() as probe:
            probe.bind((LOCAL, 0))
            addr = probe.getsockname()
            with socket.socket() as s:
                s.setblocking(False)
                with pytest.raises(ConnectionRefusedError) as info:
                    await loop.sock_connect(s, addr)
                assert info.value.errno == errno.ECONNREFUSED

    run(loop, main())


def test_accept_hands_out_nonblocking_sockets(loop):
    async def main():
        with socket.socket() as lsock:
            lsock.bind((LOCAL, 0))
            lsock.listen()
            lsock.setblocking(False)
            accepting = asyncio.create_task(loop.sock_accept(lsock))
            await asyncio.sleep(0.01)
            assert not accepting.done()
            with socket.create_connection(lsock.getsockname()) as c:
                conn, addr = await accepting
                with conn:
                    assert conn.gettimeout() == 0
                    assert addr == c.getsockname()

    run(loop, main())


@needs_311
def test_datagram_calls_wait_and_deliver(loop):
    async def main():
        a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        with a, b:
            for s in (a, b):
                s.bind((LOCAL, 0))
                s.setblocking(False)
            waiting = asyncio.create_task(loop.sock_recvfrom(b, 100))
            await asyncio.sleep(0.01)
            assert not waiting.done()
            assert await loop.sock_sendto(a, b"d1", b.getsockname()) == 2
            assert await waiting == (b"d1", a.getsockname())
            buf = bytearray(10)
            waiting = asyncio.create_task(loop.sock_recvfrom_into(b, buf, 1))
            await asyncio.sleep(0.01)
            await loop.sock_sendto(a, b"xy", b.getsockname())
            assert await waiting == (1, a.getsockname())  # nbytes caps the datagram
            assert buf[:1] == b"x"

    run(loop, main())


def test_task_repr_and_stack_with_a_socket_call(loop):
    async def main():
        csock, conn = await pair(loop)
        with csock, conn:
            task = asyncio.create_task(loop.sock_recv(conn, 10))
            await asyncio.sleep(0.01)
            assert "sock_recv" in repr(task)
            task.get_stack()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

    run(loop, main())


def test_fd_number_reused_after_close(loop):
    """A finished call on a socket that is then closed leaves nothing that confuses a
    new socket given the same fd number."""

    async def main():
        for _ in range(5):
            csock, conn = await pair(loop)
            fd = conn.fileno()
            await loop.sock_sendall(csock, b"1")
            assert await loop.sock_recv(conn, 10) == b"1"
            conn.close()
            csock.close()
            csock, conn = await pair(loop)
            if csock.fileno() == fd:
                csock, conn = conn, csock
            elif conn.fileno() != fd:
                os.dup2(conn.fileno(), fd)  # fd is free: both old sockets are closed
                conn.close()
                conn = socket.socket(fileno=fd)
            assert conn.fileno() == fd
            with csock, conn:
                conn.setblocking(False)
                waiting = asyncio.create_task(loop.sock_recv(conn, 10))
                await asyncio.sleep(0.01)
                await loop.sock_sendall(csock, b"2")
                assert await asyncio.wait_for(waiting, 5) == b"2"
                conn.close()

    run(loop, main())


def test_unread_data_after_a_call_does_not_spin_the_loop(loop):
    """Data arriving when no call waits is left alone, and the loop sleeps."""
    import time

    async def main():
        csock, conn = await pair(loop)
        with csock, conn:
            await loop.sock_sendall(csock, b"a")
            assert await loop.sock_recv(conn, 1) == b"a"
            await loop.sock_sendall(csock, b"unread")
            cpu = time.process_time()
            await asyncio.sleep(0.3)
            assert time.process_time() - cpu < 0.15
            assert await loop.sock_recv(conn, 10) == b"unread"

    run(loop, main())


def test_transport_on_a_socket_used_by_calls(loop):
    async def main():
        csock, conn = await pair(loop)
        with csock:
            await loop.sock_sendall(csock, b"x")
            assert await loop.sock_recv(conn, 1) == b"x"
            got = asyncio.Queue()

            class Proto(asyncio.Protocol):
                def data_received(self, data):
                    got.put_nowait(data)

            transport, _ = await loop.connect_accepted_socket(Proto, conn)
            await loop.sock_sendall(csock, b"via transport")
            assert await asyncio.wait_for(got.get(), 5) == b"via transport"
            transport.close()

    run(loop, main())


def _cpu_while_sleeping(seconds):
    import time

    async def measure():
        cpu = time.process_time()
        await asyncio.sleep(seconds)
        return time.process_time() - cpu

    return measure()


def test_closed_socket_with_a_live_dup_does_not_spin_the_loop(loop):
    """A socket read by a call, then closed while a dup of its fd lives on: data for
    the dup must not keep waking the loop."""

    async def main():
        csock, conn = await pair(loop)
        with csock:
            await loop.sock_sendall(csock, b"a")
            assert await loop.sock_recv(conn, 1) == b"a"
            dup = conn.dup()
            conn.close()
            with dup:
                await loop.sock_sendall(csock, b"unread by anyone")
                assert await _cpu_while_sleeping(0.3) < 0.15

    run(loop, main())


def test_closing_a_waiting_write_call_stops_watching(loop):
    """A sock_sendall coroutine closed while it waits (not cancelled through a task)
    leaves no busy watcher behind."""

    async def main():
        csock, conn = await pair(loop)
        with csock, conn:
            call = loop.sock_sendall(csock, b"w" * (8 << 20))
            fut = call.send(None)  # starts, fills the socket buffer, waits
            assert isinstance(fut, asyncio.Future) and not fut.done()
            call.close()
            while True:  # drain whatever the loop still sends
                try:
                    await asyncio.wait_for(loop.sock_recv(conn, 1 << 20), 0.2)
                except asyncio.TimeoutError:
                    break
            assert await _cpu_while_sleeping(0.3) < 0.15
            assert not watched(loop, csock)
            fut.cancel()

    run(loop, main())


@pytest.mark.parametrize("family", ["unix", "udp"])
def test_datagram_bigger_than_the_read_buffer_is_whole(loop, family):
    if family == "udp":
        a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        b.bind((LOCAL, 0))
        size = 60_000
    else:
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        for s in (a, b):
            s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        size = 300_000
    payload = bytes(range(256)) * (size // 256) + b"x" * (size % 256)

    async def main():
        with a, b:
            a.setblocking(False)
            b.setblocking(False)
            waiting = asyncio.create_task(loop.sock_recv(b, 1 << 20))
            await asyncio.sleep(0.01)
            if family == "udp":
                a.sendto(payload, b.getsockname())
            else:
                a.send(payload)
            assert await waiting == payload

    run(loop, main())


def test_no_objects_or_fds_left_behind(loop):
    """Thousands of calls (waiting and immediate, some cancelled) and connections leave
    no Python objects and no fds behind (the fixture checks fds at tear-down)."""
    import gc

    async def rounds(n):
        for i in range(n):
            csock, conn = await pair(loop)
            with csock, conn:
                reading = asyncio.create_task(loop.sock_recv(conn, 100))
                await asyncio.sleep(0)
                await loop.sock_sendall(csock, b"ping")
                assert await reading == b"ping"
                buf = bytearray(8)
                await loop.sock_sendall(conn, b"pong")
                assert await loop.sock_recv_into(csock, buf) == 4
                if i % 3 == 0:
                    t = asyncio.create_task(loop.sock_recv(conn, 1))
                    await asyncio.sleep(0)
                    t.cancel()
                    with pytest.raises(asyncio.CancelledError):
                        await t

    run(loop, rounds(50))  # warm-up: caches, pools, lazily created objects
    gc.collect()
    before = len(gc.get_objects())
    run(loop, rounds(500), timeout=120)
    gc.collect()
    assert len(gc.get_objects()) - before < 200


def test_awaitable_from_a_generator_based_coroutine(loop):
    import types

    @types.coroutine
    def legacy(sock):
        return (yield from loop.sock_recv(sock, 10))

    async def main():
        csock, conn = await pair(loop)
        with csock, conn:
            await loop.sock_sendall(csock, b"old style")
            await asyncio.sleep(0.01)
            assert await legacy(conn) == b"old style"
            waiting = asyncio.ensure_future(legacy(conn))
            await asyncio.sleep(0.01)
            await loop.sock_sendall(csock, b"waited")
            assert await waiting == b"waited"

    run(loop, main())


def test_unix_socket_calls(loop, tmp_path):
    path = str(tmp_path / "s.sock")

    async def main():
        with socket.socket(socket.AF_UNIX) as lsock:
            lsock.bind(path)
            lsock.listen()
            lsock.setblocking(False)
            accepting = asyncio.create_task(loop.sock_accept(lsock))
            with socket.socket(socket.AF_UNIX) as c:
                c.setblocking(False)
                await loop.sock_connect(c, path)
                conn, _ = await accepting
                with conn:
                    await loop.sock_sendall(c, b"unix")
                    assert await loop.sock_recv(conn, 10) == b"unix"
            with socket.socket(socket.AF_UNIX) as c:
                c.setblocking(False)
                with pytest.raises(FileNotFoundError):
                    await loop.sock_connect(c, path + ".missing")

    run(loop, main())


@needs_311
def test_datagram_call_errors_come_from_the_socket(loop):
    async def main():
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind((LOCAL, 0))
            s.setblocking(False)
            with pytest.raises(ValueError):
                await loop.sock_recvfrom_into(s, bytearray(4), 10)  # nbytes > len(buf)
            with pytest.raises(TypeError):
                await loop.sock_sendto(s, "text", s.getsockname())

    run(loop, main())


def test_accept_on_a_closed_listener(loop):
    async def main():
        lsock = socket.socket()
        lsock.setblocking(False)
        lsock.close()
        with pytest.raises(OSError) as info:
            await loop.sock_accept(lsock)
        assert info.value.errno == errno.EBADF

    run(loop, main())
