"""An echo server on one loop: `python benchmarks/net_server.py LOOP API`.

API is one of `protocol`, `streams`, `sock`, `buffered`, and `tls-protocol`, `tls-streams`
(the first two with `ssl=`: benchmarks/net_tls.py). The server listens on
127.0.0.1 on a port of the kernel's choosing, prints one line `READY <port> <pid>` on
stdout once it accepts connections, and serves until it is killed (`net.py` kills it
once its load generator has finished). Every connection is a plain echo: every byte
received is sent back, in order. The four servers are the usual echo-benchmark
servers (as in uvloop's `examples/bench/echoserver.py`), written the idiomatic way
for each API:

- protocol: `asyncio.Protocol`, `data_received(data)` -> `transport.write(data)`.
- streams:  `asyncio.start_server`; `data = await reader.read(256 KiB)`,
            `writer.write(data)`, `await writer.drain()`.
- sock:     a non-blocking listening socket; `await loop.sock_accept()`, one task per
            connection: `await loop.sock_recv(conn, 256 KiB)`, `await loop.sock_sendall()`;
            TCP_NODELAY set on each accepted socket (transports set it themselves).
- buffered: `asyncio.BufferedProtocol` with one 256 KiB bytearray per connection;
            `buffer_updated(n)` -> `transport.write(buf[:n])` (a copy, as the buffer is
            reused by the next read).

Errors (an API the loop lacks, an exception in a callback) go to stderr, which
`net.py` reads to report a cell as n/a with the error.
"""

from __future__ import annotations

import asyncio
import os
import socket
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import net_tls  # noqa: E402
from worker import make_loop  # noqa: E402

READ_SIZE = 256 * 1024  # what asyncio's selector transports read per recv


class EchoProtocol(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None  # type: ignore[assignment]


class EchoBufferedProtocol(asyncio.BufferedProtocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]
        self.buffer = bytearray(READ_SIZE)

    def get_buffer(self, sizehint: int) -> bytearray:
        return self.buffer

    def buffer_updated(self, nbytes: int) -> None:
        self.transport.write(self.buffer[:nbytes])

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None  # type: ignore[assignment]


async def streams_handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    read = reader.read
    write = writer.write
    drain = writer.drain
    try:
        while True:
            data = await read(READ_SIZE)
            if not data:
                break
            write(data)
            await drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


async def sock_echo(loop: asyncio.AbstractEventLoop, conn: socket.socket) -> None:
    recv = loop.sock_recv
    sendall = loop.sock_sendall
    with conn:
        try:
            while True:
                data = await recv(conn, READ_SIZE)
                if not data:
                    break
                await sendall(conn, data)
        except ConnectionError:
            pass


async def sock_server(loop: asyncio.AbstractEventLoop, lsock: socket.socket) -> None:
    tasks = set()
    while True:
        conn, _ = await loop.sock_accept(lsock)
        conn.setblocking(False)
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        t = loop.create_task(sock_echo(loop, conn))
        tasks.add(t)
        t.add_done_callback(tasks.discard)


def ready(port: int) -> None:
    print(f"READY {port} {os.getpid()}", flush=True)


async def main(loop: asyncio.AbstractEventLoop, api: str) -> None:
    tls = None
    if api.startswith("tls-"):  # the TLS rows (net_tls.py): the same servers with ssl=
        api, tls = api[4:], net_tls.server_context()
    if api == "protocol":
        server = await loop.create_server(EchoProtocol, "127.0.0.1", 0, backlog=128, ssl=tls)
    elif api == "buffered":
        server = await loop.create_server(EchoBufferedProtocol, "127.0.0.1", 0, backlog=128)
    elif api == "streams":
        server = await asyncio.start_server(
            streams_handler, "127.0.0.1", 0, backlog=128, ssl=tls
        )
    elif api == "sock":
        lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        lsock.bind(("127.0.0.1", 0))
        lsock.listen(128)
        lsock.setblocking(False)
        ready(lsock.getsockname()[1])
        await sock_server(loop, lsock)
        return
    else:
        raise SystemExit(f"unknown API {api!r}")
    ready(server.sockets[0].getsockname()[1])
    await asyncio.Event().wait()  # serve until killed


def run() -> None:
    if len(sys.argv) != 3:
        raise SystemExit("usage: net_server.py LOOP API")
    kind, api = sys.argv[1], sys.argv[2]
    loop = make_loop(kind)
    asyncio.set_event_loop(loop)

    def handler(loop: asyncio.AbstractEventLoop, context: dict) -> None:
        # Anything reaching the handler is a server-side failure worth reporting.
        exc = context.get("exception")
        msg = context.get("message", "")
        print(f"ERROR {msg}: {exc!r}", file=sys.stderr, flush=True)

    loop.set_exception_handler(handler)
    loop.run_until_complete(main(loop, api))


if __name__ == "__main__":
    run()
