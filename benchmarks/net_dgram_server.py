"""The servers of benchmarks/net_dgram.py, on one loop:

    python benchmarks/net_dgram_server.py LOOP udp
    python benchmarks/net_dgram_server.py LOOP pipe RFD WFD

- udp: a UDP echo server on 127.0.0.1 (a port of the kernel's choosing), the idiomatic
  `asyncio.DatagramProtocol`: `datagram_received(data, addr)` -> `transport.sendto(data,
  addr)`. Prints `READY <port> <pid>` and serves until killed.
- pipe: a relay from the pipe RFD to the pipe WFD through `connect_read_pipe` and
  `connect_write_pipe`, with the write side's flow control pausing the read side (what a
  proxy or a subprocess's stdin feeder does). Prints `READY 0 <pid>`, relays until RFD's
  EOF, closes WFD once its buffer is written and exits.

Errors go to stderr, which net_dgram.py reads to report a cell as n/a with the error.
"""

from __future__ import annotations

import asyncio
import os
import socket
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from worker import make_loop  # noqa: E402


class Echo(asyncio.DatagramProtocol):
    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.transport.sendto(data, addr)

    def error_received(self, exc: Exception) -> None:
        print(f"ERROR error_received: {exc!r}", file=sys.stderr)


async def udp(loop: asyncio.AbstractEventLoop) -> None:
    transport, _ = await loop.create_datagram_endpoint(Echo, local_addr=("127.0.0.1", 0))
    sock = transport.get_extra_info("socket")
    # Room for every loop's bursts: a full receive buffer would drop datagrams.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    print(f"READY {sock.getsockname()[1]} {os.getpid()}", flush=True)
    await asyncio.Event().wait()


class Relay(asyncio.Protocol):
    """The read side: everything read is written to `out`."""

    def __init__(self, out: Any) -> None:
        self.out = out

    def data_received(self, data: bytes) -> None:
        self.out.write(data)

    def eof_received(self) -> None:
        self.out.close()


class Sink(asyncio.Protocol):
    """The write side: pauses and resumes the read side, as a relay must."""

    def __init__(self, done: asyncio.Future[None]) -> None:
        self.done = done
        self.source: Any = None

    def pause_writing(self) -> None:
        self.source.pause_reading()

    def resume_writing(self) -> None:
        self.source.resume_reading()

    def connection_lost(self, exc: BaseException | None) -> None:
        if not self.done.done():
            self.done.set_result(None)


async def pipe(loop: asyncio.AbstractEventLoop, rfd: int, wfd: int) -> None:
    done: asyncio.Future[None] = loop.create_future()
    sink = Sink(done)
    wt, _ = await loop.connect_write_pipe(lambda: sink, open(wfd, "wb", buffering=0))
    rt, _ = await loop.connect_read_pipe(lambda: Relay(wt), open(rfd, "rb", buffering=0))
    sink.source = rt
    print(f"READY 0 {os.getpid()}", flush=True)
    await done


def main() -> None:
    kind, mode = sys.argv[1], sys.argv[2]
    loop = make_loop(kind)
    if mode == "udp":
        loop.run_until_complete(udp(loop))
    elif mode == "pipe":
        loop.run_until_complete(pipe(loop, int(sys.argv[3]), int(sys.argv[4])))
    else:
        sys.exit(f"unknown mode {mode}")
    loop.close()


if __name__ == "__main__":
    main()
