"""A small program for `make valgrind`: it runs every native part of ferroloop once or a
few times (handles and their pool, timers and cancelling, fd watchers, the socket calls,
the stream transport, a socket closed under a waiting call, misuse that must raise,
call_soon_threadsafe, garbage-collected cycles, closing) so that valgrind sees each code
path of the extension. Small on purpose: it runs ~50 times slower under valgrind."""

from __future__ import annotations

import asyncio
import gc
import socket
import threading

import ferroloop


async def sockets(loop: asyncio.AbstractEventLoop) -> None:
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    with a, b:
        for size in (1, 100, 20_000, 200_000):
            sending = asyncio.ensure_future(loop.sock_sendall(a, b"x" * size))
            got = 0
            while got < size:
                got += len(await loop.sock_recv(b, 300_000))
            await sending
            buf = bytearray(16)
            await loop.sock_sendall(a, memoryview(b"y" * 16))
            assert await loop.sock_recv_into(b, buf) == 16
        assert await loop.sock_recv(b, 0) == b""
        waiting = asyncio.ensure_future(loop.sock_recv(b, 10))
        await asyncio.sleep(0.01)
        waiting.cancel()
    c, d = socket.socketpair()
    c.setblocking(False)
    with d:
        closed_under = asyncio.ensure_future(loop.sock_recv(c, 10))
        await asyncio.sleep(0.01)
        c.close()
        try:
            await asyncio.wait_for(closed_under, 5)
        except OSError:
            pass


async def streams(loop: asyncio.AbstractEventLoop) -> None:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    for size in (10, 70_000, 1_000_000):
        writer.write(b"z" * size)
        writer.writelines([b"a", bytearray(b"b"), memoryview(b"cXdX")[::2]])
        await reader.readexactly(size + 4)
    writer.transport.set_write_buffer_limits(high=1000.5)
    writer.close()
    await writer.wait_closed()
    server.close()
    await server.wait_closed()


async def scheduling(loop: asyncio.AbstractEventLoop) -> None:
    done = loop.create_future()
    count = [0]

    def cb(i: int) -> None:
        count[0] += 1
        if count[0] == 3000:
            done.set_result(None)

    for i in range(3000):
        loop.call_soon(cb, i)
    await done
    timers = [loop.call_later(0.001 * (i % 5), lambda: None) for i in range(500)]
    for t in timers[::2]:
        t.cancel()
    loop.call_at(10**12 + 7, lambda: None).cancel()
    loop.call_at(float("inf"), lambda: None).cancel()
    await asyncio.sleep(0.01)
    threads = [threading.Thread(target=loop.call_soon_threadsafe, args=(cb, 0)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    await asyncio.gather(*(asyncio.sleep(0) for _ in range(200)))
    for bad in (lambda: loop.call_at("x", print), lambda: loop.add_reader(2**40, print)):
        try:
            bad()
        except (TypeError, OverflowError):
            pass
    s = socket.socket()
    loop.add_reader(s, print)
    s.close()
    assert loop.remove_reader(s)


async def main() -> None:
    loop = asyncio.get_running_loop()
    await scheduling(loop)
    await sockets(loop)
    await streams(loop)


def cycles() -> None:
    loop = ferroloop.new_event_loop()
    holder: list[object] = []
    holder.append(loop.call_soon(holder.append, holder))
    holder.append(loop.call_later(1, holder.append, loop))
    del holder
    loop.close()
    del loop
    gc.collect()


if __name__ == "__main__":
    ferroloop.run(main())
    ferroloop.run(main(), debug=True)
    cycles()
    print("valgrind workload: done")
