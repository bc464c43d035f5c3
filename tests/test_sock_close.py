"""Closing a socket while a `sock_*` call waits on it, and closing the loop while one
waits (uvloop's test_socket_recv_and_close and friends).

On asyncio a call whose socket is closed waits forever: the kernel drops the fd from epoll
without telling anyone, and the fd number may be reused by the next socket. ferroloop keeps
the socket open under a waiting call (one more io reference, as `makefile()` and uvloop
take), so `close()` only marks it closed; the loop looks at waiting calls' sockets once a
second and ends a call whose socket was closed with OSError(EBADF), which closes it for
real (README: differences from asyncio). Those tests run on ferroloop only; what asyncio
does the same is tested on both loops."""

from __future__ import annotations

import asyncio
import errno
import socket
import time

import ferroloop
import pytest
from helpers import LOCAL, pair, run

# asyncio hangs in these cases; the tests check ferroloop's fix.
ferroloop_only = pytest.mark.parametrize("loop_factory", ["ferroloop"], indirect=True)

# The loop looks at the sockets of waiting calls once a second.
CHECK = 1.0


async def ends_with_ebadf(call: asyncio.Future) -> float:
    """Awaits `call`, which must fail with EBADF within a few checks; returns the wait."""
    t0 = time.monotonic()
    with pytest.raises(OSError) as e:
        await asyncio.wait_for(call, 4 * CHECK)
    assert e.value.errno == errno.EBADF
    return time.monotonic() - t0


@ferroloop_only
def test_recv_then_close(loop):
    async def main():
        csock, conn = await pair(loop)
        with csock, conn:
            call = asyncio.ensure_future(loop.sock_recv(csock, 10))
            await asyncio.sleep(0.05)
            csock.close()
            assert csock.fileno() != -1  # still held by the waiting call
            await ends_with_ebadf(call)
            assert csock.fileno() == -1  # released: closed for real
            assert await loop.sock_recv(conn, 10) == b""  # the peer sees the close

    run(loop, main())


@ferroloop_only
def test_recv_into_then_close(loop):
    async def main():
        csock, conn = await pair(loop)
        with csock, conn:
            buf = bytearray(10)
            call = asyncio.ensure_future(loop.sock_recv_into(csock, buf))
            await asyncio.sleep(0.05)
            csock.close()
            await ends_with_ebadf(call)
            assert csock.fileno() == -1

    run(loop, main())


@ferroloop_only
def test_accept_then_close(loop):
    async def main():
        lsock = socket.socket()
        lsock.bind((LOCAL, 0))
        lsock.listen()
        lsock.setblocking(False)
        call = asyncio.ensure_future(loop.sock_accept(lsock))
        await asyncio.sleep(0.05)
        lsock.close()
        await ends_with_ebadf(call)
        assert lsock.fileno() == -1

    run(loop, main())


@ferroloop_only
def test_sendall_then_close(loop):
    async def main():
        csock, conn = await pair(loop)
        with csock, conn:
            call = asyncio.ensure_future(loop.sock_sendall(csock, b"x" * (64 * 1024 * 1024)))
            await asyncio.sleep(0.05)
            assert not call.done()  # the peer reads nothing: the send waits
            csock.close()
            await ends_with_ebadf(call)
            assert csock.fileno() == -1

    run(loop, main())


@ferroloop_only
def test_data_arriving_before_the_check_completes_the_call(loop):
    # The fd stays open under the call, so data that arrives first is still received.
    async def main():
        csock, conn = await pair(loop)
        with csock, conn:
            call = asyncio.ensure_future(loop.sock_recv(csock, 10))
            await asyncio.sleep(0.05)
            csock.close()
            await loop.sock_sendall(conn, b"helo")
            assert await asyncio.wait_for(call, 4 * CHECK) == b"helo"
            assert csock.fileno() == -1

    run(loop, main())


@ferroloop_only
def test_connect_then_close_soon(loop):
    # uvloop's test_socket_connect_and_close: the connect that is under way completes.
    async def main():
        with socket.socket() as lsock:
            lsock.bind((LOCAL, 0))
            lsock.listen()
            sock = socket.socket()
            sock.setblocking(False)
            call = asyncio.ensure_future(loop.sock_connect(sock, lsock.getsockname()))
            loop.call_soon(sock.close)
            try:
                await asyncio.wait_for(call, 4 * CHECK)
            except OSError as e:
                assert e.errno == errno.EBADF
            assert sock.fileno() == -1

    run(loop, main())


@ferroloop_only
def test_closed_fd_number_is_not_reused_under_a_waiting_call(loop):
    async def main():
        csock, conn = await pair(loop)
        with csock, conn:
            call = asyncio.ensure_future(loop.sock_recv(csock, 10))
            await asyncio.sleep(0.05)
            fd = csock.fileno()
            csock.close()
            with socket.socket() as other:
                assert other.fileno() != fd
            await ends_with_ebadf(call)

    run(loop, main())


@ferroloop_only
def test_closing_the_loop_releases_a_socket_closed_under_a_call(loop):
    # uvloop's test_socket_close_loop_and_close.
    a, b = socket.socketpair()
    a.setblocking(False)
    with b:

        async def main():
            asyncio.ensure_future(loop.sock_recv(a, 10))
            await asyncio.sleep(0.05)

        loop.run_until_complete(main())
        a.close()
        assert a.fileno() != -1  # the loop still holds it
        loop.close()
        assert a.fileno() == -1


def test_closing_the_loop_while_a_call_waits(loop):
    # The socket stays the caller's: open, with no reference of the loop's left.
    a, b = socket.socketpair()
    a.setblocking(False)
    with a, b:

        async def main():
            asyncio.ensure_future(loop.sock_recv(a, 10))
            await asyncio.sleep(0.05)

        loop.run_until_complete(main())
        loop.close()
        assert a.fileno() != -1
        assert a._io_refs == 0
        b.send(b"x")
        assert a.recv(1) == b"x"


def test_cancelled_call_gives_the_socket_back(loop):
    async def main():
        csock, conn = await pair(loop)
        with conn:
            call = asyncio.ensure_future(loop.sock_recv(csock, 10))
            await asyncio.sleep(0.05)
            call.cancel()
            with pytest.raises(asyncio.CancelledError):
                await call
            await asyncio.sleep(0)
            assert csock._io_refs == 0
            csock.close()
            assert csock.fileno() == -1

    run(loop, main())


def test_runner_shutdown_with_a_call_waiting(loop):
    # asyncio.run()'s shutdown: the waiting call's task is cancelled, the loop closed.
    a, b = socket.socketpair()
    a.setblocking(False)
    with a, b:

        async def main():
            asyncio.ensure_future(loop.sock_recv(a, 10))
            await asyncio.sleep(0.05)

        loop.run_until_complete(main())
        tasks = asyncio.all_tasks(loop)
        for t in tasks:
            t.cancel()
        loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
        loop.close()
        assert a.fileno() != -1
        assert a._io_refs == 0


def test_ferroloop_run_with_a_call_waiting_on_a_closed_socket():
    # A whole program: the call ends with EBADF rather than holding the program forever.
    async def main():
        loop = asyncio.get_running_loop()
        a, b = socket.socketpair()
        a.setblocking(False)
        with b:
            call = asyncio.ensure_future(loop.sock_recv(a, 10))
            await asyncio.sleep(0.05)
            a.close()
            try:
                await call
            except OSError as e:
                return e.errno

    assert ferroloop.run(main()) == errno.EBADF
