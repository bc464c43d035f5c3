"""The cases of the adversarial probe (issue 9) that are not about timers or fds (those are
in test_timer_values.py and test_fd_registry.py): socket calls at their limits, a closed
loop, transports' buffer limits, debug flags. Each runs on both loops, except where
asyncio's own behaviour is a bug that ferroloop keeps clear of (README: differences from
asyncio), which run on ferroloop only and say why."""

from __future__ import annotations

import array
import asyncio
import socket
import sys

import pytest
from helpers import LOCAL, pair, run, run_for

ferroloop_only = pytest.mark.parametrize("loop_factory", ["ferroloop"], indirect=True)


# --------------------------------------------------------------------------- socket calls


def test_recv_zero_with_nothing_queued_returns_at_once(loop):
    async def main():
        csock, conn = await pair(loop)
        with csock, conn:
            assert await asyncio.wait_for(loop.sock_recv(conn, 0), 5) == b""
            assert await asyncio.wait_for(loop.sock_recv_into(conn, bytearray()), 5) == 0
            await loop.sock_sendall(csock, b"kept")
            await asyncio.sleep(0.01)
            assert await loop.sock_recv(conn, 0) == b""  # nothing consumed
            assert await loop.sock_recv(conn, 10) == b"kept"

    run(loop, main())


@pytest.mark.parametrize("n, exc_type", [(2**62, MemoryError), (2**63, OverflowError)])
def test_recv_of_an_impossible_size(loop, n, exc_type):
    # socket.recv allocates the size asked for before it reads.
    async def main():
        csock, conn = await pair(loop)
        with csock, conn:
            await loop.sock_sendall(csock, b"queued")
            await asyncio.sleep(0.01)
            with pytest.raises(exc_type):
                await loop.sock_recv(conn, n)
            assert await loop.sock_recv(conn, 10) == b"queued"

    run(loop, main())


def test_recv_negative_size(loop):
    async def main():
        csock, conn = await pair(loop)
        with csock, conn:
            with pytest.raises(ValueError):
                await loop.sock_recv(conn, -1)

    run(loop, main())


def test_sendall_strided_memoryview_is_a_buffer_error(loop):
    async def main():
        csock, conn = await pair(loop)
        with csock, conn:
            with pytest.raises(BufferError):
                await loop.sock_sendall(csock, memoryview(b"abcdef")[::2])

    run(loop, main())


@ferroloop_only
def test_sendall_multibyte_array_completes(loop):
    # asyncio compares the bytes sent with len(data), counted in items, so a multi-byte
    # array never completes there.
    async def main():
        csock, conn = await pair(loop)
        with csock, conn:
            data = array.array("i", range(1000))
            await asyncio.wait_for(loop.sock_sendall(csock, data), 5)
            got = b""
            while len(got) < len(data.tobytes()):
                got += await loop.sock_recv(conn, 65536)
            assert got == data.tobytes()

    run(loop, main())


# --------------------------------------------------------------------------- closed loop


def test_getaddrinfo_on_a_closed_loop(loop):
    loop.close()
    coro = loop.getaddrinfo(LOCAL, 80)
    with pytest.raises(RuntimeError, match="closed"):
        coro.send(None)


def test_transport_write_on_a_closed_loop_keeps_nothing(loop):
    # The write that cannot register its writer raises before buffering, as asyncio's:
    # nothing is buffered, and close() (which then schedules connection_lost) raises too.
    lsock = socket.create_server((LOCAL, 0))
    with lsock:

        async def connect():
            return await loop.create_connection(asyncio.Protocol, *lsock.getsockname())

        tr, _ = run(loop, connect())
        peer, _ = lsock.accept()
        with peer:
            sock = tr.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
            loop.close()
            with pytest.raises(RuntimeError, match="closed"):
                tr.write(b"x" * (8 * 1024 * 1024))
            assert tr.get_write_buffer_size() == 0
            with pytest.raises(RuntimeError, match="closed"):
                tr.close()
            tr._sock.close()  # what the loop would have done; the test owns it now


# --------------------------------------------------------------------------- transports


async def _transport(loop):
    lsock = socket.create_server((LOCAL, 0))
    tr, _ = await loop.create_connection(asyncio.Protocol, *lsock.getsockname())
    peer, _ = lsock.accept()
    lsock.close()
    return tr, peer


@pytest.mark.parametrize(
    "kwargs, limits",
    [
        ({"high": 100000.0}, (25000.0, 100000.0)),
        ({"high": 2**70}, (2**68, 2**70)),
        ({"low": 10}, (10, 40)),
        ({"high": 7, "low": 7}, (7, 7)),
        ({}, (16384, 65536)),
    ],
    ids=["float", "2**70", "low-only", "equal", "defaults"],
)
def test_set_write_buffer_limits_numbers(loop, kwargs, limits):
    async def main():
        tr, peer = await _transport(loop)
        with peer:
            tr.set_write_buffer_limits(**kwargs)
            got = tr.get_write_buffer_limits()
            assert got == limits
            assert [type(x) for x in got] == [type(x) for x in limits]
            tr.close()
            await asyncio.sleep(0)

    run(loop, main())


@pytest.mark.parametrize(
    "kwargs, exc_type",
    [
        ({"high": 1, "low": 2}, ValueError),
        ({"high": -4}, ValueError),
        ({"high": float("nan")}, ValueError),
        ({"high": "x"}, TypeError),
    ],
    ids=["low>high", "negative", "nan", "str"],
)
def test_set_write_buffer_limits_refused(loop, kwargs, exc_type):
    async def main():
        tr, peer = await _transport(loop)
        with peer:
            with pytest.raises(exc_type):
                tr.set_write_buffer_limits(**kwargs)
            tr.close()
            await asyncio.sleep(0)

    run(loop, main())


def test_float_high_water_mark_pauses_past_it(loop):
    class Flow(asyncio.Protocol):
        paused = False

        def pause_writing(self):
            self.paused = True

    async def main():
        lsock = socket.create_server((LOCAL, 0))
        tr, proto = await loop.create_connection(Flow, *lsock.getsockname())
        peer, _ = lsock.accept()
        lsock.close()
        with peer:
            tr.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
            tr.set_write_buffer_limits(high=1000.5)
            while tr.get_write_buffer_size() == 0:
                tr.write(b"x" * 65536)
            assert proto.paused == (tr.get_write_buffer_size() > 1000.5)
            tr.abort()
            await asyncio.sleep(0)

    run(loop, main())


@ferroloop_only
def test_strided_memoryview_written_to_a_transport_is_sent(loop):
    # asyncio's socket.send() refuses it with BufferError, a fatal error that closes the
    # transport; ferroloop sends its bytes in order.
    async def main():
        tr, peer = await _transport(loop)
        with peer:
            tr.write(memoryview(b"aXbXcX")[::2])
            await asyncio.sleep(0.01)
            assert peer.recv(10) == b"abc"
            tr.close()
            await asyncio.sleep(0)

    run(loop, main())


@ferroloop_only
def test_abort_inside_resume_writing(loop):
    # On asyncio the transport's _write_ready goes on after resume_writing() aborted it and
    # its handler gets an AttributeError; on ferroloop the transport just closes.
    errors = []
    loop.set_exception_handler(lambda lp, ctx: errors.append(ctx))

    class AbortOnResume(asyncio.Protocol):
        def __init__(self):
            self.lost = loop.create_future()

        def connection_made(self, tr):
            self.tr = tr

        def resume_writing(self):
            self.tr.abort()

        def connection_lost(self, exc):
            self.lost.set_result(exc)

    async def main():
        lsock = socket.create_server((LOCAL, 0))
        tr, proto = await loop.create_connection(AbortOnResume, *lsock.getsockname())
        peer, _ = lsock.accept()
        lsock.close()
        with peer:
            peer.setblocking(False)
            tr.set_write_buffer_limits(high=4096)
            tr.write(b"x" * (4 * 1024 * 1024))
            while not proto.lost.done():
                try:
                    peer.recv(1 << 20)
                except BlockingIOError:
                    pass
                await asyncio.sleep(0.001)
            assert await proto.lost is None

    run(loop, main())
    assert errors == []


@ferroloop_only
def test_reader_on_a_reused_fd_number_runs(loop):
    # A reader left on a closed socket's fd number: when the number comes back with a new
    # socket and a reader is added for it, ferroloop watches the new file. asyncio's
    # selector keeps the dead registration and the reader silently never runs.
    a, b = socket.socketpair()
    fd = a.fileno()
    loop.add_reader(fd, lambda: None)
    a.close()
    b.close()
    c, d = socket.socketpair()
    with c, d:
        if c.fileno() != fd:
            pytest.skip("the fd number was not reused")
        got = []
        loop.add_reader(c.fileno(), lambda: got.append(c.recv(10)))
        d.send(b"new")
        run_for(loop, 0.05)
        assert got and got[0] == b"new"
        loop.remove_reader(c.fileno())


# --------------------------------------------------------------------------- debug, handles


def test_get_debug_returns_what_set_debug_got(loop):
    loop.set_debug(1)
    assert loop.get_debug() == 1 and type(loop.get_debug()) is int
    loop.set_debug("")
    assert loop.get_debug() == ""
    loop.set_debug(False)
    assert loop.get_debug() is False


def test_handle_get_context_from_312(loop):
    h = loop.call_soon(lambda: None)
    assert hasattr(h, "get_context") == (sys.version_info >= (3, 12))
    h.cancel()


@ferroloop_only
def test_equal_deadlines_run_in_scheduling_order(loop):
    # asyncio documents no order for equal deadlines (its heap gives none); ferroloop
    # runs them in the order they were scheduled.
    out = []
    when = loop.time() - 1
    for i in range(50):
        loop.call_at(when, out.append, i)
    run_for(loop, 0.01)
    assert out == list(range(50))
