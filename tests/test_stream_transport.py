"""Edge cases of the stream transport's write path, on the stock loop and on ferroloop."""

from __future__ import annotations

import array
import asyncio
import logging
import sys

import pytest


class Collect(asyncio.Protocol):
    def __init__(self, expected: int) -> None:
        self.data = bytearray()
        self.expected = expected
        self.done = asyncio.get_running_loop().create_future()

    def data_received(self, data: bytes) -> None:
        self.data.extend(data)
        if len(self.data) >= self.expected and not self.done.done():
            self.done.set_result(bytes(self.data))


async def _pair(expected: int):
    loop = asyncio.get_running_loop()
    sink: list[Collect] = []

    def factory() -> Collect:
        sink.append(Collect(expected))
        return sink[-1]

    server = await loop.create_server(factory, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    transport, _ = await loop.create_connection(asyncio.Protocol, "127.0.0.1", port)
    while not sink:
        await asyncio.sleep(0)
    return server, transport, sink[0]


def test_writelines_more_buffers_than_iov_max(loop):
    chunks = [bytes([i % 251]) * 7 for i in range(3000)]

    async def main():
        server, transport, sink = await _pair(7 * 3000)
        transport.writelines(chunks)
        got = await asyncio.wait_for(sink.done, 10)
        transport.close()
        server.close()
        await server.wait_closed()
        return got

    assert loop.run_until_complete(main()) == b"".join(chunks)


def test_write_accepts_bytes_like(loop):
    ints = array.array("i", [1, 2, 3])
    parts = [b"ab", bytearray(b"cd"), memoryview(b"efgh")[1:3], memoryview(ints)]
    expected = b"abcdfg" + ints.tobytes()

    async def main():
        server, transport, sink = await _pair(len(expected))
        for p in parts:
            transport.write(p)
        got = await asyncio.wait_for(sink.done, 10)
        transport.close()
        server.close()
        await server.wait_closed()
        return got

    assert loop.run_until_complete(main()) == expected


def test_write_errors(loop):
    async def main():
        server, transport, _ = await _pair(1)
        with pytest.raises(TypeError):
            transport.write("text")
        transport.write_eof()
        with pytest.raises(RuntimeError):
            transport.write(b"after eof")
        transport.close()
        server.close()
        await server.wait_closed()

    loop.run_until_complete(main())


def test_writes_after_connection_lost_warn(loop, caplog):
    async def main():
        server, transport, _ = await _pair(1)
        transport.abort()
        await asyncio.sleep(0.01)
        with caplog.at_level(logging.WARNING, logger="asyncio"):
            for _ in range(8):
                transport.write(b"x")
        server.close()
        await server.wait_closed()

    loop.run_until_complete(main())
    assert "socket.send() raised exception." in caplog.text


@pytest.mark.parametrize(
    "loop_factory",
    [
        pytest.param(
            "asyncio",
            marks=pytest.mark.xfail(
                sys.version_info >= (3, 13),
                strict=True,
                reason="asyncio 3.13's transport __del__ detaches from the server it never "
                "attached to, and Server._wakeup() raises TypeError",
            ),
        ),
        "ferroloop",
    ],
    indirect=True,
)
def test_connection_accepted_as_the_server_closes(loop, tmp_path):
    """A connection accepted after server.close() has no transport (asyncio's Server refuses
    to attach one: an AssertionError, reported in debug mode only); the socket it leaves is
    collected with a ResourceWarning and no error from the transport's __del__."""
    import gc
    import warnings

    unraisable: list[object] = []
    # Keep only the messages: a context kept (or logged) holds the half-made transport.
    reported: list[str] = []
    loop.set_exception_handler(lambda _loop, ctx: reported.append(ctx["message"]))

    async def main():
        path = str(tmp_path / "s")
        server = await loop.create_unix_server(asyncio.Protocol, path)
        transport, _ = await loop.create_unix_connection(asyncio.Protocol, path)
        server.close()  # before the accept callback runs
        await server.wait_closed()
        await asyncio.sleep(0.01)
        transport.close()
        await asyncio.sleep(0)

    old_hook = sys.unraisablehook
    sys.unraisablehook = unraisable.append
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ResourceWarning)
            loop.run_until_complete(main())
            loop.close()
            gc.collect()
    finally:
        sys.unraisablehook = old_hook
    assert unraisable == []


@pytest.mark.skipif(sys.version_info < (3, 12), reason="asyncio refuses it from 3.12 on")
def test_second_transport_on_a_socket_is_refused(loop):
    """create_connection(sock=) with a socket that already has a transport raises asyncio's
    RuntimeError, and the first transport keeps working."""

    import socket

    async def main():
        sink: list[Collect] = []

        def factory() -> Collect:
            sink.append(Collect(5))
            return sink[-1]

        server = await loop.create_server(factory, "127.0.0.1", 0)
        sock = socket.create_connection(server.sockets[0].getsockname())
        sock.setblocking(False)
        transport, _ = await loop.create_connection(asyncio.Protocol, sock=sock)
        with pytest.raises(RuntimeError, match="is used by transport"):
            await loop.create_connection(asyncio.Protocol, sock=sock)
        while not sink:
            await asyncio.sleep(0)
        peer = sink[0]
        if sys.version_info >= (3, 14):
            # gh-153133 (3.14.x): a socket whose transport was never made is closed, even
            # this one, whose fd the first transport was using.
            assert sock.fileno() == -1
            transport.abort()
            await asyncio.sleep(0)
        else:
            transport.write(b"still")
            assert await asyncio.wait_for(peer.done, 5) == b"still"
            transport.close()
        server.close()
        await server.wait_closed()

    loop.run_until_complete(main())
